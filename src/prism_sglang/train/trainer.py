"""PRISM draft training (DESIGN §4): online target forward -> TTT over K steps with per-step modules ->
per-step soft cross-entropy against the target's distribution on assistant tokens -> AdamW.

Precision: fp32, or bf16 (the target runs in bf16, the draft under bf16 autocast with fp32 master weights, the
loss in fp32); `auto` picks bf16 on CUDA and on CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX).
Checkpoints are the DESIGN §1 folder (fp32 while training, so a resumed run
continues bit for bit) plus the optimizer state as safetensors and a JSON trainer state; never pickle.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from prism_sglang.checkpoint import EMBEDDING_NAME, load_draft, save_draft
from prism_sglang.config import PrismConfig, default_aux_layer_ids
from prism_sglang.modeling import PrismDraft
from prism_sglang.target import TargetModel
from prism_sglang.train.data import Example, batches, collate
from prism_sglang.train.distributed import World, full_tensor, is_sharded, shard, shard_like
from prism_sglang.train.heap import HeapTrim
from prism_sglang.train.loss import soft_cross_entropy
from prism_sglang.train.targets import FeatureCache, TargetBatch, online_batch
from prism_sglang.train.ttt import DraftUnroll

STEP_WEIGHTINGS = ("equal", "decay")
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls then run at about twice the fp32 rate (measured: bench/train_speed.py)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" or cpu_has_native_bf16() else "fp32"


@dataclass
class TrainConfig:
    ttt_steps: int = 6  # K: draft steps unrolled (0 = context pass; 1..K-1 = drafted tokens)
    step_weighting: str = "equal"  # equal (PRISM) or decay = 0.8^j (EAGLE-3)
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.02
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.5
    batch_size: int = 8  # the global batch: over all ranks and micro-batches
    micro_batch_size: int | None = None  # per rank and forward pass (gradient accumulation); None: batch / ranks
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    max_seconds: float | None = None  # this run stops after that much time, checkpointed as at the end
    seed: int = 0
    group_by_length: bool = True  # batches of similar lengths (data.batches): ~1% padding instead of ~17%
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    log_every: int = 10
    precision: str = "fp32"  # fp32 or bf16 (resolve "auto" with resolve_precision before training)
    fsdp: bool = False  # shard parameters, gradients and optimizer states over the ranks (FSDP2)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 here, got {self.precision!r}")
        if self.step_weighting not in STEP_WEIGHTINGS:
            raise ValueError(f"step_weighting must be one of {STEP_WEIGHTINGS}, got {self.step_weighting!r}")
        if self.ttt_steps < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("ttt_steps, batch_size and epochs must be >= 1")

    def weights(self) -> list[float]:
        return [1.0 if self.step_weighting == "equal" else 0.8**j for j in range(self.ttt_steps)]


def new_draft(
    target: TargetModel,
    num_modules: int,
    step_modules: Sequence[int],
    draft_vocab: Tensor | None = None,
    aux_layer_ids: Sequence[int] | None = None,
    seed: int = 0,
) -> PrismDraft:
    """A fresh draft shaped like one target layer. lm_head starts from the target's output rows of the draft
    vocabulary and `norm` from the target's final norm (a head start: step 0 then begins near the target's
    own next-token prediction); the decoder modules start random."""
    c = target.config
    vocab_ids = draft_vocab if draft_vocab is not None else torch.arange(c.vocab_size)
    config = PrismConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        vocab_size=c.vocab_size, draft_vocab_size=vocab_ids.numel(), target_hidden_size=c.hidden_size,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
        rope_parameters=dict(c.rope_parameters),
        aux_layer_ids=tuple(aux_layer_ids or default_aux_layer_ids(target.num_layers)),
        num_modules=num_modules, step_modules=tuple(step_modules), torch_dtype="bfloat16",
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )
    config.resolved_aux_layer_ids(target.num_layers)
    torch.manual_seed(seed)
    draft = PrismDraft(config)
    draft.set_vocab_map(vocab_ids)
    with torch.no_grad():
        draft.lm_head.weight.copy_(target.lm_head_weight()[vocab_ids])
        draft.norm.weight.copy_(target.model.get_decoder().norm.weight)
    draft.attach_embedding(target.embedding_weight())
    return draft


@dataclass
class StepMetrics:
    """Sums over a batch's scored rows, per draft step: batches, micro-batches and ranks add up."""

    loss: float  # the batch's weighted objective (its share of the global one when the counts are global)
    ce_sums: list[float]
    correct: list[float]
    counts: list[float]
    tokens: int  # non-padding tokens
    padded_tokens: int  # tokens computed: what the batch pads to

    @property
    def losses(self) -> list[float]:
        return [s / max(1.0, c) for s, c in zip(self.ce_sums, self.counts, strict=True)]

    @property
    def accuracies(self) -> list[float]:
        return [s / max(1.0, c) for s, c in zip(self.correct, self.counts, strict=True)]

    def vector(self) -> Tensor:
        return torch.tensor([self.loss, *self.ce_sums, *self.correct, *self.counts, self.tokens,
                             self.padded_tokens], dtype=torch.float64)

    @classmethod
    def from_vector(cls, v: Tensor, steps: int) -> StepMetrics:
        values = v.tolist()
        return cls(values[0], values[1 : 1 + steps], values[1 + steps : 1 + 2 * steps],
                   values[1 + 2 * steps : 1 + 3 * steps], int(values[-2]), int(values[-1]))


def score_masks(targets: TargetBatch, attention: Tensor, loss_mask: Tensor, steps: int) -> list[Tensor | None]:
    """Per draft step j, the scored (row, index) cells: assistant tokens whose target argmax is in the draft
    vocabulary (EAGLE-3's position mask), step j at index t against the target's prediction at t + 1 + j;
    None where the sequence is too short for the step."""
    t = attention.shape[1]
    masks: list[Tensor | None] = []
    for j in range(steps):
        shift = 1 + j
        masks.append(None if shift >= t - 1 else
                     loss_mask[:, shift + 1 :] & targets.in_vocab[:, shift : t - 1] & attention[:, shift + 1 :])
    return masks


def in_vocab_read(attention: Tensor, loss_mask: Tensor) -> Tensor:
    """[B, T] bool: the positions whose `in_vocab` `score_masks` reads — index p, the target's prediction for
    token p + 1, is read where token p + 1 is scored (an assistant token, not padding)."""
    read = torch.zeros(loss_mask.shape, dtype=torch.bool, device=loss_mask.device)
    read[:, :-1] = loss_mask[:, 1:] & attention[:, 1:]
    return read


def _mask_counts(masks: list[Tensor | None]) -> list[float]:
    return [0.0 if m is None else float(m.sum()) for m in masks]


def score_counts(targets: TargetBatch, attention: Tensor, loss_mask: Tensor, steps: int) -> Tensor:
    return torch.tensor(_mask_counts(score_masks(targets, attention, loss_mask, steps)), dtype=torch.float64)


def ttt_loss(
    model: PrismDraft | DraftUnroll, targets: TargetBatch, ids: Tensor, attention: Tensor, loss_mask: Tensor,
    config: TrainConfig, counts: Tensor | None = None,
) -> tuple[Tensor, StepMetrics]:
    """Weighted mean over steps of the soft cross-entropy between draft step j at index t and the target's
    distribution (restricted to the draft vocabulary) for token t+2+j, over the cells of `score_masks`.

    `model`: the draft, or its `DraftUnroll` (as the trainer holds it, possibly sharded by FSDP2).
    `counts`: the scored cells per step of the whole global batch, when this batch is one of several (ranks,
    micro-batches): each batch's loss is then its share of the global mean, and the shares' gradients add up to
    the global batch's. Only the scored rows go through the draft's lm_head and the vocabulary-sized softmaxes
    (the rest is prompt and padding), and the target's distribution is computed once: step j reads it shifted."""
    unroll = model if isinstance(model, DraftUnroll) else DraftUnroll(model)
    masks = score_masks(targets, attention, loss_mask, config.ttt_steps)
    # a step with nothing to score gets an empty selection, not none: the loss then always has a graph, so every
    # rank runs a backward (FSDP's gradient reduce-scatter is a collective)
    nothing = torch.zeros(0, dtype=torch.long, device=ids.device)
    cells = [(nothing, nothing) if m is None else m.nonzero(as_tuple=True) for m in masks]
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        step_logits = unroll(ids, targets.features.to(unroll.draft.fc.weight.dtype), cells)
    local = _mask_counts(masks)
    divisors = local if counts is None else counts.tolist()
    target_probs = torch.softmax(targets.logits, dim=-1)
    target_top = targets.logits.argmax(-1)
    weights = config.weights()
    total, ce_sums, correct = torch.zeros((), device=ids.device), [], []
    for j, (logits, (rows, index)) in enumerate(zip(step_logits, cells, strict=True)):
        shift = 1 + j
        step_sum, top = soft_cross_entropy(logits, target_probs, rows, index + shift)
        total = total + weights[j] * step_sum / max(1.0, divisors[j])
        ce_sums.append(float(step_sum.detach()))
        correct.append(float((top == target_top[rows, index + shift]).sum()))
    loss = total / sum(weights)
    return loss, StepMetrics(float(loss.detach()), ce_sums, correct, local, int(attention.sum()), attention.numel())


def peak_memory_mib(device: torch.device) -> float:
    """This process's peak so far: the CUDA allocator's on a GPU, else the peak resident set (RSS)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def micro_batch_size(config: TrainConfig, world: World) -> int:
    """Each rank's examples per forward pass; the global batch must split evenly over ranks and micro-batches."""
    if config.batch_size % world.size:
        raise ValueError(f"--batch-size {config.batch_size} (the global batch) is not a multiple of the "
                         f"{world.size} ranks")
    per_rank = config.batch_size // world.size
    micro = config.micro_batch_size or per_rank
    if micro < 1 or per_rank % micro:
        raise ValueError(f"--micro-batch-size {micro} does not divide the {per_rank} examples per rank "
                         f"(--batch-size {config.batch_size} over {world.size} ranks)")
    return micro


def _schedule(total_steps: int, warmup_ratio: float):
    """Linear warmup, then linear decay to zero (the paper's get_linear_schedule_with_warmup)."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        target: TargetModel,
        draft: PrismDraft,
        examples: Sequence[Example],
        config: TrainConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        cache: FeatureCache | None = None,
        world: World | None = None,
    ) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.target, self.draft, self.examples, self.config = target, draft, list(examples), config
        self.cache = cache
        self.world = world or World()
        self.micro_batch = micro_batch_size(config, self.world)
        # rank 0 alone writes (checkpoints, log) and shows progress; every rank reads checkpoints to resume
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writes = self.out_dir is not None and self.world.is_main
        self.progress = progress and self.world.is_main
        self.world.broadcast_parameters(draft)
        # the training forward as one module, which FSDP2 shards; `draft` stays the module inside it
        self.model = DraftUnroll(draft)
        if config.fsdp and self.world.distributed:
            shard(self.model)
        self.sharded = is_sharded(self.model)
        self.steps_per_epoch = math.ceil(len(self.examples) / config.batch_size)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(self.total_steps, config.warmup_ratio)
        )
        self.state = TrainState()
        self.saved_step: int | None = None  # the step of the checkpoint last written or resumed from
        self._batches: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)
        self.heap_trim = HeapTrim()

    # -- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "checkpoints" / f"step-{step:07d}"

    def full_draft(self) -> PrismDraft | None:
        """The draft with whole tensors, on rank 0 (None elsewhere). Every rank calls it: a sharded draft is
        gathered first."""
        if not self.sharded:
            return self.draft if self.world.is_main else None
        state = {name: full_tensor(t).detach().cpu() for name, t in self.draft.state_dict().items()
                 if name != EMBEDDING_NAME}
        if not self.world.is_main:
            return None
        whole = PrismDraft(self.draft.config)
        whole.load_state_dict(state, strict=False)
        whole.attach_embedding(self.draft.embed_tokens.weight.detach().cpu())
        return whole

    def save_checkpoint(self) -> Path | None:
        """Every rank calls it (a sharded draft and its optimizer states are gathered); rank 0 writes."""
        if self.out_dir is None or not (self.writes or self.sharded):
            return None
        whole = self.full_draft()
        tensors, groups = _optimizer_tensors(self.optimizer, self.draft)
        self.saved_step = self.state.step
        if not self.writes:
            return None
        directory = self.checkpoint_dir(self.state.step)
        save_draft(whole, directory, dtype=None)  # a loadable draft folder; the trainer's state beside it
        state_dir = directory / "trainer"
        state_dir.mkdir(exist_ok=True)
        save_file(tensors, str(state_dir / "optimizer.safetensors"))
        (state_dir / "trainer_state.json").write_text(json.dumps({
            "step": self.state.step, "tokens": self.state.tokens, "seconds": self.state.seconds,
            "scheduler": self.scheduler.state_dict(), "param_groups": groups, "config": asdict(self.config),
            "world_size": self.world.size,
            "history": self.state.history,
        }, indent=1) + "\n")
        return directory

    def latest_checkpoint(self) -> Path | None:
        if self.out_dir is None:
            return None
        found = sorted((self.out_dir / "checkpoints").glob("step-*/trainer/trainer_state.json"))
        return found[-1].parent.parent if found else None

    def resume(self, directory: Path) -> None:
        loaded = load_draft(directory, self.target.config, dtype=self.draft.fc.weight.dtype,
                            device=self.draft.fc.weight.device)
        mine = self.draft.state_dict()
        self.draft.load_state_dict({k: shard_like(mine[k], v) for k, v in loaded.state_dict().items()
                                    if k != EMBEDDING_NAME}, strict=False)
        state = json.loads((directory / "trainer" / "trainer_state.json").read_text())
        self._check_resume(directory, state)
        _load_optimizer(self.optimizer, self.draft, load_file(str(directory / "trainer" / "optimizer.safetensors")),
                        state["param_groups"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(state["step"], state["tokens"], state["seconds"], state["history"])
        self.saved_step = self.state.step

    def _check_resume(self, directory: Path, state: dict[str, Any]) -> None:
        """An exact resume needs the same ranks and global batch: each rank's share of every batch depends on both."""
        ranks, batch = state.get("world_size", 1), state["config"]["batch_size"]
        if ranks != self.world.size:
            raise ValueError(f"{directory} was written by a run of {ranks} rank(s); resume it with {ranks} "
                             f"(torchrun --nproc-per-node ...), not {self.world.size}")
        if batch != self.config.batch_size:
            raise ValueError(f"{directory} was written with a global batch of {batch}; resume it with "
                             f"--batch-size {batch}, not {self.config.batch_size}")
        grouped = state["config"].get("group_by_length", False)  # runs before the option grouped nothing
        if grouped != self.config.group_by_length:
            flag = "--group-by-length" if grouped else "--no-group-by-length"
            raise ValueError(f"{directory} was written by a run that {'grouped' if grouped else 'did not group'} "
                             f"batches by length; resume it with {flag}: the batches of an epoch depend on it")

    # -- loop -------------------------------------------------------------------------------------------
    def run(self, resume: bool = False, until: int | None = None) -> TrainState:
        """Train to the end of the schedule (or stop after step `until`, checkpointing, to be resumed)."""
        if resume and (latest := self.latest_checkpoint()) is not None:
            self.resume(latest)
            self._forget_logged_steps_after(self.state.step)
        last = min(self.total_steps, until) if until is not None else self.total_steps
        stop_at = time.perf_counter() + self.config.max_seconds if self.config.max_seconds else None
        device = self.draft.fc.weight.device
        self.draft.train()
        bar = tqdm(total=self.total_steps, initial=self.state.step, disable=not self.progress, desc="train",
                   unit="step", dynamic_ncols=True)
        log = self._log_file()
        while self.state.step < last and not self._out_of_time(stop_at):
            epoch, index = divmod(self.state.step, self.steps_per_epoch)
            indices = self._epoch_batches(epoch)[index]
            start = time.perf_counter()
            metrics, target_seconds = self._step(indices, device)
            self.state.step += 1
            self.state.tokens += metrics.tokens
            seconds = time.perf_counter() - start
            self.state.seconds += seconds
            record = {"step": self.state.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                      "loss": metrics.loss, "tokens": self.state.tokens, "batch_tokens": metrics.tokens,
                      "batch_padded_tokens": metrics.padded_tokens,
                      "target_s": round(target_seconds, 4), "draft_s": round(seconds - target_seconds, 4),
                      "peak_mem_mib": peak_memory_mib(device), "heap_trims": self.heap_trim.trims,
                      **{f"loss_{j}": v for j, v in enumerate(metrics.losses)},
                      **{f"acc_{j}": v for j, v in enumerate(metrics.accuracies)}}
            self.state.history.append({k: record[k] for k in ("step", "loss")})
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.loss:.3f}", acc0=f"{metrics.accuracies[0]:.2f}",
                            acc_last=f"{metrics.accuracies[-1]:.2f}")
            if self.config.save_every and self.state.step % self.config.save_every == 0:
                self.save_checkpoint()
        bar.close()
        if log is not None:
            log.close()
        self.draft.eval()
        if self.saved_step != self.state.step:
            self.save_checkpoint()
        self.world.barrier()  # no rank leaves before the last checkpoint is on disk
        return self.state

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._batches is None or self._batches[0] != epoch:
            self._batches = (epoch, batches(self.examples, self.config.batch_size, self.config.seed, epoch,
                                            self.config.group_by_length))
        return self._batches[1]

    def _out_of_time(self, stop_at: float | None) -> bool:
        """Decided together: a rank that stopped alone would leave the others waiting in a collective."""
        if stop_at is None:
            return False
        late = torch.tensor([float(time.perf_counter() >= stop_at)])
        return bool(self.world.all_reduce_sum(late).item() > 0)

    def _step(self, indices: list[int], device: torch.device) -> tuple[StepMetrics, float]:
        """One optimizer step on a global batch: this rank's share, in micro-batches, each scored against the
        global batch's cell counts; gradients summed over micro-batches and ranks. Returns the global batch's
        metrics and this rank's seconds in the target."""
        mine = indices[self.world.rank :: self.world.size]
        start = time.perf_counter()
        parts = []
        for i in range(0, len(mine), self.micro_batch):
            chunk = mine[i : i + self.micro_batch]
            ids, attention, loss_mask = (x.to(device) for x in collate([self.examples[k] for k in chunk]))
            if self.cache is not None:
                targets = self.cache.batch(chunk, self.draft, device)
            else:
                targets = online_batch(self.target, self.draft, ids, attention, in_vocab_read(attention, loss_mask))
            parts.append((targets, ids, attention, loss_mask))
        target_seconds = time.perf_counter() - start
        steps = self.config.ttt_steps
        counts = sum((score_counts(t, a, m, steps) for t, _, a, m in parts), torch.zeros(steps, dtype=torch.float64))
        counts = self.world.all_reduce_sum(counts)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(3 * steps + 3, dtype=torch.float64)
        for i, (targets, ids, attention, loss_mask) in enumerate(parts):
            if self.sharded:  # FSDP reduce-scatters once, after the last micro-batch
                self.model.set_requires_gradient_sync(i == len(parts) - 1)
            loss, metrics = ttt_loss(self.model, targets, ids, attention, loss_mask, self.config, counts)
            loss.backward()
            total += metrics.vector()
        if not self.sharded:
            self.world.sum_gradients(self.draft)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if device.type == "cpu":
            self.heap_trim.after_step()
        return StepMetrics.from_vector(self.world.all_reduce_sum(total), steps), target_seconds

    def _forget_logged_steps_after(self, step: int) -> None:
        """A run killed after its last checkpoint logged steps that the resumed run does again: drop them, so the
        log holds each step once."""
        path = self.out_dir / "train_log.jsonl" if self.writes else None
        if path is None or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def _log_file(self):
        if not self.writes:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return (self.out_dir / "train_log.jsonl").open("a")


def _optimizer_tensors(optimizer: torch.optim.Optimizer, draft: PrismDraft) -> tuple[dict[str, Tensor], list]:
    """AdamW state keyed by parameter name (safetensors), whole tensors, plus the JSON-able param groups. Every
    rank calls it with a sharded draft: the states are gathered in parameter order, the same on every rank."""
    tensors = {}
    for name, param in draft.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"{name}::{key}"] = full_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    return tensors, groups


def _load_optimizer(optimizer: torch.optim.Optimizer, draft: PrismDraft, tensors: dict[str, Tensor],
                    groups: list[dict]) -> None:
    params = dict(draft.named_parameters())
    for key, value in tensors.items():
        name, slot = key.split("::")
        param = params[name]
        optimizer.state[param][slot] = shard_like(param, value) if slot != "step" else value
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
