"""Reference engine: greedy speculative output == target-only output; caches stay exact; stops never overrun."""

import pytest
import torch

from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine.tree import DraftTree, check_tree_settings, draft_tree, top_candidates
from prism_sglang.modeling import KVCache
from prism_sglang.target import TargetModel
from tests.conftest import make_draft

TREES = [
    TreeSettings(1, 1), TreeSettings(5, 1), TreeSettings(6, 1),
    TreeSettings(2, 2, 4), TreeSettings(3, 3, 10), TreeSettings(6, 4, 16), TreeSettings(4, 4, 8),
    TreeSettings(6, 2, 12),
]
PROMPTS = [[3, 4, 5], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [7]]


def _ids(generation):
    return generation.output_ids


@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize(("num_modules", "table"), [(1, (0,)), (2, (0, 1)), (3, (0, 1, 2))])
def test_greedy_equals_target_only(tiny_target, tree, num_modules, table):
    draft = make_draft(tiny_target, num_modules=num_modules, table=table)
    engine = SpeculativeEngine(tiny_target, draft, tree)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    for prompt in PROMPTS:
        spec = engine.generate(prompt, params)
        plain = engine.generate(prompt, params, speculative=False)
        assert _ids(spec) == _ids(plain)
        assert len(spec.output_ids) == 40 and spec.finish_reason == "length"
        assert spec.stats.cycles >= 1


@pytest.mark.parametrize("tree", [TreeSettings(5, 1), TreeSettings(6, 4, 16), TreeSettings(3, 2, 6),
                                  TreeSettings(6, 3, 12)], ids=str)
def test_greedy_equality_with_long_acceptances(predictable_target, trained_draft, tree):
    """A draft trained to agree with the target: most cycles accept the whole depth; output stays exact."""
    engine = SpeculativeEngine(predictable_target, trained_draft, tree)
    params = SamplingParams(max_new_tokens=60, ignore_eos=True)
    g = torch.Generator().manual_seed(11)
    stats = []
    for _ in range(8):
        prompt = torch.randint(3, 48, (6,), generator=g).tolist()
        spec = engine.generate(prompt, params)
        assert _ids(spec) == _ids(engine.generate(prompt, params, speculative=False))
        stats.append(spec.stats)
    accepted = [a for s in stats for a in s.accept_lengths]
    assert max(accepted) == tree.num_steps  # whole-depth acceptances happen
    assert sum(accepted) / len(accepted) > tree.num_steps / 2


def test_eos_inside_an_accepted_path(predictable_target, trained_draft):
    """EOS in the middle of a cycle's accepted tokens: output stops at it, nothing after it is emitted."""
    engine = SpeculativeEngine(predictable_target, trained_draft, TreeSettings(6, 4, 16))
    prompt = [5, 17, 30, 41]
    reference = engine.generate(prompt, SamplingParams(max_new_tokens=40, ignore_eos=True), speculative=False)
    plain = SamplingParams(max_new_tokens=40, ignore_eos=True)
    probe = engine.generate(prompt, plain)
    # Pick an EOS token first produced in the middle of a cycle that accepted at least 3 drafts.
    emitted, candidates = 1, []
    for accepted in probe.stats.accept_lengths:
        if accepted >= 3:
            candidates.append(probe.output_ids[emitted + 1])
        emitted += accepted + 1
    eos = next(t for t in candidates if reference.output_ids.index(t) > 0)
    cut = reference.output_ids.index(eos)
    params = SamplingParams(max_new_tokens=40, stop_token_ids=(eos,), ignore_eos=True)
    spec = engine.generate(prompt, params)
    assert spec.output_ids == reference.output_ids[: cut + 1] and spec.finish_reason == "stop"
    assert spec.output_ids == engine.generate(prompt, params, speculative=False).output_ids


def test_reduced_draft_vocabulary(tiny_target):
    draft = make_draft(tiny_target, draft_vocab_size=20)
    engine = SpeculativeEngine(tiny_target, draft, TreeSettings(4, 3, 9))
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    assert _ids(engine.generate([1, 2, 3], params)) == _ids(engine.generate([1, 2, 3], params, speculative=False))


def test_max_new_tokens_mid_cycle_and_batch(tiny_target):
    engine = SpeculativeEngine(tiny_target, make_draft(tiny_target), TreeSettings(6, 4, 16))
    prompts = [[(7 * i + j) % 48 for j in range(1 + i % 9)] for i in range(24)]
    for max_new in (1, 2, 3, 7):
        params = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
        spec = engine.generate_batch(prompts, params)
        plain = engine.generate_batch(prompts, params, speculative=False)
        assert [_ids(g) for g in spec] == [_ids(g) for g in plain]
        assert all(len(g.output_ids) == max_new for g in spec)


def test_stop_token_ends_output_at_the_same_place(tiny_target):
    engine = SpeculativeEngine(tiny_target, make_draft(tiny_target), TreeSettings(5, 2, 8))
    reference = engine.generate([5, 6, 7], SamplingParams(max_new_tokens=30, ignore_eos=True), speculative=False)
    stop = reference.output_ids[12]
    first = reference.output_ids.index(stop)
    params = SamplingParams(max_new_tokens=30, stop_token_ids=(stop,), ignore_eos=True)
    spec = engine.generate([5, 6, 7], params)
    assert spec.output_ids == reference.output_ids[: first + 1]
    assert spec.finish_reason == "stop" and spec.matched_stop == stop


def _fresh_caches(engine: SpeculativeEngine, tokens: list[int]):
    """Target and draft caches of a fresh pass over `tokens` (all but the last emitted one)."""
    ids = torch.tensor([tokens])
    out = engine.target.forward(ids[:, :-1])
    cache = KVCache()
    engine.draft.extend(ids[:, 1:], out.features, cache)
    return out.past_key_values, cache


@pytest.mark.parametrize("tree", [TreeSettings(5, 1), TreeSettings(6, 4, 16)], ids=str)
def test_caches_after_many_cycles_equal_a_fresh_forward(predictable_target, trained_draft, tree):
    engine = SpeculativeEngine(predictable_target, trained_draft, tree)
    prompt = [9, 8, 7, 6, 5]
    generation = engine.start(prompt, SamplingParams(temperature=1.0, max_new_tokens=200, ignore_eos=True, seed=3))
    while generation.stats.cycles < 25:
        generation.step()
    assert max(generation.stats.accept_lengths) >= 3  # multi-token acceptances happened
    tokens = prompt + generation.output_ids
    target_cache, draft_cache = _fresh_caches(engine, tokens)
    tol = dict(atol=1e-4, rtol=1e-4)
    for kept, fresh in zip(generation._target_cache.layers, target_cache.layers, strict=True):
        torch.testing.assert_close(kept.keys, fresh.keys, **tol)
        torch.testing.assert_close(kept.values, fresh.values, **tol)
    torch.testing.assert_close(generation._draft_cache.keys, draft_cache.keys, **tol)
    torch.testing.assert_close(generation._draft_cache.values, draft_cache.values, **tol)


def test_tree_shape_follows_sglang_settings(tiny_target):
    draft = make_draft(tiny_target, scale=3.0)
    cache = KVCache()
    out = draft.extend(torch.tensor([[1, 2, 3, 4]]), torch.randn(1, 4, draft.fc.in_features), cache)
    logits = draft.logits(out)[0, -1]
    tree = draft_tree(draft, cache, out[0, -1], logits, 3, num_steps=6, topk=4, num_draft_tokens=16,
                      draft_probs=lambda x: torch.softmax(x.double(), -1))
    assert tree.size == 15 and cache.length == 4
    inner = tree.parents > 0
    assert int(tree.depths.max()) <= 6 and (tree.depths[inner] == tree.depths[tree.parents[inner] - 1] + 1).all()
    assert (tree.parents < torch.arange(1, 16)).all()  # parents precede children
    kids = tree.children()
    assert len(kids[0]) <= 4 and all(len(k) <= 4 for k in kids)
    # siblings are distinct tokens, and the root's children are step 0's best tokens
    assert all(len({int(tree.tokens[c - 1]) for c in k}) == len(k) for k in kids)
    best = torch.topk(logits, len(kids[0])).indices.tolist()
    assert sorted(int(tree.tokens[c - 1]) for c in kids[0]) == sorted(best)
    mask = tree.ancestor_mask()
    assert mask[:, 0].all() and mask.diagonal().all()
    chain = draft_tree(draft, cache, out[0, -1], logits, 3, 5, 1, 6, lambda x: torch.softmax(x.double(), -1))
    assert chain.depths.tolist() == [1, 2, 3, 4, 5] and chain.parents.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("steps", "topk", "tokens"), [(0, 1, 2), (3, 2, 1), (2, 2, 8), (1, 4, 6)])
def test_bad_tree_settings(steps, topk, tokens):
    with pytest.raises(ValueError):
        check_tree_settings(steps, topk, tokens)


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_top_candidates_equal_a_stable_sort_ties_included(k):
    """The fast paths (max, topk) pick and order exactly what a stable descending sort does, ties by lower index:
    rows with ties inside the top k only, with ties across the cut, and without ties."""
    generator = torch.Generator().manual_seed(k)
    for shape in ([6, 40], [8192]):
        ties = torch.randint(0, 5, shape, generator=generator).double() / 4
        unique = 1 + torch.rand(shape, generator=generator, dtype=torch.float64)
        inside = unique.clone()
        inside[..., 3:3 + k] = 2.0  # the k best, all equal
        for scores in (ties, unique, inside, torch.cat([ties, unique], dim=-1)):
            order = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
            values, picked = top_candidates(scores, k)
            assert torch.equal(picked, order) and torch.equal(values, scores.gather(-1, order))


def test_ancestor_mask_small_tree():
    tree = DraftTree(tokens=torch.tensor([5, 6, 7, 8]), parents=torch.tensor([0, 0, 1, 3]),
                     depths=torch.tensor([1, 1, 2, 3]), scores=torch.tensor([0.5, 0.4, 0.3, 0.2]))
    expected = torch.tensor([
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(tree.ancestor_mask(), expected)
    assert tree.children() == [[1, 2], [3], [], [4], []]


def test_engine_refuses_a_draft_for_an_unknown_table(tiny_target):
    draft = make_draft(tiny_target, num_modules=2, table=(0, 1), strict_steps=True)
    with pytest.raises(ValueError, match="prism_strict_steps"):
        SpeculativeEngine(tiny_target, draft, TreeSettings(3, 1))
    with pytest.raises(ValueError, match="no draft"):
        SpeculativeEngine(tiny_target, None).start([1], SamplingParams())


class CharTokenizer:
    """Token i decodes to one letter: enough to test stop strings on the tiny target."""

    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_cut_text_and_tokens(tiny_target_dir):
    target = TargetModel.load(tiny_target_dir)
    engine = SpeculativeEngine(target, make_draft(target), TreeSettings(6, 4, 16), tokenizer=CharTokenizer())
    reference = engine.generate([5, 6, 7], SamplingParams(max_new_tokens=40, ignore_eos=True), speculative=False)
    text = reference.text
    stop = text[20:23]
    at = text.index(stop)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(stop, "never-there"))
    for speculative in (True, False):
        g = engine.generate([5, 6, 7], params, speculative=speculative)
        assert g.text == text[:at] and g.finish_reason == "stop" and g.matched_stop == stop
        # no token after the one that completed the stop string
        assert g.output_ids == reference.output_ids[: at + len(stop)]


@pytest.mark.parametrize(("temperature", "tree"), [(0.0, TreeSettings(5, 1)), (0.0, TreeSettings(3, 2, 6)),
                                                   (0.7, TreeSettings(5, 1))], ids=str)
def test_logprobs_are_the_targets_own_at_each_output_position(predictable_target, trained_draft, temperature,
                                                              tree):
    """Whichever path a token took (prefill, accepted draft, bonus), its logprob is the target's log-softmax
    (after temperature) at its position, as one plain forward over prompt + output computes it."""
    engine = SpeculativeEngine(predictable_target, trained_draft, tree)
    params = SamplingParams(max_new_tokens=30, ignore_eos=True, temperature=temperature, top_k=5, seed=3,
                            logprobs=3)
    prompt = [5, 9, 14, 3, 22, 7]
    for speculative in (True, False):
        g = engine.generate(prompt, params, speculative=speculative)
        assert g.logprobs is not None and [e.token for e in g.logprobs] == g.output_ids
        with torch.no_grad():
            logits = predictable_target.forward(torch.tensor([prompt + g.output_ids])).logits[0].double()
        if temperature > 0:
            logits = logits / temperature
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        got = torch.tensor([e.logprob for e in g.logprobs], dtype=torch.float64)
        torch.testing.assert_close(got, expected.gather(1, torch.tensor(g.output_ids)[:, None])[:, 0],
                                   atol=1e-4, rtol=0)
        for entry, row in zip(g.logprobs, expected, strict=True):
            assert [t for t, _ in entry.top] == row.topk(3).indices.tolist()
    if temperature == 0:
        assert sum(engine.generate(prompt, params).stats.accept_lengths) > 0  # accepted drafts were covered


def test_no_logprobs_unless_asked(tiny_target):
    engine = SpeculativeEngine(tiny_target, make_draft(tiny_target), TreeSettings(3, 1))
    assert engine.generate([3, 4, 5], SamplingParams(max_new_tokens=5)).logprobs is None
