"""bench/: the pieces of the benchmark harness that need no model server (formulas, prompt files, the
sglang.benchmark.serving driver, process handling, schema checks). Seconds each."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.acceptance import (
    RequestAcceptance,
    conditional_acceptance,
    merge_histograms,
    run_acceptance,
    tau_from_histogram,
)
from bench.common import BenchError, require_free_port, validate
from bench.launch import Config, Tree, cpu_command, sglang_command
from bench.prompts import chat_prompt, load_prompts, write_custom_dataset
from bench.server import ServerProcess, ServerSpec, ServerStartError
from tests.bench_support import processes_mentioning

pytestmark = pytest.mark.timeout(120)


# -- acceptance formulas --------------------------------------------------------------------------------------
def test_run_acceptance_pools_tokens_over_cycles():
    # 100 tokens in 25 cycles (tau 4) and 10 tokens in 10 cycles (tau 1): 110 / 35, not the mean 2.5.
    records = [RequestAcceptance(100, 4.0), RequestAcceptance(10, 1.0), RequestAcceptance(0, 0.0)]
    result = run_acceptance(records)
    assert result == {"tau": pytest.approx(110 / 35), "requests": 2, "output_tokens": 110, "verify_cycles": 35}


def test_run_acceptance_is_none_without_speculation():
    assert run_acceptance([RequestAcceptance(64, 0.0), RequestAcceptance(64, 0.0)]) is None


def test_conditional_acceptance_and_tau_from_a_histogram():
    histogram = merge_histograms([[2, 1], [0, 1, 4, 0, 2]])  # cycles by accepted drafts: 0..4
    assert histogram == [2, 2, 4, 0, 2]
    rates = conditional_acceptance(histogram, depth=6)
    # P(a>=1)=8/10, P(a>=2|a>=1)=6/8, P(a>=3|a>=2)=2/6, P(a>=4|a>=3)=2/2, P(a>=5|a>=4)=0/2, then unreached.
    assert rates == [pytest.approx(0.8), pytest.approx(0.75), pytest.approx(1 / 3), 1.0, 0.0, None]
    assert tau_from_histogram(histogram) == pytest.approx((2 * 1 + 2 * 2 + 4 * 3 + 2 * 5) / 10)
    assert tau_from_histogram([]) is None


# -- settings and commands ------------------------------------------------------------------------------------
def test_tree_settings_are_checked():
    Tree(6, 4, 16).check()
    Tree(5, 1, 6).check()
    with pytest.raises(BenchError, match="num-steps \\+ 1"):
        Tree(5, 1, 8).check()  # SGLang would silently verify 6 tokens
    with pytest.raises(BenchError, match="exceeds"):
        Tree(2, 2, 8).check()


def test_both_spec_configurations_get_identical_flags(tmp_path):
    tree = Tree(6, 4, 16)
    e, p = Config("eagle3", "EAGLE-3", "EAGLE3", tmp_path / "e"), Config("prism", "PRISM", "PRISM", tmp_path / "p")
    plain = Config("none", "no speculation", None, None)
    commands = [sglang_command("py", "T", c, tree, "h", 1, 64, ["--x"]) for c in (plain, e, p)]
    strip = {"EAGLE3", "PRISM", str(tmp_path / "e"), str(tmp_path / "p")}
    assert [a for a in commands[1] if a not in strip] == [a for a in commands[2] if a not in strip]
    assert commands[0] == [a for a in commands[1] if a not in strip and not a.startswith("--speculative")
                           and a not in ("6", "4", "16")]
    assert commands[1][-1] == "--x"  # extra flags last: they win
    cpu = cpu_command("py", "T", p, tree, "h", 1, 8, 1)
    assert cpu[cpu.index("--max-running") + 1] == cpu[cpu.index("--max-queue") + 1] == "8"
    for config in (plain, p):  # the CPU server gets the extra flags too, last
        assert cpu_command("py", "T", config, tree, "h", 1, 8, 1, ["--speculation", "always"])[-2:] == [
            "--speculation", "always"]


# -- prompts --------------------------------------------------------------------------------------------------
def test_chat_prompt_keeps_smollm2_turn_markers(tiny_chat_target_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_target_dir)
    text = chat_prompt(tokenizer, "What is 2 + 2?")
    # SmolLM2's BOS is <|im_start|>, the turn marker; it is not added on encoding, so nothing is removed.
    assert text.count("<|im_start|>") == 3 and text.endswith("<|im_start|>assistant\n")


def test_custom_dataset_file_reads_back_through_sglang(tiny_chat_target_dir, tmp_path):
    from transformers import AutoTokenizer

    from bench.common import add_torchvision_stub

    add_torchvision_stub()
    datasets = pytest.importorskip("sglang.benchmark.datasets.custom")
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_target_dir)
    prompts = load_prompts("gsm8k", 2, tokenizer)
    assert prompts.ids == ["0", "1"]
    path = write_custom_dataset(prompts, 5, tmp_path / "gsm8k.jsonl")
    assert len(path.read_text().splitlines()) == 5  # prompts cycle to make 5 requests
    rows = datasets.sample_custom_requests(str(path), 5, tokenizer, fixed_output_len=8)
    assert len(rows) == 5 and {r.prompt for r in rows} == set(prompts.texts)
    assert all(r.output_len == 8 for r in rows)


# -- the sglang.benchmark.serving driver ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def serving():
    from bench.loadgen import import_serving
    from tests.sglang_support import import_sglang

    import_sglang()
    return import_serving()


def run_spec(tmp_path: Path, temperature: float):
    from bench.loadgen import RunSpec

    return RunSpec("http://127.0.0.1:1", tmp_path / "d.jsonl", 6, 8, 2, temperature, "tok", 0, 1,
                   tmp_path / "raw.jsonl")


def test_benchmark_args_are_sglangs_own(serving, tmp_path):
    from bench.loadgen import parse_benchmark_args

    args = parse_benchmark_args(serving, run_spec(tmp_path, 1.0).argv())
    assert (args.backend, args.dataset_name, args.temperature, args.max_concurrency) == ("sglang", "custom", 1.0, 2)
    assert (args.num_prompts, args.sharegpt_output_len, args.warmup_requests) == (6, 8, 1)
    assert args.request_rate == float("inf") and not args.disable_ignore_eos
    assert serving.run_benchmark.__name__ == "run_benchmark"  # restored


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_request_function_sends_the_temperature(serving, tmp_path, temperature):
    from bench.loadgen import sent_sampling_params

    params = sent_sampling_params(serving, run_spec(tmp_path, temperature))
    assert params == {"temperature": temperature, "max_new_tokens": 8, "ignore_eos": True}


def test_a_request_function_that_drops_the_temperature_is_caught(serving, tmp_path, monkeypatch):
    from bench.loadgen import sent_sampling_params

    real = serving.set_global_args
    monkeypatch.setattr(serving, "set_global_args", lambda a: real(SimpleNamespace(**{**vars(a), "temperature": 0.0})))
    with pytest.raises(BenchError, match="temperature"):
        sent_sampling_params(serving, run_spec(tmp_path, 1.0))


def test_recorder_keeps_outputs_in_start_order():
    from bench.loadgen import RequestRecorder

    async def inner(request_func_input, pbar=None):
        await asyncio.sleep(request_func_input)  # later starters finish first
        return request_func_input

    recorder = RequestRecorder(inner)

    async def main():
        await recorder(request_func_input=0.02)  # "warm-up": awaited before the others start
        await asyncio.gather(*(recorder(request_func_input=d, pbar=None) for d in (0.03, 0.01, 0.02)))

    asyncio.run(main())
    assert recorder.outputs == [0.02, 0.03, 0.01, 0.02]


# -- processes ------------------------------------------------------------------------------------------------
def _spec(tmp_path: Path, code: str, timeout: float = 60.0) -> ServerSpec:
    port = _unused_port()
    return ServerSpec("fake", [sys.executable, "-c", code], "127.0.0.1", port, tmp_path / "fake.log", {}, timeout)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_that_never_gets_healthy_is_stopped_with_its_children(tmp_path):
    marker = f"# {tmp_path}"  # in both command lines, so that leftovers can be found
    child = f"import time; time.sleep(300)  {marker}"
    parent = (f"import subprocess, sys, time; print('starting', flush=True); "
              f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(300)  {marker}")
    server = ServerProcess(_spec(tmp_path, parent, timeout=3.0), stop_timeout=10.0)
    with pytest.raises(ServerStartError, match="not healthy within 3 s") as caught, server:
        pass
    assert "starting" in str(caught.value)  # the log's tail is in the message
    assert not processes_mentioning(marker)


def test_server_that_exits_is_reported_with_its_status_and_log(tmp_path):
    code = "import sys; print('error: no such draft', flush=True); sys.exit(3)"
    with pytest.raises(ServerStartError, match="exited with status 3") as caught, ServerProcess(_spec(tmp_path, code)):
        pass
    assert "error: no such draft" in str(caught.value)


def test_a_taken_port_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BenchError, match="in use"):
            require_free_port("127.0.0.1", s.getsockname()[1])


# -- schema ---------------------------------------------------------------------------------------------------
def test_schema_names_what_is_wrong():
    with pytest.raises(BenchError, match="'runs' is a required property"):
        validate({"schema_version": 1, "kind": "serving"}, "serving")


def test_schemas_are_valid_json_schemas():
    import jsonschema

    for name in ("serving", "simulated"):
        schema = json.loads((Path(__file__).parents[1] / "bench" / "schema" / f"{name}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
