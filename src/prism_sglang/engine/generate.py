"""Speculative generation (and target-only generation with the same sampler and stops).

A request is a `Generation`: a small state machine whose `step()` runs the prefill, then one cycle per call:

    draft the tree (draft step 0 output -> steps 1..num_steps-1)
    -> verify every node in one target forward (4D tree mask, tree position ids)
    -> accept (greedy or lossless sampling) -> keep only the accepted path in the target KV cache
    -> draft extend: step 0 over the accepted tokens + bonus with their target features.

Positions follow SGLang: the target has processed x_0..x_{m-1}; x_m (the last emitted token) is the tree root
at target position m; the draft's position t holds x_{t+1}, so the draft cache covers positions 0..m-1 and
its last output predicts x_{m+1}. A caller can interleave `step()` of many generations (the CPU server does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prism_sglang.engine.adaptive import AdaptiveSpeculation, StepCosts
from prism_sglang.engine.sampling import (
    SamplingParams,
    TokenLogprob,
    make_generator,
    processed_probs,
    sample_token,
    token_logprob,
)
from prism_sglang.engine.stats import SpecStats
from prism_sglang.engine.tree import check_tree_settings, draft_tree
from prism_sglang.engine.verify import accept
from prism_sglang.modeling import KVCache, PrismDraft
from prism_sglang.target import LogitRows, TargetModel, keep_cache_positions


@dataclass(frozen=True)
class TreeSettings:
    """SGLang's flags: --speculative-num-steps, --speculative-eagle-topk, --speculative-num-draft-tokens."""

    num_steps: int = 5
    topk: int = 1
    num_draft_tokens: int | None = None  # default: num_steps + 1 for chains (SGLang forces it), else required
    rejection_sampling: bool = False  # topk = 1: sample drafts from q and accept with min(1, p/q)

    @property
    def draft_tokens(self) -> int:
        if self.topk == 1:
            return self.num_steps + 1  # what SGLang forces for chains
        if self.num_draft_tokens is None:
            raise ValueError("num_draft_tokens is required when topk > 1")
        return self.num_draft_tokens

    def check(self) -> None:
        check_tree_settings(self.num_steps, self.topk, self.draft_tokens)
        if self.rejection_sampling and self.topk != 1:
            raise ValueError("rejection_sampling needs topk = 1 (as in SGLang)")


DEFAULT_TREE = TreeSettings()


class SpeculativeEngine:
    """A HF target plus an optional PRISM draft (None: target-only generation only).

    `adaptive`: speculative requests decode without the draft while their cycles do not pay (engine/adaptive.py);
    off by default, so that every step of a speculative generation is a measured cycle (what `eval` reports)."""

    def __init__(
        self,
        target: TargetModel,
        draft: PrismDraft | None,
        tree: TreeSettings = DEFAULT_TREE,
        tokenizer=None,
        adaptive: bool = False,
    ) -> None:
        self.target, self.draft, self.tree, self.tokenizer = target, draft, tree, tokenizer
        self.adaptive = adaptive
        self.costs = StepCosts()  # shared by the requests' adaptive switches
        if draft is not None:
            tree.check()
            draft.config.check_num_steps(tree.num_steps)
            target.set_aux_layers(draft.config.resolved_aux_layer_ids(target.num_layers))
        self.eos_token_ids = _eos_token_ids(target, tokenizer)
        self.max_positions = target.config.max_position_embeddings

    def start(self, prompt_ids: Sequence[int], params: SamplingParams, speculative: bool = True) -> Generation:
        if speculative and self.draft is None:
            raise ValueError("this engine has no draft: use speculative=False")
        if not params.eos_token_ids:
            params = params.with_eos(self.eos_token_ids)
        return Generation(self, list(prompt_ids), params, speculative)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, speculative: bool = True) -> Generation:
        generation = self.start(prompt_ids, params, speculative)
        for _ in generation.run():
            pass
        return generation

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, speculative: bool = True
    ) -> list[Generation]:
        return [self.generate(p, params, speculative) for p in prompts]


def _eos_token_ids(target: TargetModel, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    config_eos = getattr(target.model.generation_config, "eos_token_id", None)
    for value in (config_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return tuple(sorted(ids))


class Generation:
    """One request. `step()` emits the next tokens; `finished` / `finish_reason` say when and why it ended."""

    def __init__(self, engine: SpeculativeEngine, prompt_ids: list[int], params: SamplingParams, speculative: bool):
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        self.engine, self.prompt_ids, self.params, self.speculative = engine, prompt_ids, params, speculative
        self.output_ids: list[int] = []
        # With params.logprobs set: one entry per output token, from the target logits it was chosen from.
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.finished = False
        self.finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
        self.matched_stop: str | int | None = None
        self.stats = SpecStats()
        self._text = ""  # decoded output, kept only when stop strings are watched
        self._stop_at: int | None = None  # text offset where a stop string begins
        self._generator = make_generator(params.seed)
        self._finish_ids = params.finish_token_ids
        self._started = False
        self._m = 0  # target position of the last emitted token (not yet in the target cache)
        self._target_cache = None
        self._draft_cache = KVCache()
        self._hidden: Tensor | None = None  # draft step-0 output at the root's draft position
        self._draft_logits: Tensor | None = None
        # Tokens committed by plain decode steps (and their input's target features) that the draft has not
        # seen yet: one draft extend over all of them before the next cycle, none while no cycle follows.
        self._pending_tokens: list[int] = []
        self._pending_features: list[Tensor] = []
        self._switch = AdaptiveSpeculation(engine.costs) if speculative and engine.adaptive else None

    # -- public ----------------------------------------------------------------------------------------
    def step(self) -> list[int]:
        """Run the prefill or one cycle; returns the tokens emitted by it (empty once finished)."""
        if self.finished:
            return []
        if not self._started:
            return self._prefill()
        if self._m >= self.engine.max_positions:
            self._finish("length")
            return []
        room = self._m + self.engine.tree.num_steps < self.engine.max_positions
        if self.speculative and room and (self._switch is None or self._switch.speculate()):
            return self._cycle()
        return self._decode_one()

    def run(self) -> Iterator[list[int]]:
        while not self.finished:
            yield self.step()

    @property
    def text(self) -> str:
        """The output text (special tokens skipped), cut before a matched stop string."""
        if self.engine.tokenizer is None:
            raise ValueError("the engine has no tokenizer")
        if self.params.stop:
            text = self._text
        else:
            text = self.engine.tokenizer.decode(self.output_ids, skip_special_tokens=True)
        return text if self._stop_at is None else text[: self._stop_at]

    # -- phases ----------------------------------------------------------------------------------------
    def _prefill(self) -> list[int]:
        start = time.perf_counter()
        self._started = True
        ids = torch.tensor([self.prompt_ids])
        out = self.engine.target.forward(ids, logits_to_keep=1)
        self._target_cache = out.past_key_values
        first = sample_token(out.logits[0, -1], self.params, self._generator)
        self._m = len(self.prompt_ids)
        emitted = self._emit([first], out.logits[0], [-1])
        if self.speculative and not self.finished:
            self._draft_extend(torch.cat([ids[:, 1:], torch.tensor([[first]])], dim=1), out.features)
        self.stats.add_time("prefill", time.perf_counter() - start)
        return emitted

    def _decode_one(self) -> list[int]:
        start = time.perf_counter()
        out = self.engine.target.forward(torch.tensor([[self.output_ids[-1]]]), past_key_values=self._target_cache)
        self._m += 1
        token = sample_token(out.logits[0, -1], self.params, self._generator)
        emitted = self._emit([token], out.logits[0], [-1])
        self.stats.decoded_tokens += len(emitted)
        if self.speculative and not self.finished:
            self._pending_tokens.append(token)
            self._pending_features.append(out.features)
        seconds = time.perf_counter() - start
        self.stats.add_time("decode", seconds)
        if self._switch is not None:
            self._switch.decode_done(seconds)
        return emitted

    def _cycle(self) -> list[int]:
        engine, settings = self.engine, self.engine.tree
        t0 = time.perf_counter()
        if self._pending_tokens:  # catch the draft up with what plain decode steps committed
            self._draft_extend(torch.tensor([self._pending_tokens]), torch.cat(self._pending_features, dim=1))
            self._pending_tokens, self._pending_features = [], []
        caught_up = time.perf_counter()
        sampled = settings.rejection_sampling and not self.params.greedy
        tree = draft_tree(
            engine.draft, self._draft_cache, self._hidden, self._draft_logits, root_position=self._m - 1,
            num_steps=settings.num_steps, topk=settings.topk, num_draft_tokens=settings.draft_tokens,
            draft_probs=lambda logits: processed_probs(logits, self.params),
            generator=self._generator if sampled else None,
        )
        t1 = time.perf_counter()
        m, n = self._m, tree.size
        ids = torch.cat([torch.tensor([self.output_ids[-1]]), tree.tokens]).view(1, n + 1)
        positions = (m + torch.cat([torch.zeros(1, dtype=torch.long), tree.depths])).view(1, n + 1)
        mask = torch.ones(1, 1, n + 1, m + n + 1, dtype=torch.bool)
        mask[0, 0, :, m:] = tree.ancestor_mask()
        out = engine.target.forward(ids, self._target_cache, positions, mask, lazy_logits=True)
        result = accept(tree, out.rows, self.params, self._generator)
        t2 = time.perf_counter()
        keep = torch.tensor([0, *result.nodes])
        keep_cache_positions(self._target_cache, m, keep)
        t3 = time.perf_counter()
        tokens = [int(tree.tokens[i - 1]) for i in result.nodes] + [result.bonus]
        self.stats.record_cycle(len(result.nodes))
        self._m += len(tokens)
        emitted = self._emit(tokens, out.rows, keep)  # token j was chosen at node keep[j] of the path
        if not self.finished:
            self._draft_extend(torch.tensor([tokens]), out.features[:, keep])
        t4 = time.perf_counter()
        for phase, seconds in (("draft", t1 - t0), ("verify", t2 - t1), ("cache", t3 - t2), ("extend", t4 - t3)):
            self.stats.add_time(phase, seconds)
        if self._switch is not None:  # a cycle's own cost: the catch-up is paid once per probe, not per cycle
            self._switch.cycle_done(len(emitted), t4 - caught_up)
        return emitted

    def _draft_extend(self, tokens: Tensor, features: Tensor) -> None:
        """Draft step 0 over newly committed tokens (their target features shifted by one, per SGLang)."""
        draft = self.engine.draft
        with torch.no_grad():
            hidden = draft.extend(tokens, features.to(draft.fc.weight.dtype), self._draft_cache)[:, -1]
            self._hidden = hidden[0]
            self._draft_logits = draft.logits(hidden)[0]

    # -- stops -----------------------------------------------------------------------------------------
    def _emit(self, tokens: list[int], logits: Tensor | LogitRows, rows: Sequence[int] | Tensor) -> list[int]:
        """Append tokens one by one until a stop: EOS / stop token, max_new_tokens, or a stop string.
        `logits[rows[j]]` is the target's row that token j was chosen from; read only to record logprobs."""
        emitted = []
        for token, row in zip(tokens, rows, strict=True):
            self.output_ids.append(token)
            if self.logprobs is not None:
                self.logprobs.append(token_logprob(logits[int(row)], token, self.params))
            emitted.append(token)
            if token in self._finish_ids:
                self.matched_stop = token
                self._finish("stop")
            elif self.params.stop and self._matches_stop_string():
                self._finish("stop")
            elif len(self.output_ids) >= self.params.max_new_tokens:
                self._finish("length")
            if self.finished:
                break
        self.stats.output_tokens = len(self.output_ids)
        return emitted

    def _matches_stop_string(self) -> bool:
        previous = len(self._text)
        self._text = self.engine.tokenizer.decode(self.output_ids, skip_special_tokens=True)
        for stop in self.params.stop:
            at = self._text.find(stop, max(0, previous - len(stop)))
            if at >= 0:
                self._stop_at, self.matched_stop = at, stop
                return True
        return False

    def _finish(self, reason: str) -> None:
        self.finished, self.finish_reason = True, reason
