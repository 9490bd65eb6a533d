"""EAGLE-2 dynamic draft tree with SGLang's parameters (`num_steps`, `topk`, `num_draft_tokens`).

Step 0's output (the draft extend) gives the first candidates: its top-`topk` tokens. Each of the draft steps
1..num_steps-1 runs the step's module on the current frontier (`topk` nodes), expands every frontier node
into its top-`topk` children scored by cumulative draft probability, and keeps the `topk` best children as the
next frontier. Finally the `num_draft_tokens - 1` best candidates overall form the tree (plus the root, the
last committed token). topk = 1 is a chain. This mirrors `select_top_k_tokens` + `organize_draft_results`
of SGLang 0.5.17, with ties broken towards earlier candidates so that every node's parent is in the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prism_sglang.modeling import KVCache, PrismDraft


@dataclass
class DraftTree:
    """Drafted nodes 1..N under the root (node 0). `parents[i]` is node i+1's parent in 0..N."""

    tokens: Tensor  # [N] target token ids
    parents: Tensor  # [N]
    depths: Tensor  # [N] 1..num_steps
    scores: Tensor  # [N] cumulative draft probability
    # [N, V] (target vocabulary) distribution each node was *sampled* from; None = picked deterministically.
    proposals: Tensor | None = None

    @property
    def size(self) -> int:
        return self.tokens.numel()

    def children(self) -> list[list[int]]:
        """Children of each node 0..N (node indices), best draft score first."""
        kids: list[list[int]] = [[] for _ in range(self.size + 1)]
        for i in torch.argsort(self.scores, descending=True, stable=True).tolist():
            kids[int(self.parents[i])].append(i + 1)
        return kids

    def ancestor_mask(self) -> Tensor:
        """[N+1, N+1] bool: node i sees node j iff j is i itself or an ancestor of i (root included)."""
        n = self.size + 1
        mask = torch.eye(n, dtype=torch.bool)
        mask[:, 0] = True
        for i in range(1, n):  # parents precede children, so each parent's row is complete
            mask[i] |= mask[int(self.parents[i - 1])]
        return mask


def top_candidates(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k along the last dim, best first, ties broken by lower index (keeps the tree closed under parents).
    A stable sort of a whole draft vocabulary costs ~0.3-0.8 ms a row here, torch.topk ~0.03 ms but without an
    order among ties; so: topk, then the k winners ordered stably, unless a tie straddles the cut."""
    if k == 1:  # max returns the first maximum
        return scores.max(dim=-1, keepdim=True)
    if k < scores.shape[-1]:
        values, order = torch.topk(scores, k, dim=-1)
        if not bool(((scores >= values[..., -1:]).sum(-1) > k).any()):  # the k winners are certain
            order = order.sort(dim=-1).values
            order = order.gather(-1, torch.argsort(scores.gather(-1, order), dim=-1, descending=True, stable=True))
            return scores.gather(-1, order), order
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
    return scores.gather(-1, order), order


def check_tree_settings(num_steps: int, topk: int, num_draft_tokens: int) -> None:
    if num_steps < 1 or topk < 1:
        raise ValueError(f"num_steps and topk must be >= 1, got num_steps={num_steps}, topk={topk}")
    candidates = topk + (num_steps - 1) * topk * topk
    if not 2 <= num_draft_tokens <= candidates + 1:
        raise ValueError(
            f"num_draft_tokens={num_draft_tokens} must be in 2..{candidates + 1} for num_steps={num_steps}, "
            f"topk={topk} (the root plus at most {candidates} drafted candidates)"
        )


def _pick(probs: Tensor, topk: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Children of each row: the top-k (deterministic), or one token sampled from the row (generator given)."""
    if generator is None:
        return top_candidates(probs, topk)
    ids = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(*probs.shape[:-1], 1)
    return probs.gather(-1, ids), ids


@torch.no_grad()
def draft_tree(
    draft: PrismDraft,
    cache: KVCache,
    hidden: Tensor,
    logits: Tensor,
    root_position: int,
    num_steps: int,
    topk: int,
    num_draft_tokens: int,
    draft_probs: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
) -> DraftTree:
    """Draft one tree after the last committed token.

    `hidden` [H] and `logits` [draft vocab] are step 0's output at the root's draft position
    `root_position` (the draft holds the root token there); depth-k nodes sit at `root_position + k`.
    `draft_probs` turns draft logits into the ranking distribution. With a `generator` (topk = 1 only) each
    chain token is *sampled* from that distribution and the tree records it as the node's proposal (for
    rejection sampling against it). The drafted tokens' KV is removed from `cache` before returning.
    """
    if generator is not None and topk != 1:
        raise ValueError("sampled drafting (rejection sampling) needs topk = 1")
    context = cache.length
    probs = draft_probs(logits)
    scores, ids = _pick(probs, topk, generator)
    sampled = generator is not None
    cand_q = [probs.expand(topk, -1)] if sampled else []
    cand_ids, cand_scores = [ids], [scores]
    cand_parents = [torch.full((topk,), -1)]
    cand_depths = [torch.ones(topk, dtype=torch.long)]
    frontier = torch.arange(topk)  # candidate indices
    frontier_scores, frontier_hidden = scores, hidden.expand(topk, -1)
    slot = {}  # candidate index -> cache slot of its KV (for its descendants' attention)
    parent_of = torch.cat(cand_parents)

    for step in range(1, num_steps):
        n = frontier.numel()
        all_ids = torch.cat(cand_ids)
        mask = torch.zeros(n, cache.length + n, dtype=torch.bool)
        mask[:, :context] = True
        for j, c in enumerate(frontier.tolist()):
            a = int(parent_of[c])
            while a >= 0:
                mask[j, slot[a]] = True
                a = int(parent_of[a])
            mask[j, cache.length + j] = True
            slot[c] = cache.length + j
        tokens = draft.to_target_ids(all_ids[frontier]).view(1, n)
        positions = torch.full((1, n), root_position + step)
        out = draft(step, tokens, frontier_hidden.view(1, n, -1), positions, cache, mask.view(1, n, -1))[0]
        probs = draft_probs(draft.logits(out))
        child_p, child_ids = _pick(probs, topk, generator)  # [n, topk]
        if sampled:
            cand_q.append(probs.repeat_interleave(topk, dim=0))
        child_scores = frontier_scores[:, None] * child_p
        first = sum(x.numel() for x in cand_ids)
        cand_ids.append(child_ids.flatten())
        cand_scores.append(child_scores.flatten())
        cand_parents.append(frontier.repeat_interleave(topk))
        cand_depths.append(torch.full((n * topk,), step + 1))
        parent_of = torch.cat(cand_parents)
        frontier_scores, best = top_candidates(child_scores.flatten(), topk)
        frontier = first + best
        frontier_hidden = out[best // topk]

    cache.truncate(context)
    all_scores = torch.cat(cand_scores)
    _, chosen = top_candidates(all_scores, num_draft_tokens - 1)
    chosen = torch.sort(chosen).values
    node_of = {int(c): i + 1 for i, c in enumerate(chosen)}  # candidate index -> tree node index
    node_of[-1] = 0
    proposals = None
    if sampled:  # the sampled nodes' distributions, moved to the target vocabulary
        q = torch.cat(cand_q)[chosen]
        proposals = q.new_zeros(q.shape[0], draft.config.vocab_size)
        proposals[:, draft.draft_to_target] = q
    return DraftTree(
        tokens=draft.to_target_ids(torch.cat(cand_ids)[chosen]),
        parents=torch.tensor([node_of[int(parent_of[c])] for c in chosen], dtype=torch.long),
        depths=torch.cat(cand_depths)[chosen],
        scores=all_scores[chosen],
        proposals=proposals,
    )
