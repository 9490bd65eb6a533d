"""`prism-sglang train` end to end: chat JSONL -> examples (eval-screened) -> draft (new, or from a checkpoint)
-> Trainer -> `OUT/final` (the DESIGN §1 folder, bf16) + `OUT/summary.json`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from prism_sglang.checkpoint import load_draft, save_draft
from prism_sglang.data.decontaminate import default_decontaminator
from prism_sglang.data.prompt_sources import ConversationError, iter_conversations
from prism_sglang.modeling import PrismDraft
from prism_sglang.target import TargetModel
from prism_sglang.train.data import Example, assistant_tokens, tokenize_conversation
from prism_sglang.train.distributed import World, held_elements
from prism_sglang.train.targets import FeatureCache, target_fingerprint
from prism_sglang.train.trainer import TrainConfig, Trainer, new_draft
from prism_sglang.train.vocab import build_draft_vocab, coverage


class TrainingDataError(ValueError):
    """Training data that must not be used (e.g. it contains evaluation prompts)."""


@dataclass
class TrainJob:
    target: str
    data: str
    out: str
    num_modules: int = 2
    step_modules: tuple[int, ...] = (0, 1)
    init_from: str | None = None  # continue from a draft checkpoint (e.g. an upcycled one); keeps its vocab
    draft_vocab_size: int | None = None  # None: the full target vocabulary
    aux_layer_ids: list[int] | None = None
    limit: int | None = None  # a seeded subset of the conversations (nested across sizes)
    max_length: int = 1024
    feature_cache: str | None = None
    cache_only: bool = False  # fill feature_cache for this data, then stop (several runs can then share it)
    skip_contaminated: bool = False
    device: str = "cpu"
    resume: bool = False
    config: TrainConfig = field(default_factory=TrainConfig)
    world: World = field(default_factory=World)  # torchrun's ranks (train.distributed)


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


def load_conversations(path: str, log: Callable[[str], None]) -> list[list[dict]]:
    """Every good line of a chat JSONL file; bad lines are reported (file:line: problem) and skipped."""
    conversations = []
    for _, result in iter_conversations(path):
        if isinstance(result, ConversationError):
            log(f"skipped {result}")
        else:
            conversations.append(result)
    if not conversations:
        raise TrainingDataError(f"{path}: no usable conversation")
    return conversations


def screen_conversations(conversations: Sequence[list[dict]], skip: bool, log: Callable[[str], None]) -> list:
    """Evaluation prompts never train a draft: refuse (or, with `skip`, drop) conversations that contain one."""
    decontaminator = default_decontaminator()
    clean, hits = [], []
    for i, messages in enumerate(conversations):
        found = decontaminator.matches(*(m["content"] for m in messages if m["role"] != "assistant"))
        if found:
            hits.append(f"conversation {i + 1}: {', '.join(found)}")
        else:
            clean.append(messages)
    if hits and not skip:
        raise TrainingDataError(
            f"{len(hits)} training conversation(s) contain evaluation prompts (MT-bench, HumanEval, GSM8K test): "
            f"{'; '.join(hits[:5])}{' ...' if len(hits) > 5 else ''}. Remove them, or pass --skip-contaminated."
        )
    for h in hits:
        log(f"dropped {h} (evaluation overlap)")
    return clean


def subset(conversations: list, limit: int | None, seed: int) -> list:
    """A seeded subset; for one seed, a smaller limit gives a prefix of a larger one (nested data sizes)."""
    if limit is None or limit >= len(conversations):
        return conversations
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    return [conversations[i] for i in sorted(order[:limit])]


def build_examples(tokenizer, conversations: Sequence[list[dict]], max_length: int) -> list[Example]:
    examples = [tokenize_conversation(tokenizer, messages, max_length) for messages in conversations]
    return [e for e in examples if e is not None]


def make_draft(job: TrainJob, target: TargetModel, examples: Sequence[Example],
               log: Callable[[str], None]) -> PrismDraft:
    if job.init_from:
        draft = load_draft(job.init_from, target.config, target.embedding_weight())
        log(f"continuing from {job.init_from} ({draft.config.num_modules} modules, table "
            f"{list(draft.config.step_modules)})")
        return draft
    vocab = None
    if job.draft_vocab_size and job.draft_vocab_size < target.vocab_size:
        vocab = build_draft_vocab(assistant_tokens(examples), job.draft_vocab_size, target.vocab_size)
        log(f"draft vocabulary: {job.draft_vocab_size} tokens cover "
            f"{coverage(assistant_tokens(examples), vocab):.2%} of the assistant tokens")
    return new_draft(target, job.num_modules, job.step_modules, vocab, job.aux_layer_ids, job.config.seed)


def run_training(job: TrainJob, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Every rank runs this; rank 0 alone logs and writes."""
    out = Path(job.out)
    if not job.world.is_main:
        log = _quiet
    tokenizer = AutoTokenizer.from_pretrained(job.target)
    conversations = subset(load_conversations(job.data, log), job.limit, job.config.seed)
    conversations = screen_conversations(conversations, job.skip_contaminated, log)
    examples = build_examples(tokenizer, conversations, job.max_length)
    tokens = sum(len(e.input_ids) for e in examples)
    log(f"{len(examples)} conversations, {tokens} tokens ({sum(sum(e.loss_mask) for e in examples)} assistant)")

    dtype = torch.bfloat16 if job.config.precision == "bf16" else torch.float32
    target = TargetModel.load(job.target, dtype=dtype, device=job.device)
    draft = make_draft(job, target, examples, log)
    target.set_aux_layers(draft.config.resolved_aux_layer_ids(target.num_layers))
    draft = draft.to(job.device)
    cache = None
    if job.feature_cache:
        cache = FeatureCache(job.feature_cache, target_fingerprint(job.target, target.aux_layer_ids))
        todo = cache.missing(examples)
        if todo and job.world.distributed:
            raise TrainingDataError(
                f"--feature-cache {job.feature_cache} lacks {len(todo)} conversation(s); ranks do not build a cache "
                "together: build it first with one process (the same command with --cache-only, without torchrun), "
                "then train on it with torchrun, or leave --feature-cache out (each rank then runs the target on its "
                "share)")
        if todo:
            log(f"caching target outputs of {len(todo)} conversation(s) in {job.feature_cache}")
            cache.build(target, examples, progress=progress)
        if job.cache_only:
            log(f"{job.feature_cache} holds the target's outputs for these {len(examples)} conversations")
            return {"conversations": len(examples), "data_tokens": tokens, "feature_cache": job.feature_cache}
        cache.load(target, draft, examples)
    trainer = Trainer(target, draft, examples, job.config, out, progress=progress, cache=cache, world=job.world)
    if trainer.sharded:
        held, total = held_elements(trainer.model)
        log(f"FSDP2: rank 0 holds {held:,} of the {total:,} trained parameters ({held / total:.1%}), their "
            "gradients and optimizer states")
    state = trainer.run(resume=job.resume)
    whole = trainer.full_draft()  # every rank takes part (a sharded draft is gathered); rank 0 gets it
    if whole is None:
        return {"steps": state.step, "tokens": state.tokens}
    save_draft(whole, out / "final", dtype=torch.bfloat16)
    summary = {
        "steps": state.step, "tokens": state.tokens, "seconds": round(state.seconds, 1),
        "conversations": len(examples), "data_tokens": tokens, "final": str(out / "final"),
        "last_losses": state.history[-10:], "ranks": job.world.size,
        "job": {**asdict(job), "config": asdict(job.config)},
        "draft": {"modules": draft.config.num_modules, "step_modules": list(draft.config.step_modules),
                  "draft_vocab_size": draft.config.draft_vocab_size},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"trained {state.step} steps on {state.tokens} tokens in {state.seconds:.0f} s; draft: {out / 'final'}")
    return summary
