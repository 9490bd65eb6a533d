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
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from prism_sglang.modeling import PrismDraft
from prism_sglang.target import TargetModel
from prism_sglang.train.data import Example, collate

CACHE_DTYPE = torch.float16
SHARD_EXAMPLES = 256


@dataclass
class TargetBatch:
    features: Tensor  # [B, T, A*H] aux features
    logits: Tensor  # [B, T, draft vocab] the target's logits over the draft vocabulary
    in_vocab: Tensor  # [B, T] bool: the target's argmax (full vocabulary) is in the draft vocabulary


@torch.no_grad()
def online_batch(target: TargetModel, draft: PrismDraft, ids: Tensor, attention: Tensor) -> TargetBatch:
    out = target.forward(ids, attention_mask=attention.long())
    return TargetBatch(out.features, out.logits[..., draft.draft_to_target].float(), draft.t2d[out.logits.argmax(-1)])


def dataset_fingerprint(examples: Sequence[Example], target_dir: str, aux_layer_ids: Sequence[int]) -> str:
    digest = hashlib.sha256(json.dumps([str(target_dir), list(aux_layer_ids)]).encode())
    for e in examples:
        digest.update(json.dumps(e.input_ids).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Per-example target outputs on disk (safetensors shards), loaded into memory for training."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._examples: dict[int, dict[str, Tensor]] = {}
        self._head: Tensor | None = None

    def ready(self, fingerprint: str) -> bool:
        meta = self.directory / "meta.json"
        return meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint

    @torch.no_grad()
    def build(self, target: TargetModel, examples: Sequence[Example], fingerprint: str, batch_size: int = 8,
              progress: bool = True) -> None:
        """One target forward per example (similar lengths batched together), written in shards."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.safetensors"):
            stale.unlink()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        shard: dict[str, Tensor] = {}
        shard_index = 0
        with tqdm(total=len(examples), disable=not progress, desc="target features", unit="ex") as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, attention, _ = collate([examples[i] for i in chunk])
                out = target.forward(ids, attention_mask=attention.long(), final_hidden=True)
                for row, i in enumerate(chunk):
                    n = len(examples[i].input_ids)
                    shard[f"{i}.features"] = out.features[row, :n].to(CACHE_DTYPE).contiguous()
                    shard[f"{i}.hidden"] = out.final_hidden[row, :n].to(CACHE_DTYPE).contiguous()
                    shard[f"{i}.top"] = out.logits[row, :n].argmax(-1).to(torch.int32).contiguous()
                bar.update(len(chunk))
                if len(shard) >= 3 * SHARD_EXAMPLES:
                    save_file(shard, str(self.directory / f"shard-{shard_index:04d}.safetensors"))
                    shard, shard_index = {}, shard_index + 1
        if shard:
            save_file(shard, str(self.directory / f"shard-{shard_index:04d}.safetensors"))
        (self.directory / "meta.json").write_text(json.dumps({
            "fingerprint": fingerprint, "examples": len(examples), "dtype": str(CACHE_DTYPE),
        }, indent=2) + "\n")

    def load(self, target: TargetModel, draft: PrismDraft) -> None:
        """Read every shard into memory and keep the target's output rows of the draft vocabulary."""
        self._examples = {}
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            for key, tensor in load_file(str(shard)).items():
                index, name = key.split(".")
                self._examples.setdefault(int(index), {})[name] = tensor
        self._head = target.model.get_output_embeddings().weight[draft.draft_to_target].detach().float()

    def batch(self, indices: Sequence[int], draft: PrismDraft, device: torch.device) -> TargetBatch:
        """The cached target outputs of `indices`, right-padded like `collate` pads the tokens."""
        rows = [self._examples[i] for i in indices]
        t = max(r["top"].numel() for r in rows)
        features = torch.zeros(len(rows), t, rows[0]["features"].shape[-1])
        hidden = torch.zeros(len(rows), t, rows[0]["hidden"].shape[-1])
        top = torch.zeros(len(rows), t, dtype=torch.long)
        for j, r in enumerate(rows):
            n = r["top"].numel()
            features[j, :n], hidden[j, :n], top[j, :n] = r["features"].float(), r["hidden"].float(), r["top"].long()
        return TargetBatch(features.to(device), (hidden @ self._head.T).to(device), draft.t2d[top.to(device)])
