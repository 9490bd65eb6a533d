"""Which drafted tokens the target accepts: greedy matching or lossless recursive rejection sampling.

Greedy: walk down from the root while some child equals the target's argmax; the target's argmax after the
last accepted node is the bonus token. The output is exactly target-only greedy decoding.

Sampling (SpecInfer / EAGLE multi-candidate recursive rejection over siblings): at a node with target
distribution p, try its children in draft-score order. A child x proposed from distribution q is accepted with
probability min(1, p(x) / q(x)); on rejection p becomes norm(max(p - q, 0)) and the next sibling is tried. If
every child is rejected, the bonus token is drawn from the final p. A child picked deterministically (top-k,
EAGLE-2 / SGLang drafting) has the point-mass proposal q = δ_x, so it is accepted with probability p(x) and
rejection just removes x from p — this is what makes sampling from a top-k tree exactly lossless. A child
sampled from the draft's q (rejection-sampling chains) uses that q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prism_sglang.engine.sampling import SamplingParams, processed_probs
from prism_sglang.engine.tree import DraftTree
from prism_sglang.target import LogitRows


@dataclass
class Acceptance:
    nodes: list[int]  # accepted tree nodes, root to leaf (indices 1..N)
    bonus: int  # the target's own token after the last accepted node


def accept(tree: DraftTree, target_logits: Tensor | LogitRows, params: SamplingParams,
           generator: torch.Generator) -> Acceptance:
    """Walk the tree with the target's logits for nodes 0..N ([N+1, V], or rows computed as the walk reads them)."""
    children = tree.children()
    node, path = 0, []
    while True:
        if params.greedy:
            choice = int(target_logits[node].argmax())
            nxt = next((c for c in children[node] if int(tree.tokens[c - 1]) == choice), None)
        else:
            p = processed_probs(target_logits[node], params)
            nxt, p = _reject_siblings(p, children[node], tree, generator)
            if nxt is None:
                choice = int(torch.multinomial(p, 1, generator=generator))
        if nxt is None:
            return Acceptance(path, choice)
        path.append(nxt)
        node = nxt


def _reject_siblings(
    p: Tensor, siblings: list[int], tree: DraftTree, generator: torch.Generator
) -> tuple[int | None, Tensor]:
    """Recursive rejection over `siblings`: the accepted one (or None) and the residual distribution."""
    for c in siblings:
        token = int(tree.tokens[c - 1])
        q = None if tree.proposals is None else tree.proposals[c - 1].to(p.dtype)
        q_token = 1.0 if q is None else float(q[token])
        if float(torch.rand((), dtype=torch.float64, generator=generator)) * q_token < float(p[token]):
            return c, p
        if q is None:
            residual = p.clone()
            residual[token] = 0.0
        else:
            residual = (p - q).clamp_min(0.0)
        total = residual.sum()
        if total <= 0:  # a rejection with no residual mass happens only through rounding; keep p valid
            break
        p = residual / total
    return None, p
