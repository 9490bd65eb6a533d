"""What the loss needs from the target, computed online (a target forward per batch) or read from a feature
cache filled by one target forward per example (reused by every run and epoch; SpecForge's "offline" mode).

The cache keeps, per token, the aux features (fp16), the target's final normed hidden state (fp16: logits over
any draft vocabulary are `hidden @ lm_head[vocab].T`) and the target's argmax over the full vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from prism_sglang.modeling import PrismDraft
from prism_sglang.target import TargetModel
from prism_sglang.train.data import Example, collate

CACHE_DTYPE = torch.float16


@dataclass
class TargetBatch:
    features: Tensor  # [B, T, A*H] aux features
    logits: Tensor  # [B, T, draft vocab] the target's logits over the draft vocabulary
    in_vocab: Tensor  # [B, T] bool: the target's argmax (full vocabulary) is in the draft vocabulary


# Positions per block when scanning the full vocabulary for the target's argmax: bounds the [rows, V] logits
# block (256 x 49152 fp32 = 50 MB for SmolLM2) instead of materialising [B, T, V] for the whole batch.
ARGMAX_BLOCK = 256


@torch.no_grad()
def full_vocab_argmax(hidden: Tensor, head: Tensor) -> Tensor:
    """argmax over the full vocabulary of `hidden @ head.T`, block by block. [..., H] -> [...] long.

    `max(-1).indices`, not `argmax(-1)`: the same first index of the maximum, but on CPU argmax over bf16 rows
    is ~3x slower (23 vs 8 ms for a 256 x 49,152 block, AVX-512): ~5% of a bf16 target stage."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    top = torch.cat([(block @ head.T).max(-1).indices for block in flat.split(ARGMAX_BLOCK)]) if flat.numel() else (
        torch.zeros(0, dtype=torch.long, device=hidden.device))
    return top.reshape(hidden.shape[:-1])


def causal_mask(attention: Tensor) -> Tensor | None:
    """None (plain causal attention, SDPA's fast path) when every row is right-padded: padding then sits after
    each row's real tokens and no real token attends to it, so the real positions' outputs are the same."""
    lengths = attention.sum(-1, keepdim=True)
    right_padded = bool((attention == (torch.arange(attention.shape[-1], device=attention.device) < lengths)).all())
    return None if right_padded else attention.long()


@torch.no_grad()
def online_batch(target: TargetModel, draft: PrismDraft, ids: Tensor, attention: Tensor,
                 argmax_at: Tensor | None = None) -> TargetBatch:
    """One target forward. Logits come from the final hidden state over the draft vocabulary only (the full
    [B, T, V] logits are never built: for SmolLM2 at T = 1024 they are 200 MB per row); the full-vocabulary
    argmax is scanned in blocks, at the positions of `argmax_at` ([B, T] bool; None: all) only — the scan is
    about a seventh of a bf16 target stage, and the trainer reads `in_vocab` at the positions before an
    assistant token only (`trainer.in_vocab_read`). `in_vocab` is False where it was not scanned."""
    out = target.forward(ids, logits_to_keep=1, final_hidden=True, attention_mask=causal_mask(attention))
    head = target.lm_head_weight()
    logits = (out.final_hidden @ head[draft.draft_to_target].T).float()
    scan = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if argmax_at is None else argmax_at
    in_vocab = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    in_vocab[scan] = draft.t2d[full_vocab_argmax(out.final_hidden[scan], head)]
    return TargetBatch(out.features, logits, in_vocab)


def example_key(example: Example) -> str:
    """Cache key of an example: its tokens (so subsets and reruns of the same data share entries)."""
    return hashlib.sha256(json.dumps(example.input_ids).encode()).hexdigest()[:24]


def target_fingerprint(target_dir: str, aux_layer_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([str(target_dir), list(aux_layer_ids)]).encode()).hexdigest()[:16]


class FeatureCache:
    """Per-example target outputs on disk (safetensors shards keyed by example content), filled incrementally
    and loaded into memory for training. One cache serves one target + aux-layer choice."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self._entries: dict[str, dict[str, Tensor]] = {}
        self._keys: list[str] = []
        self._head: Tensor | None = None

    def _stored_keys(self) -> set[str]:
        meta = self.directory / "meta.json"
        if not meta.is_file():
            return set()
        stored = json.loads(meta.read_text())
        if stored.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.directory} caches another target or aux layers ({stored.get('fingerprint')} "
                             f"!= {self.fingerprint}); use another --feature-cache folder")
        return set(stored["keys"])

    def missing(self, examples: Sequence[Example]) -> list[int]:
        stored = self._stored_keys()
        return [i for i, e in enumerate(examples) if example_key(e) not in stored]

    @torch.no_grad()
    def build(self, target: TargetModel, examples: Sequence[Example], batch_size: int = 8,
              progress: bool = True) -> None:
        """One target forward per example not yet cached (similar lengths batched), appended as a new shard."""
        todo = self.missing(examples)
        if not todo:
            return
        stored = self._stored_keys()
        self.directory.mkdir(parents=True, exist_ok=True)
        order = sorted(todo, key=lambda i: len(examples[i].input_ids))
        shard: dict[str, Tensor] = {}
        with tqdm(total=len(order), disable=not progress, desc="target features", unit="ex") as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, attention, _ = collate([examples[i] for i in chunk])
                out = target.forward(ids, attention_mask=causal_mask(attention), logits_to_keep=1, final_hidden=True)
                top = full_vocab_argmax(out.final_hidden, target.lm_head_weight())
                for row, i in enumerate(chunk):
                    n, key = len(examples[i].input_ids), example_key(examples[i])
                    shard[f"{key}.features"] = out.features[row, :n].to(CACHE_DTYPE).contiguous()
                    shard[f"{key}.hidden"] = out.final_hidden[row, :n].to(CACHE_DTYPE).contiguous()
                    shard[f"{key}.top"] = top[row, :n].to(torch.int32).contiguous()
                    stored.add(key)
                bar.update(len(chunk))
        index = len(list(self.directory.glob("shard-*.safetensors")))
        save_file(shard, str(self.directory / f"shard-{index:04d}.safetensors"))
        (self.directory / "meta.json").write_text(json.dumps(
            {"fingerprint": self.fingerprint, "dtype": str(CACHE_DTYPE), "keys": sorted(stored)}) + "\n")

    def load(self, target: TargetModel, draft: PrismDraft, examples: Sequence[Example]) -> None:
        """Read the entries of `examples` into memory and keep the target's output rows of the draft vocabulary."""
        self._keys = [example_key(e) for e in examples]
        wanted = set(self._keys)
        self._entries = {}
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    key, field_name = name.split(".")
                    if key in wanted:
                        self._entries.setdefault(key, {})[field_name] = f.get_tensor(name)
        missing = wanted - set(self._entries)
        if missing:
            raise ValueError(f"{self.directory}: {len(missing)} example(s) not cached; build the cache first")
        self._head = target.lm_head_weight()[draft.draft_to_target].detach().float()

    def batch(self, indices: Sequence[int], draft: PrismDraft, device: torch.device) -> TargetBatch:
        """The cached target outputs of examples `indices`, right-padded like `collate` pads the tokens."""
        rows = [self._entries[self._keys[i]] for i in indices]
        t = max(r["top"].numel() for r in rows)
        features = torch.zeros(len(rows), t, rows[0]["features"].shape[-1])
        hidden = torch.zeros(len(rows), t, rows[0]["hidden"].shape[-1])
        top = torch.zeros(len(rows), t, dtype=torch.long)
        for j, r in enumerate(rows):
            n = r["top"].numel()
            features[j, :n], hidden[j, :n], top[j, :n] = r["features"].float(), r["hidden"].float(), r["top"].long()
        return TargetBatch(features.to(device), (hidden @ self._head.T).to(device), draft.t2d[top.to(device)])
