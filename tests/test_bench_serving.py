"""bench/serving.py end to end against the CPU server (`prism-sglang serve`): a tiny random Llama with SmolLM2's
tokenizer, random EAGLE-3 (M = 1) and PRISM (M = 2) drafts, 2 prompts per bench, 8 tokens, concurrency 1 and 2,
temperatures 0 and 1. Also: failures to start are reported clearly, and no server outlives the harness."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import REPO, validate
from prism_sglang.checkpoint import save_draft
from prism_sglang.target import TargetModel
from tests.bench_support import processes_mentioning, run_bench_script
from tests.conftest import make_draft, make_tiny_target_dir

TINY_TREE = ["--num-steps", "3", "--topk", "2", "--num-draft-tokens", "5"]
# Every request speculates: with random drafts, adaptive speculation (the CPU server's default) would stop after the
# first requests' probes, and the acceptance figures checked here need cycles in every run.
LOAD = ["--num-prompts", "2", "--max-tokens", "8", "--concurrency", "1", "2", "--temperature", "0", "1",
        "--probe-prompts", "2", "--server-args=--speculation always"]


def harness(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_bench_script("bench/serving.py", "--backend-server", "cpu", *args, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tiny_chat_target_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny chat target (4 layers: target features from layers 0, 1, 2) and its random drafts."""
    root = tmp_path_factory.mktemp("bench")
    target = TargetModel.load(tiny_chat_target_dir)
    save_draft(make_draft(target, num_modules=1, table=(0,), aux_layer_ids=(0, 1, 2)), root / "eagle3", dtype=None)
    save_draft(make_draft(target, aux_layer_ids=(0, 1, 2)), root / "prism", dtype=None)
    return {"root": root, "target": tiny_chat_target_dir, "eagle3": root / "eagle3", "prism": root / "prism"}


def model_args(tiny: dict[str, Path]) -> list[str]:
    return ["--target", str(tiny["target"]), "--eagle3-draft", str(tiny["eagle3"]), "--prism-draft", str(tiny["prism"])]


@pytest.fixture(scope="module")
def finished(tiny) -> dict:
    """One full run of the harness, plus an offline evaluation file folded into its report."""
    eval_json = tiny["root"] / "eval-prism.json"
    subprocess.run([sys.executable, "-m", "prism_sglang.cli", "eval", "--target", str(tiny["target"]), "--draft",
                    str(tiny["prism"]), "--bench", "gsm8k", "--limit", "1", "--max-new-tokens", "8",
                    "--out", str(eval_json)], cwd=REPO, check=True, capture_output=True, timeout=300)
    out = tiny["root"] / "results"
    result = harness(*model_args(tiny), *TINY_TREE, *LOAD, "--out", str(out), "--eval-json", str(eval_json))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"out": out, "data": json.loads((out / "serving.json").read_text()), "stdout": result.stdout,
            "leftovers": processes_mentioning(str(tiny["root"]))}


@pytest.mark.slow
@pytest.mark.timeout(1200)
class TestFullRun:
    def test_results_validate_and_cover_every_run(self, finished):
        data = finished["data"]
        validate(data, "serving")
        assert [c["name"] for c in data["configs"]] == ["none", "eagle3", "prism"]
        assert len(data["runs"]) == 3 * 3 * 2 * 2  # configs x benches x temperatures x concurrencies
        assert data["settings"]["requests_by_concurrency"] == {"1": 2, "2": 4}
        # The CPU servers run side by side: each cell on every configuration in turn, every other cell reversed.
        assert data["settings"]["interleaved"] is True
        assert [r["config"] for r in data["runs"][:6]] == ["none", "eagle3", "prism", "prism", "eagle3", "none"]
        assert len({(r["bench"], r["temperature"], r["concurrency"]) for r in data["runs"][:3]}) == 1
        for run in data["runs"]:
            assert run["completed"] == run["requests"] == {1: 2, 2: 4}[run["concurrency"]] and run["failed"] == 0
            assert run["total_output_tokens"] == 8 * run["requests"]  # EOS ignored: exactly max tokens each

    def test_every_server_served_the_identical_tree(self, finished):
        for config in finished["data"]["configs"]:
            reported = config["server_reported"]
            if config["name"] == "none":
                assert reported["speculative_algorithm"] is None
            else:
                assert (reported["speculative_num_steps"], reported["speculative_eagle_topk"],
                        reported["speculative_num_draft_tokens"]) == (3, 2, 5)
                assert config["draft"]["num_modules"] == {"eagle3": 1, "prism": 2}[config["name"]]

    def test_acceptance_per_run_comes_from_the_requests(self, finished):
        for run in finished["data"]["runs"]:
            acceptance = run["acceptance"]
            if run["config"] == "none":
                assert acceptance is None
                continue
            assert acceptance["requests"] == run["requests"]
            assert acceptance["output_tokens"] == run["total_output_tokens"]
            assert acceptance["tau"] == pytest.approx(acceptance["output_tokens"] / acceptance["verify_cycles"],
                                                      rel=0.02)

    def test_per_position_acceptance_for_each_draft_bench_and_temperature(self, finished):
        rows = finished["data"]["acceptance_by_position"]
        assert {(r["config"], r["bench"], r["temperature"]) for r in rows} == {
            (c, b, t) for c in ("eagle3", "prism") for b in ("mt-bench", "gsm8k", "humaneval") for t in (0.0, 1.0)}
        for r in rows:
            assert sum(r["histogram"]) == r["cycles"] > 0
            assert len(r["conditional_acceptance"]) == 3  # num_steps positions

    def test_both_temperatures_were_sent(self, finished):
        sent = finished["data"]["settings"]["sent_sampling_params"]
        assert {k: v["temperature"] for k, v in sent.items()} == {"0": 0.0, "1": 1.0}

    def test_ratios_are_computed_from_the_same_runs(self, finished):
        data = finished["data"]
        assert len(data["comparisons"]) == 3 * 2 * 2
        for c in data["comparisons"]:
            t = c["output_throughput"]
            assert c["prism_vs_eagle3"] == pytest.approx(t["prism"] / t["eagle3"])
            assert c["speedup_prism_vs_none"] == pytest.approx(t["prism"] / t["none"])
            assert c["speedup_eagle3_vs_none"] == pytest.approx(t["eagle3"] / t["none"])

    def test_report_and_plots(self, finished):
        out, data = finished["out"], finished["data"]
        report = (out / "report.md").read_text()
        for text in ("no speculation", "EAGLE-3", "PRISM", "### Temperature 1", "3/2/5", "eval-prism.json",
                     "Offline acceptance", "Acceptance by position"):
            assert text in report
        first = data["comparisons"][0]
        assert f"{first['prism_vs_eagle3']:.2f}x" in report
        for name in ("throughput.png", "speedup.png", "acceptance_by_position.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"({name})" in report
        assert (out / "offline-eval" / "eval-prism.json").is_file()
        assert "| eval-prism.json | `prism` | 2 |" in report  # the offline summary row: draft and its modules

    def test_no_server_outlives_the_harness(self, finished):
        assert finished["leftovers"] == []


@pytest.mark.timeout(600)
def test_a_server_that_cannot_load_its_draft_is_reported(tiny, tmp_path):
    """A draft that passes the folder check but was made for another target: the server dies while loading, and
    the 'none' server started before it (the servers run side by side) is stopped too."""
    other = TargetModel.load(make_tiny_target_dir(tmp_path / "other"), aux_layer_ids=[1, 3, 4])
    save_draft(make_draft(other), tmp_path / "wrong-prism", dtype=None)
    result = harness("--target", str(tiny["target"]), "--prism-draft", str(tmp_path / "wrong-prism"),
                     "--configs", "none", "prism", *LOAD, "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "[none] ready" in result.stdout
    assert "error: the 'prism' server exited with status" in result.stderr
    assert "another target" in result.stderr  # the end of the server's log comes with the message
    assert not (tmp_path / "out" / "serving.json").exists()
    assert processes_mentioning(str(tiny["target"])) == []


@pytest.mark.timeout(300)
def test_a_port_in_use_is_refused(tiny, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = harness(*model_args(tiny), "--port", str(port), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert processes_mentioning(str(tiny["root"])) == []


@pytest.mark.timeout(300)
def test_a_missing_draft_is_refused_before_anything_starts(tiny, tmp_path):
    result = harness("--target", str(tiny["target"]), "--eagle3-draft", str(tmp_path / "nowhere"), "--prism-draft",
                     str(tiny["prism"]), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"--eagle3-draft {tmp_path / 'nowhere'}: no config.json there" in result.stderr


@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_server(tiny, tmp_path):
    process = subprocess.Popen([sys.executable, "bench/serving.py", "--backend-server", "cpu", *model_args(tiny),
                                "--configs", "prism", *TINY_TREE, "--num-prompts", "2", "--max-tokens", "64",
                                "--concurrency", "1", "--out", str(tmp_path / "out")],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "[prism] ready" in line:
                break
        assert processes_mentioning(str(tiny["prism"]), settle=0)  # the server runs...
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted: servers stopped" in stderr
    assert processes_mentioning(str(tiny["prism"])) == []  # ...and is gone with the harness


def test_servers_that_run_at_once_take_consecutive_ports_from_a_given_one(tmp_path):
    from bench.common import free_port
    from bench.launch import Tree, configurations
    from bench.serving import Setup, parse_args, server_spec

    port = free_port("127.0.0.1")
    args = parse_args(["--backend-server", "cpu", "--port", str(port)])
    assert args.interleave  # the CPU server's default
    setup = Setup("cpu", "cpu", tmp_path, tmp_path / "target", Tree(1, 1, 2),
                  configurations(None, tmp_path / "prism", ["none", "prism"]), {}, {}, [])
    specs = [server_spec(args, setup, config, 1, i) for i, config in enumerate(setup.configs)]
    assert [spec.port for spec in specs] == [port, port + 1]
    assert not parse_args(["--backend-server", "cpu", "--no-interleave"]).interleave


def test_the_cpu_server_takes_turns_every_few_requests_by_default():
    from bench.serving import parse_args

    assert parse_args(["--backend-server", "cpu", "--concurrency", "1"]).interleave_requests == 3
    assert parse_args(["--backend-server", "cpu", "--concurrency", "1", "8"]).interleave_requests == 8
    assert parse_args(["--backend-server", "cpu", "--concurrency", "1", "--interleave-requests", "5"]
                      ).interleave_requests == 5
    for argv in (["--backend-server", "cpu", "--no-interleave"], ["--backend-server", "sglang"]):
        assert parse_args(argv).interleave_requests is None  # whole runs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_runs_measured_in_rounds_take_turns_every_n_requests(tiny, tmp_path):
    """--interleave-requests 2 over 5 requests: rounds of 2, 2, 1, each run by both servers before the next round,
    the order reversed every round; each run's figures cover all its requests."""
    out = tmp_path / "out"
    result = harness("--target", str(tiny["target"]), "--prism-draft", str(tiny["prism"]), "--configs", "none",
                     "prism", "--benches", "gsm8k", "--num-prompts", "5", "--max-tokens", "8", "--concurrency", "1",
                     "--temperature", "0", "--probe-prompts", "0", "--interleave-requests", "2",
                     "--server-args=--speculation always", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rounds = [line.split("]")[0].strip() + "] " + line.split()[1].rstrip(":") for line in result.stdout.splitlines()
              if "-round" in line]
    assert rounds == ["[none] gsm8k-t0-c1-round0", "[prism] gsm8k-t0-c1-round0", "[prism] gsm8k-t0-c1-round1",
                      "[none] gsm8k-t0-c1-round1", "[none] gsm8k-t0-c1-round2", "[prism] gsm8k-t0-c1-round2"]
    data = json.loads((out / "serving.json").read_text())
    validate(data, "serving")
    assert data["settings"]["interleave_requests"] == 2
    for run in data["runs"]:
        assert run["completed"] == run["requests"] == 5 and run["total_output_tokens"] == 5 * 8
        merged = json.loads((out / run["raw_output"]).read_text())
        assert merged["completed"] == 5 and merged["duration"] == pytest.approx(run["duration_s"])
        rounds_duration = sum(json.loads((out / "raw" / run["config"] / f"gsm8k-t0-c1-round{k}.jsonl").read_text())
                              ["duration"] for k in range(3))
        assert run["duration_s"] == pytest.approx(rounds_duration)
    prism = next(r for r in data["runs"] if r["config"] == "prism")
    assert prism["acceptance"]["tau"] >= 1.0
    assert "Turns every 2 requests" in (out / "report.md").read_text()


def test_rounds_need_servers_side_by_side_and_a_busy_slot_each(capsys):
    from bench.serving import parse_args, rounds

    assert parse_args(["--backend-server", "sglang", "--interleave-requests", "4", "--concurrency", "1"]).interleave
    for argv, message in ((["--no-interleave"], "drop --no-interleave"),
                          (["--concurrency", "1", "8"], "must be >= every --concurrency")):
        with pytest.raises(SystemExit):
            parse_args(["--backend-server", "cpu", "--interleave-requests", "4", *argv])
        assert message in capsys.readouterr().err
    assert rounds(5, 2) == [(0, 2), (2, 2), (4, 1)] and rounds(5, None) == [(0, 5)]
