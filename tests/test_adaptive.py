"""Adaptive speculation: the switch's decisions from measured costs, and lossless output across switches."""

import torch

from prism_sglang.engine import SamplingParams, SpeculativeEngine, TreeSettings
from prism_sglang.engine.adaptive import AdaptiveSpeculation, RunningMean, StepCosts
from tests.conftest import make_draft
from tests.test_engine import _fresh_caches


def _frozen(decode_s: float, cycle_s: float, tokens_per_cycle: float | None = None) -> StepCosts:
    """Costs that measurements do not move (weight 0 after a long history); the engine's tokens per cycle too when
    given (else measured by the cycles run)."""
    def fixed(value: float) -> RunningMean:
        return RunningMean(0.0, value, 10**9)

    costs = StepCosts(decode=fixed(decode_s), cycle=fixed(cycle_s))
    if tokens_per_cycle is not None:
        costs.tokens = fixed(tokens_per_cycle)
    return costs


def _switch(costs: StepCosts, **settings) -> AdaptiveSpeculation:
    """A switch that judges each window on its own, without plain steps to refresh costs (unless overridden)."""
    return AdaptiveSpeculation(costs, **{"prior_cycles": 0, "refresh_cycles": 10**9, **settings})


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
    assert costs.decode.value == 0.05 and switch.speculate()


def test_cycles_that_do_not_pay_back_off_doubling_until_the_limit():
    switch = _switch(_frozen(1.0, 2.0), probe_cycles=4, min_backoff=16, max_backoff=32)
    trace = _run(switch, tokens_per_cycle=1, steps=4 + 16 + 4 + 32 + 4 + 32)  # 1 token per 2 decode-steps' time
    assert trace == "c" * 4 + "d" * 16 + "c" * 4 + "d" * 32 + "c" * 4 + "d" * 32


def test_cycles_that_pay_keep_speculating_with_a_plain_step_now_and_then():
    assert _run(_switch(_frozen(1.0, 2.0)), tokens_per_cycle=3, steps=50) == "c" * 50
    # Every 32 cycles in a row one plain step measures what a decode step costs now (context, machine drift).
    assert _run(AdaptiveSpeculation(_frozen(1.0, 2.0)), tokens_per_cycle=3, steps=70) == ("c" * 32 + "d") * 2 + "cccc"


def test_a_probe_that_pays_resets_the_backoff():
    switch = _switch(_frozen(1.0, 2.0), probe_cycles=2, min_backoff=4, max_backoff=64)
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
    switch = AdaptiveSpeculation(_frozen(1.0, 1.15), refresh_cycles=10**9)
    tokens = [2, 2, 2, 2] + [1] * 8 + [2, 2, 1, 1, 2, 1] * 10
    trace = ""
    for count in tokens:
        assert switch.speculate()
        switch.cycle_done(count, 1.15)
        trace += "c"
    assert trace == "c" * len(tokens)


def test_a_probe_of_rejections_is_judged_against_the_engines_acceptance():
    """Four rejections in a row (one probe in five at 0.33 acceptance) stop a request only where the engine's
    cycles do not pay either."""
    paying = AdaptiveSpeculation(_frozen(1.0, 1.15, tokens_per_cycle=1.33), refresh_cycles=10**9)
    assert _run(paying, 1, 8) == "c" * 8  # shrunk: (8 + 16 x 1.33) / 24 = 1.22 tokens a cycle, 1.06x
    losing = AdaptiveSpeculation(_frozen(1.0, 1.15, tokens_per_cycle=1.05), refresh_cycles=10**9)
    assert _run(losing, 1, 4 + 16) == "c" * 4 + "d" * 16


def test_no_verdict_before_the_engine_has_a_few_probes_behind_it():
    switch = AdaptiveSpeculation(_frozen(1.0, 2.0), refresh_cycles=10**9)  # a new engine: tokens not measured
    assert _run(switch, 1, 16 + 16) == "c" * 16 + "d" * 16  # 16 cycles (prior_cycles), then a verdict


def test_a_new_request_starts_from_the_engines_latest_verdict():
    costs = _frozen(1.0, 2.0)
    first = _switch(costs, probe_cycles=2, min_backoff=4, max_backoff=64)
    assert _run(first, 1, 2 + 4 + 2) == "cc" + "dddd" + "cc"  # two failed probes: the engine's verdict is 8
    second = _switch(costs, probe_cycles=2, min_backoff=4, max_backoff=64)
    # decodes plainly for that backoff, then probes; its next failure backs off twice as long
    assert _run(second, 1, 8 + 2 + 16) == "d" * 8 + "cc" + "d" * 16
    _run(second, 3, 2)  # a probe that pays
    assert costs.backoff == costs.backoff_left == 0
    assert _run(_switch(costs, probe_cycles=2), 3, 5) == "c" * 5  # the next request speculates


def test_short_requests_count_down_one_backoff_together():
    """A failed probe's backoff runs out after that many plain steps of any requests: requests shorter than it
    cannot keep the engine from probing ever again."""
    costs = _frozen(1.0, 2.0)
    _run(_switch(costs, probe_cycles=2, min_backoff=32), 1, 2)  # a failed probe: 32 plain steps for the engine
    assert [_run(_switch(costs, probe_cycles=2), 1, 12) for _ in range(3)] == ["d" * 12, "d" * 12, "d" * 8 + "cc" +
                                                                                "dd"]


def test_a_failed_probe_is_carried_over_only_where_cycles_do_not_pay_on_average():
    costs = _frozen(1.0, 1.15, tokens_per_cycle=1.4)
    costs.backoff = costs.backoff_left = 32  # another request's probe just failed
    assert AdaptiveSpeculation(costs).speculate()  # but the engine's cycles pay on average: speculate at once
    costs.tokens = RunningMean(0.0, 1.1, 10**9)  # they do not: first the failed probe's backoff
    assert _run(_switch(costs, probe_cycles=2), 1, 32 + 2) == "d" * 32 + "cc"


def test_running_means_are_plain_means_until_they_have_history():
    mean = RunningMean(0.02)
    for sample in (1, 2, 2, 1):  # a first rejection does not weigh 50 cycles
        mean.add(sample)
    assert mean.value == 1.5
    for _ in range(200):
        mean.add(2)
    assert 1.95 < mean.value < 2.0  # then a running mean of ~50 samples
    costs = StepCosts()
    costs.cycle.add(2.0)
    costs.decode.add(1.0)
    assert costs.speedup(3.0) == 1.5


def test_greedy_output_stays_exact_across_switches(tiny_target):
    """Cycles that never pay (frozen costs): the request alternates cycles and plain decode steps; output equals
    target-only greedy decoding, and the draft catches up so later cycles see exact caches."""
    draft = make_draft(tiny_target, num_modules=2, table=(0, 1))
    engine = SpeculativeEngine(tiny_target, draft, TreeSettings(3, 1), adaptive=True)
    engine.costs = _frozen(1.0, 100.0, tokens_per_cycle=1.0)
    params = SamplingParams(max_new_tokens=70, ignore_eos=True)
    for prompt in ([3, 4, 5], [10, 11, 12, 13, 14, 15]):
        engine.costs.backoff = engine.costs.backoff_left = 0  # each request starts speculating
        spec = engine.generate(prompt, params)
        assert spec.output_ids == engine.generate(prompt, params, speculative=False).output_ids
        # prefill token, 4 cycles, 16 plain steps, 4 cycles, 32 plain, 4 cycles, plain steps to the end
        assert spec.stats.cycles == 12 and spec.stats.decoded_tokens == 70 - 1 - 12
        _, draft_cache = _fresh_caches(engine, prompt + spec.output_ids)
        assert spec._draft_cache.keys.shape[2] < draft_cache.keys.shape[2]  # the last plain steps not yet drafted


def test_draft_catch_up_after_plain_steps_equals_step_by_step_extends(predictable_target, trained_draft):
    engine = SpeculativeEngine(predictable_target, trained_draft, TreeSettings(5, 1), adaptive=True)
    engine.costs = _frozen(1.0, 1e9, tokens_per_cycle=1.0)  # the first probe fails: 16 plain steps, then a
    # cycle catches up
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
