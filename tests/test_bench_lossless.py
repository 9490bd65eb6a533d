"""bench/lossless.py: the comparison itself, and a real run against the CPU server: SmolLM2 with the shipped PRISM
draft (its drafts are accepted, so the equality covers accepted drafts, not only bonus tokens) against no
speculation, with requests batched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.common import validate
from bench.lossless import compare, first_divergence
from tests.bench_support import processes_mentioning, run_bench_script


def response(ids: list[int], verify_ct: int | None = None) -> dict[str, Any]:
    return {"output_ids": ids, "meta_info": {"spec_verify_ct": verify_ct} if verify_ct else {}}


@pytest.mark.parametrize(("reference", "output", "expected"), [
    ([1, 2, 3], [1, 2, 3], None), ([], [], None), ([1, 2, 3], [1, 9, 3], 1), ([1, 2, 3], [7, 2, 3], 0),
    ([1, 2, 3], [1, 2], 2), ([1, 2], [1, 2, 3], 2),  # one stopped early: they differ where the shorter ends
])
def test_first_divergence(reference, output, expected):
    assert first_divergence(reference, output) == expected


def test_compare_records_each_mismatch_and_pools_acceptance_over_requests():
    reference = [response([1, 2, 3, 4]), response([5, 6]), response([8])]
    speculative = [response([1, 2, 3, 4], verify_ct=2), response([5, 7], verify_ct=2), response([8], verify_ct=1)]
    result = compare(reference, speculative, [("gsm8k", "0"), ("gsm8k", "1"), ("humaneval", "HumanEval/0")])
    assert (result["prompts"], result["identical"]) == (3, 2)
    assert result["mismatches"] == [{"bench": "gsm8k", "id": "1", "first_divergence": 1, "reference_tokens": 2,
                                     "output_tokens": 2}]
    assert (result["output_tokens"], result["verify_cycles"]) == (7, 5)
    assert result["tau"] == pytest.approx(7 / 5)


def test_a_check_needs_a_speculative_configuration(tmp_path):
    result = run_bench_script("bench/lossless.py", "--configs", "none", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "--configs needs a speculative configuration" in result.stderr


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shipped_prism_draft_on_the_cpu_server_is_lossless(tmp_path):
    servers_before = processes_mentioning("prism_sglang.cli serve", settle=0)
    result = run_bench_script("bench/lossless.py", "--backend-server", "cpu", "--configs", "prism", "--num-steps",
                              "4", "--topk", "1", "--also-tree", "2/2/4", "--num-prompts", "1", "--max-tokens", "24",
                              "--concurrency", "2", "--out", str(tmp_path), "--tag", "smollm2", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reference = None
    for name, tree in (("4-1-5", {"num_steps": 4, "topk": 1, "num_draft_tokens": 5}),
                       ("2-2-4", {"num_steps": 2, "topk": 2, "num_draft_tokens": 4})):
        data = json.loads((tmp_path / f"lossless-smollm2-{name}.json").read_text())
        validate(data, "lossless")
        assert data["lossless"] is True and data["settings"]["tree"] == tree
        assert [c["name"] for c in data["configs"]] == ["none", "prism"]  # the reference runs first, always
        assert reference in (None, data["configs"][0])  # the same reference server's record in both files
        reference = data["configs"][0]
        (check,) = data["checks"]
        assert check["config"] == "prism" and check["identical"] == check["prompts"] == 3  # one prompt per bench
        assert check["tau"] > 1  # drafts were accepted
    assert "Lossless check" in (tmp_path / "report.md").read_text()
    assert processes_mentioning("prism_sglang.cli serve") == servers_before  # both servers stopped
