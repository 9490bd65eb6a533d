"""Sampling is lossless: the joint distribution of the first three generated tokens under speculative decoding
matches the target's exact distribution (computed by enumeration on an 8-token vocabulary).

Tolerance: a chi-square goodness-of-fit test over all sequences (cells with expected count < 5 pooled) must
give p > 0.001 with 2000 seeded samples. The negative control shows the same test rejects a lossy acceptance
rule (p < 1e-6), so the check has power.
"""

import pytest
import torch
from scipy.stats import chisquare

from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine import generate as generate_module
from prism_sglang.engine.sampling import processed_probs
from prism_sglang.engine.tree import DraftTree
from prism_sglang.engine.verify import Acceptance, accept
from prism_sglang.target import TargetModel
from tests.conftest import make_predictable_target, train_tiny_draft

SAMPLES = 2000
PROMPT = [3, 1, 4, 1, 5]
N_TOKENS = 3


@pytest.fixture(scope="module")
def target8(tmp_path_factory) -> TargetModel:
    """An 8-token predictable target (exact distributions are enumerable) and a draft trained on its samples,
    so cycles accept several tokens and every acceptance branch runs."""
    return make_predictable_target(tmp_path_factory.mktemp("vocab8"), sharpness=1.5, vocab_size=8, seed=5)


@pytest.fixture(scope="module")
def draft8(target8):
    return train_tiny_draft(target8, steps=150, temperature=1.0)


def exact_joint(target: TargetModel, params: SamplingParams) -> dict[tuple[int, ...], float]:
    joint = {(): 1.0}
    for _ in range(N_TOKENS):
        extended = {}
        for seq, p in joint.items():
            logits = target.forward(torch.tensor([PROMPT + list(seq)])).logits[0, -1]
            probs = processed_probs(logits, params)
            for token in probs.nonzero().flatten().tolist():
                extended[(*seq, token)] = p * float(probs[token])
        joint = extended
    return joint


def sample_counts(engine: SpeculativeEngine, params: SamplingParams) -> tuple[dict[tuple[int, ...], int], list[int]]:
    """Counts of the generated sequences, and how many drafts the first cycle accepted in each sample."""
    counts: dict[tuple[int, ...], int] = {}
    first_cycle = []
    for seed in range(SAMPLES):
        g = engine.generate(PROMPT, SamplingParams(**{**params.__dict__, "seed": seed}))
        key = tuple(g.output_ids)
        counts[key] = counts.get(key, 0) + 1
        first_cycle.append(g.stats.accept_lengths[0])
    return counts, first_cycle


def goodness_of_fit(exact: dict, counts: dict) -> tuple[float, float]:
    """(chi-square p-value, total variation distance) of the empirical vs the exact distribution."""
    assert set(counts) <= set(exact), "sampled a sequence the target gives probability 0"
    big = [s for s in exact if exact[s] * SAMPLES >= 5]
    small = [s for s in exact if s not in big]
    observed = [counts.get(s, 0) for s in big] + [sum(counts.get(s, 0) for s in small)]
    expected = [exact[s] * SAMPLES for s in big] + [sum(exact[s] for s in small) * SAMPLES]
    if not small:
        observed, expected = observed[:-1], expected[:-1]
    tv = 0.5 * sum(abs(counts.get(s, 0) / SAMPLES - exact[s]) for s in exact)
    return float(chisquare(observed, expected).pvalue), tv


CASES = [
    (dict(temperature=0.7, top_k=4, top_p=0.95), TreeSettings(3, 3, 8)),
    (dict(temperature=1.0, top_k=5), TreeSettings(4, 1)),
    (dict(temperature=1.0, top_p=0.8, top_k=6), TreeSettings(4, 1, rejection_sampling=True)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sampling", "tree"), CASES, ids=lambda x: str(x))
def test_speculative_sampling_matches_the_target(target8, draft8, sampling, tree):
    params = SamplingParams(max_new_tokens=N_TOKENS, ignore_eos=True, **sampling)
    engine = SpeculativeEngine(target8, draft8, tree)
    counts, accepted = sample_counts(engine, params)
    p_value, tv = goodness_of_fit(exact_joint(target8, params), counts)
    assert p_value > 1e-3, (p_value, tv)
    # The draft must really be exercised: the first cycle accepts two drafts often and none at other times.
    assert sum(a >= 2 for a in accepted) > SAMPLES // 10 and sum(a == 0 for a in accepted) > 0


def _lossy_accept(tree, target_logits, params, generator):
    """Accept the best child whenever the target gives it any probability: biased towards the draft."""
    children, node, path = tree.children(), 0, []
    while children[node]:
        child = children[node][0]
        probs = processed_probs(target_logits[node], params)
        if probs[int(tree.tokens[child - 1])] == 0:
            break
        path.append(child)
        node = child
    bonus = int(torch.multinomial(processed_probs(target_logits[node], params), 1, generator=generator))
    return Acceptance(path, bonus)


@pytest.mark.slow
def test_negative_control_detects_a_lossy_rule(target8, draft8, monkeypatch):
    monkeypatch.setattr(generate_module, "accept", _lossy_accept)
    params = SamplingParams(max_new_tokens=N_TOKENS, ignore_eos=True, temperature=1.0, top_k=5)
    engine = SpeculativeEngine(target8, draft8, TreeSettings(4, 1))
    p_value, tv = goodness_of_fit(exact_joint(target8, params), sample_counts(engine, params)[0])
    assert p_value < 1e-6, (p_value, tv)


def test_processed_probs_truncation():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = processed_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (p[2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    full = torch.softmax(logits.double(), -1)
    p = processed_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    # smallest prefix reaching 0.7: the first two tokens (0.53 + 0.19 ... crosses 0.7)
    assert (p > 0).tolist() == [True, True, False, False, False]
    torch.testing.assert_close(p[:2], full[:2] / full[:2].sum())
    cold = processed_probs(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(cold, torch.softmax(logits.double() / 0.5, -1))
    with pytest.raises(ValueError):
        SamplingParams(temperature=-0.1)


def test_accept_is_lossless_on_a_fixed_tree():
    """Model-free and high-powered: 40k walks per case. The first emitted token follows p(root) exactly, and
    after an accepted first child the next token follows that child's p, for a top-k tree (point-mass
    proposals) and for a chain whose tokens are sampled from the draft's q (rejection sampling)."""
    g = torch.Generator().manual_seed(0)
    vocab = 6
    logits = torch.randn(4, vocab, generator=g) * 1.5  # target logits at nodes 0 (root), 1, 2, 3
    q = torch.softmax(torch.randn(2, vocab, generator=g), -1).double()
    params = SamplingParams(temperature=0.9, top_k=5)
    p = processed_probs(logits, params)
    top_k_tree = DraftTree(tokens=torch.tensor([2, 4, 1]), parents=torch.tensor([0, 0, 1]),
                           depths=torch.tensor([1, 1, 2]), scores=torch.tensor([0.5, 0.3, 0.2]))

    def sampled_chain():
        tokens = torch.multinomial(q, 1, generator=g).flatten()
        return DraftTree(tokens=tokens, parents=torch.tensor([0, 1]), depths=torch.tensor([1, 2]),
                         scores=torch.tensor([0.5, 0.2]), proposals=q)

    for make_tree in (lambda: top_k_tree, sampled_chain):
        first, second = torch.zeros(vocab), torch.zeros(vocab)
        for _ in range(40_000):
            tree = make_tree()
            result = accept(tree, logits, params, g)
            tokens = [int(tree.tokens[i - 1]) for i in result.nodes] + [result.bonus]
            first[tokens[0]] += 1
            if result.nodes and result.nodes[0] == 1:
                second[tokens[1]] += 1
        for counts, probs in ((first, p[0]), (second, p[1])):
            support = probs > 0
            assert counts[~support].sum() == 0
            expected = probs[support] * counts.sum()
            assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3
