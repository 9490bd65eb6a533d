"""Adaptive speculation: the switch's decisions from measured costs, and lossless output across switches."""

import torch

from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine.adaptive import AdaptiveSpeculation, StepCosts
from tests.conftest import make_draft
from tests.test_engine import _fresh_caches


def _frozen(decode_s: float, cycle_s: float) -> StepCosts:
    return StepCosts(decode_s=decode_s, cycle_s=cycle_s, weight=0.0)  # weight 0: measurements change nothing


def _run(switch: AdaptiveSpeculation, tokens_per_cycle: int, steps: int) -> str:
    """Drive the switch for `steps` steps; 'c' for a cycle, 'd' for a decode step."""
    trace = ""
    for _ in range(steps):
        if switch.speculate():
            switch.cycle_done(tokens_per_cycle, 1.0)
            trace += "c"
        else:
            switch.decode_done(1.0)
            trace += "d"
    return trace


def test_first_step_measures_a_decode_step_when_the_engine_is_new():
    costs = StepCosts()
    switch = AdaptiveSpeculation(costs)
    assert not switch.speculate()
    switch.decode_done(0.05)
    assert costs.decode_s == 0.05 and switch.speculate()


def test_cycles_that_do_not_pay_back_off_doubling_until_the_limit():
    switch = AdaptiveSpeculation(_frozen(1.0, 2.0), probe_cycles=4, min_backoff=16, max_backoff=32)
    trace = _run(switch, tokens_per_cycle=1, steps=4 + 16 + 4 + 32 + 4 + 32)  # 1 token per 2 decode-steps' time
    assert trace == "c" * 4 + "d" * 16 + "c" * 4 + "d" * 32 + "c" * 4 + "d" * 32


def test_cycles_that_pay_keep_speculating():
    switch = AdaptiveSpeculation(_frozen(1.0, 2.0))
    assert _run(switch, tokens_per_cycle=3, steps=50) == "c" * 50


def test_a_probe_that_pays_resets_the_backoff():
    switch = AdaptiveSpeculation(_frozen(1.0, 2.0), probe_cycles=2, min_backoff=4, max_backoff=64)
    trace = _run(switch, 1, 2 + 4 + 2 + 8)  # two failed probes: backoff 4, then 8
    trace += _run(switch, 3, 6)  # the third probe pays
    # Drops again: the window remembers the six paying cycles, verdicts come every 2 cycles, so it takes 8 cycles
    # of 1 token until the mean of (3 x 6, 1 x 8) falls below 2; then the backoff restarts at 4, and a failed
    # 2-cycle probe (judged on its own cycles) doubles it.
    trace += _run(switch, 1, 8 + 4 + 2 + 1)
    assert trace == "cc" + "dddd" + "cc" + "d" * 8 + "c" * 6 + "c" * 8 + "dddd" + "cc" + "d"


def test_a_stretch_of_rejections_in_a_paying_request_does_not_stop_speculation():
    """Chain 1/1 at 1.15 decode steps a cycle (2026-12-07, AVX2 EPYC): 8 cycles of 1 token in a row, inside a
    request that averages 1.33 tokens a cycle, are noise, not a verdict."""
    switch = AdaptiveSpeculation(_frozen(1.0, 1.15))
    tokens = [2, 2, 2, 2] + [1] * 8 + [2, 2, 1, 1, 2, 1] * 10
    trace = ""
    for count in tokens:
        assert switch.speculate()
        switch.cycle_done(count, 1.15)
        trace += "c"
    assert trace == "c" * len(tokens)


def test_a_new_request_starts_from_the_engines_latest_verdict():
    costs = _frozen(1.0, 2.0)
    first = AdaptiveSpeculation(costs, probe_cycles=2, min_backoff=4, max_backoff=64)
    assert _run(first, 1, 2 + 4 + 2) == "cc" + "dddd" + "cc"  # two failed probes: the engine's verdict is 8
    second = AdaptiveSpeculation(costs, probe_cycles=2, min_backoff=4, max_backoff=64)
    # decodes plainly for that backoff, then probes; its next failure backs off twice as long
    assert _run(second, 1, 8 + 2 + 16) == "d" * 8 + "cc" + "d" * 16
    _run(second, 3, 2)  # a probe that pays
    assert costs.backoff == 0
    assert _run(AdaptiveSpeculation(costs, probe_cycles=2), 3, 5) == "c" * 5  # the next request speculates


def test_a_failed_probe_is_carried_over_only_where_cycles_do_not_pay_on_average():
    costs = _frozen(1.0, 1.15)
    costs.backoff = 32  # another request's probe just failed
    costs.tokens_per_cycle = 1.4  # but the engine's cycles pay on average: a new request speculates at once
    assert AdaptiveSpeculation(costs).speculate()
    costs.tokens_per_cycle = 1.1  # they do not: it decodes plainly for the failed probe's backoff first
    assert _run(AdaptiveSpeculation(costs, probe_cycles=2), 1, 32 + 2) == "d" * 32 + "cc"


def test_costs_follow_a_running_mean():
    costs = StepCosts(weight=0.5)
    for seconds in (1.0, 3.0):
        costs.observe("cycle", seconds)
    costs.observe("decode", 1.0)
    assert costs.cycle_s == 2.0 and costs.speedup(3.0) == 1.5


def test_greedy_output_stays_exact_across_switches(tiny_target):
    """Cycles that never pay (frozen costs): the request alternates cycles and plain decode steps; output equals
    target-only greedy decoding, and the draft catches up so later cycles see exact caches."""
    draft = make_draft(tiny_target, num_modules=2, table=(0, 1))
    engine = SpeculativeEngine(tiny_target, draft, TreeSettings(3, 1), adaptive=True)
    engine.costs = _frozen(1.0, 100.0)
    params = SamplingParams(max_new_tokens=70, ignore_eos=True)
    for prompt in ([3, 4, 5], [10, 11, 12, 13, 14, 15]):
        engine.costs.backoff = 0  # each request starts speculating
        spec = engine.generate(prompt, params)
        assert spec.output_ids == engine.generate(prompt, params, speculative=False).output_ids
        # prefill token, 4 cycles, 16 plain steps, 4 cycles, 32 plain, 4 cycles, plain steps to the end
        assert spec.stats.cycles == 12 and spec.stats.decoded_tokens == 70 - 1 - 12
        _, draft_cache = _fresh_caches(engine, prompt + spec.output_ids)
        assert spec._draft_cache.keys.shape[2] < draft_cache.keys.shape[2]  # the last plain steps not yet drafted


def test_draft_catch_up_after_plain_steps_equals_step_by_step_extends(predictable_target, trained_draft):
    engine = SpeculativeEngine(predictable_target, trained_draft, TreeSettings(5, 1), adaptive=True)
    engine.costs = _frozen(1.0, 1e9)  # first probe fails at once: 16 plain steps, then a cycle catches up
    prompt = [9, 8, 7, 6, 5]
    generation = engine.start(prompt, SamplingParams(max_new_tokens=200, ignore_eos=True))
    while generation.stats.cycles < 5:  # 4 probe cycles, 16 plain steps, the catching-up 5th cycle
        generation.step()
    assert generation.stats.decoded_tokens == 16
    tokens = prompt + generation.output_ids
    target_cache, draft_cache = _fresh_caches(engine, tokens)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(generation._draft_cache.keys, draft_cache.keys, **tol)
    torch.testing.assert_close(generation._draft_cache.values, draft_cache.values, **tol)
    for kept, fresh in zip(generation._target_cache.layers, target_cache.layers, strict=True):
        torch.testing.assert_close(kept.keys, fresh.keys, **tol)
