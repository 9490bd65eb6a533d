"""`prism-sglang prepare-data`: self-distillation. Prompts from offline sources (or the user's JSONL), answered
by the target itself with its chat template, written as OpenAI-format JSONL conversations. With
`keep_answers` the sources' own assistant turns are kept instead (the PRISM paper's recipe: the target labels
them with its distribution during training, so no generation is needed and the data is ready in seconds).

Evaluation prompts (MT-bench, HumanEval, GSM8K test) never enter: every prompt is checked against all three
evaluation sets (`prism_sglang.data.decontaminate`) and refused with the items it overlaps. Generation is
batched (or, with `server`, sent to an OpenAI-compatible endpoint: `server_answers`), appends each finished
conversation to `generated.jsonl` (so an interrupted run resumes where it stopped), and ends with a deduplicated
train / held-out split (by prompt, so no prompt is in both).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from prism_sglang.data.decontaminate import Decontaminator, default_decontaminator
from prism_sglang.data.prompt_sources import (
    ConversationError,
    TrainingPrompt,
    deduplicate,
    iter_conversations,
    load_prompt_mix,
    normalise,
)
from prism_sglang.engine.batch import generate_batch
from prism_sglang.engine.loading import encode_chat
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.target import TargetModel
from prism_sglang.train.server_answers import Job, ServerAnswerer, ServerSettings, write_failures

DEFAULT_SOURCES = {"sharegpt": 2000, "openai-evals": 1200, "python-docs": 600, "chatterbot": 200}


@dataclass
class PrepareConfig:
    sources: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    prompts_file: str | None = None  # the user's own JSONL prompts (OpenAI or ShareGPT format)
    responses_per_prompt: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    max_turns: int = 3  # user turns answered per conversation (ShareGPT chats can be long)
    batch_size: int = 16
    heldout_fraction: float = 0.05
    seed: int = 0
    keep_answers: bool = False  # the sources' own assistant turns instead of the target's answers
    server: ServerSettings | None = None  # answers from this OpenAI-compatible endpoint instead of in-process


@dataclass
class Rejection:
    where: str  # "prompts.jsonl:12", "sharegpt/QWJhYvA_0"
    reason: str


def file_prompts(path: str) -> tuple[list[TrainingPrompt], list[Rejection]]:
    """Prompts from a JSONL file: system + user turns of each good line (assistant turns are regenerated)."""
    prompts, rejected = [], []
    for line_no, result in iter_conversations(path):
        if isinstance(result, ConversationError):
            rejected.append(Rejection(f"{path}:{line_no}", result.problem))
            continue
        system = next((m["content"] for m in result if m["role"] == "system"), None)
        turns = [m["content"] for m in result if m["role"] == "user"]
        prompts.append(TrainingPrompt("file", f"line{line_no}", system, turns, _answers(result)))
    return prompts, rejected


def _answers(messages: Sequence[dict[str, str]]) -> list[str]:
    """The assistant message right after each user message, up to the first user message left unanswered."""
    answers = []
    for i, m in enumerate(messages):
        if m["role"] == "user":
            if i + 1 >= len(messages) or messages[i + 1]["role"] != "assistant":
                break
            answers.append(messages[i + 1]["content"])
    return answers


def screen(prompts: Sequence[TrainingPrompt], decontaminator: Decontaminator) -> tuple[list, list[Rejection]]:
    """Refuse every prompt that overlaps an evaluation item (the check that keeps eval data out)."""
    clean, rejected = [], []
    for p in prompts:
        hits = decontaminator.matches(*p.texts)
        if hits:
            rejected.append(Rejection(f"{p.source}/{p.id}", f"overlaps evaluation items {', '.join(hits)}"))
        else:
            clean.append(p)
    return clean, rejected


def _messages(prompt: TrainingPrompt) -> list[dict[str, str]]:
    return [{"role": "system", "content": prompt.system}] if prompt.system else []


def _key(prompt: TrainingPrompt, response: int) -> str:
    return f"{prompt.source}/{prompt.id}#{response}"


def _seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") >> 1


def _is_heldout(prompt_key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"heldout:{seed}:{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


class DataPreparer:
    def __init__(self, target: TargetModel | None, tokenizer, config: PrepareConfig, out_dir: str | Path,
                 log: Callable[[str], None] = print, progress: bool = True) -> None:
        self.target, self.tokenizer, self.config = target, tokenizer, config
        self.out_dir = Path(out_dir)
        self.log, self.progress = log, progress
        self.params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                                     max_new_tokens=config.max_new_tokens,
                                     eos_token_ids=(tokenizer.eos_token_id,))

    def collect_prompts(self, decontaminator: Decontaminator | None = None) -> tuple[list, list[Rejection]]:
        c = self.config
        prompts = load_prompt_mix(c.sources, seed=c.seed, decontaminate=False) if c.sources else []
        rejected: list[Rejection] = []
        if c.prompts_file:
            more, rejected = file_prompts(c.prompts_file)
            prompts += more
        prompts, contaminated = screen(deduplicate(prompts), decontaminator or default_decontaminator())
        kept = []
        for p in prompts:
            p = TrainingPrompt(p.source, p.id, p.system, p.user_turns[: c.max_turns], p.answers[: c.max_turns])
            length = len(encode_chat(self.tokenizer, [*_messages(p), {"role": "user", "content": p.user_turns[0]}]))
            if length > c.max_prompt_tokens:
                rejected.append(Rejection(f"{p.source}/{p.id}", f"prompt has {length} tokens > {c.max_prompt_tokens}"))
            else:
                kept.append(p)
        return kept, rejected + contaminated

    def run(self, decontaminator: Decontaminator | None = None) -> dict:
        start = time.time()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prompts, rejected = self.collect_prompts(decontaminator)
        for r in rejected:
            self.log(f"rejected {r.where}: {r.reason}")
        generated_path = self.out_dir / "generated.jsonl"
        _drop_partial_line(generated_path)
        if self.config.keep_answers:
            prompts = self._keep_answers(prompts, generated_path, rejected)
            manifest = self._finalise(generated_path, prompts, rejected, time.time() - start)
            self.log(f"wrote {manifest['train']} train and {manifest['heldout']} held-out conversations (the "
                     f"sources' own answers) to {self.out_dir}")
            return manifest
        done = _finished_keys(generated_path)
        jobs = [(p, r) for p in prompts for r in range(self.config.responses_per_prompt) if _key(p, r) not in done]
        self.log(f"{len(prompts)} prompts x {self.config.responses_per_prompt} responses: "
                 f"{len(done)} already generated, {len(jobs)} to go")
        if self.config.server is not None:
            return self._answer_through_server(jobs, prompts, generated_path, rejected, start)
        # Similar prompt lengths share a batch (less padding).
        jobs.sort(key=lambda job: sum(len(t) for t in job[0].texts))
        with generated_path.open("a") as out, tqdm(total=len(jobs), disable=not self.progress, desc="generate",
                                                    unit="conv", dynamic_ncols=True) as bar:
            for i in range(0, len(jobs), self.config.batch_size):
                batch = jobs[i : i + self.config.batch_size]
                for record in self._generate(batch):
                    out.write(json.dumps(record) + "\n")
                out.flush()
                bar.update(len(batch))
        manifest = self._finalise(generated_path, prompts, rejected, time.time() - start)
        self.log(f"wrote {manifest['train']} train and {manifest['heldout']} held-out conversations to {self.out_dir}")
        return manifest

    def _answer_through_server(self, jobs: list[tuple[TrainingPrompt, int]], prompts: list, generated_path: Path,
                               rejected: list[Rejection], start: float) -> dict:
        c = self.config
        assert c.server is not None
        answerer = ServerAnswerer(c.server, {"temperature": c.temperature, "top_p": c.top_p,
                                             "max_tokens": c.max_new_tokens}, self.log, self.progress)
        work = [Job(_key(p, r), p.source, p.id, _messages(p), list(p.user_turns),
                    [_seed(_key(p, r) + f"/{turn}", c.seed) for turn in range(len(p.user_turns))]) for p, r in jobs]
        self.log(f"answering through {c.server.url} (model {answerer.model}), {c.server.concurrency} in flight")
        with generated_path.open("a") as out:
            failures = answerer.run(work, out)
        write_failures(self.out_dir / "failed.jsonl", failures)
        manifest = self._finalise(generated_path, prompts, rejected, time.time() - start,
                                  {"failed": [asdict(f) for f in failures], "retried_requests": answerer.retried})
        self.log(f"wrote {manifest['train']} train and {manifest['heldout']} held-out conversations to {self.out_dir}"
                 f"; {answerer.retried} requests retried")
        if failures:
            self.log(f"{len(failures)} conversation(s) failed (failed.jsonl, with reasons): they are not written; "
                     "run the same command again to ask for them again")
        return manifest

    def _keep_answers(self, prompts: list[TrainingPrompt], generated_path: Path,
                      rejected: list[Rejection]) -> list[TrainingPrompt]:
        """Write each prompt's own answered conversation (no target); prompts without answers are rejected."""
        kept = []
        with generated_path.open("w") as out:
            for p in prompts:
                if not p.answers:
                    rejected.append(Rejection(f"{p.source}/{p.id}", "no assistant answer to keep"))
                    self.log(f"rejected {p.source}/{p.id}: no assistant answer to keep")
                    continue
                kept.append(p)
                out.write(json.dumps({"key": _key(p, 0), "source": p.source, "id": p.id,
                                      "messages": p.conversation(self.config.max_turns), "truncated": False}) + "\n")
        return kept

    def _generate(self, batch: list[tuple[TrainingPrompt, int]]) -> list[dict]:
        """Answer every user turn of every conversation in the batch, turn by turn."""
        conversations = [_messages(p) for p, _ in batch]
        truncated = [False] * len(batch)
        for turn in range(max(len(p.user_turns) for p, _ in batch)):
            active = [j for j, (p, _) in enumerate(batch) if turn < len(p.user_turns)]
            for j in active:
                conversations[j].append({"role": "user", "content": batch[j][0].user_turns[turn]})
            prompt_ids = [encode_chat(self.tokenizer, conversations[j]) for j in active]
            seeds = [_seed(_key(*batch[j]) + f"/{turn}", self.config.seed) for j in active]
            outputs = generate_batch(self.target, prompt_ids, self.params, seeds=seeds,
                                     pad_id=self.tokenizer.pad_token_id or 0)
            for j, ids in zip(active, outputs, strict=True):
                truncated[j] |= not ids or ids[-1] not in self.params.eos_token_ids
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                conversations[j].append({"role": "assistant", "content": text})
        return [{"key": _key(p, r), "source": p.source, "id": p.id, "messages": conv, "truncated": cut}
                for (p, r), conv, cut in zip(batch, conversations, truncated, strict=True)]

    def _finalise(self, generated_path: Path, prompts: list, rejected: list[Rejection], seconds: float,
                  extra: dict | None = None) -> dict:
        wanted = {_key(p, r) for p in prompts for r in range(self.config.responses_per_prompt)}
        seen_texts: set[str] = set()
        splits: dict[str, list[dict]] = {"train": [], "heldout": []}
        duplicates = 0
        for record in _read_jsonl(generated_path):
            if record["key"] not in wanted:
                continue
            text = normalise(json.dumps(record["messages"]))
            if text in seen_texts:
                duplicates += 1
                continue
            seen_texts.add(text)
            prompt_key = record["key"].rsplit("#", 1)[0]
            split = "heldout" if _is_heldout(prompt_key, self.config.heldout_fraction, self.config.seed) else "train"
            splits[split].append({"id": record["key"], "source": record["source"], "messages": record["messages"],
                                  "truncated": record["truncated"]})
        for name, records in splits.items():
            with (self.out_dir / f"{name}.jsonl").open("w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
        manifest = {
            "train": len(splits["train"]), "heldout": len(splits["heldout"]), "duplicates_removed": duplicates,
            "prompts": len(prompts), "rejected": [asdict(r) for r in rejected],
            "truncated": sum(r["truncated"] for s in splits.values() for r in s),
            "sources": {s: sum(r["source"] == s for r in splits["train"]) for s in {p.source for p in prompts}},
            "config": asdict(self.config), "seconds": round(seconds, 1), **(extra or {}),
        }
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interrupted run: it is generated again
            continue
    return records


def _drop_partial_line(path: Path) -> None:
    """An interrupted run may leave half a line; cut it so appended records start on a fresh line."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def _finished_keys(path: Path) -> set[str]:
    return {r["key"] for r in _read_jsonl(path)}
