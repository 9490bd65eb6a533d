"""bench/simulated.py without a GPU: --dry-run writes config folders that our checkpoint rules accept and prints
SGLang commands that SGLang 0.5.17 itself resolves as intended; a real run on CPU says what it needs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import gpu_names
from prism_sglang.checkpoint import check_target_compatibility
from prism_sglang.config import PrismConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def simulated(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "bench/simulated.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("simulated")
    result = simulated("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "sglang.launch_server" in line]
    return out / "simulated" / "models", commands


def test_target_config_has_llama_3_1_8b_dimensions(dry_run):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dry_run[0] / "llama-3.1-8b-instruct")
    assert (config.model_type, config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        "llama", 4096, 14336, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 8, 128256)
    assert not list((dry_run[0] / "llama-3.1-8b-instruct").glob("*.safetensors"))  # dims only, dummy weights


@pytest.mark.parametrize(("name", "modules", "table", "architecture"), [
    ("eagle3-8b", 1, (0,), "LlamaForCausalLMEagle3"),  # M = 1 is written as a standard EAGLE-3 checkpoint
    ("prism-8b", 2, (0, 1), "LlamaForCausalLMPrism"),
])
def test_draft_configs_follow_our_checkpoint_rules(dry_run, name, modules, table, architecture):
    from transformers import AutoConfig

    draft = PrismConfig.load(dry_run[0] / name)
    assert (draft.num_modules, draft.step_modules, draft.draft_vocab_size) == (modules, table, 32000)
    assert (draft.hidden_size, draft.intermediate_size, draft.head_dim) == (4096, 14336, 128)
    assert json.loads((dry_run[0] / name / "config.json").read_text())["architectures"] == [architecture]
    target = AutoConfig.from_pretrained(dry_run[0] / "llama-3.1-8b-instruct")
    assert check_target_compatibility(draft, target) == [1, 15, 28]


def test_dry_run_prints_one_command_per_server(dry_run):
    commands = dry_run[1]
    assert len(commands) == 1 + 2 * 3  # no speculation once, each draft at 4.5, 5.5 and 6.3
    for line in commands:
        assert "--load-format dummy" in line and "--skip-tokenizer-init" in line
    spec = [c for c in commands if "--speculative-algorithm" in c]
    for acc in ("4.5", "5.5", "6.3"):
        for algorithm in ("EAGLE3", "PRISM"):
            [line] = [c for c in spec if f"SGLANG_SIMULATE_ACC_LEN={acc} " in c and f"algorithm {algorithm} " in c]
            assert "SGLANG_SIMULATE_ACC_TOKEN_MODE=fixed" in line
            assert "--speculative-draft-load-format dummy" in line
            assert "--speculative-num-steps 6 --speculative-eagle-topk 4 --speculative-num-draft-tokens 16" in line


def test_sglang_resolves_the_printed_commands(dry_run):
    """SGLang 0.5.17's own argument handling (the PRISM plugin included) accepts every printed command and keeps
    the dummy formats and the tree; `--device cpu` stands in for the GPU."""
    from tests.sglang_support import import_sglang

    import_sglang()
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    for line in dry_run[1]:
        argv = shlex.split(line)
        argv = argv[argv.index("sglang.launch_server") + 1:]
        args = prepare_server_args([*argv, "--device", "cpu"])
        assert args.load_format == "dummy" and args.skip_tokenizer_init
        assert args.max_running_requests == 64
        if "--speculative-algorithm" in argv:
            assert args.speculative_draft_load_format == "dummy"
            assert (args.speculative_num_steps, args.speculative_eagle_topk,
                    args.speculative_num_draft_tokens) == (6, 4, 16)


def test_acceptance_lengths_beyond_the_tree_are_refused():
    result = simulated("--dry-run", "--acc-len", "7.5")
    assert result.returncode == 2 and "--acc-len must lie in [1, num-steps + 1 = 7]" in result.stderr


@pytest.mark.skipif(bool(gpu_names()), reason="this machine has a GPU")
def test_without_a_gpu_it_says_what_it_needs(tmp_path):
    result = simulated("--out", str(tmp_path))
    assert result.returncode == 1
    assert "needs a CUDA GPU with SGLang 0.5.17" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "simulated.json").exists()


def test_simulated_results_validate_and_reach_the_report(tmp_path):
    """What a GPU run records, from made-up streamed requests: cycle times, ratios, schema, report and plot."""
    from bench import report, simulated
    from bench.common import write_json
    from bench.launch import Config
    from bench.native import StreamedRequest

    args = simulated.parse_args(["--acc-len", "4.5", "5.5", "--concurrency", "1", "2"])
    configs = {"none": Config("none", "no speculation", None, None),
               "eagle3": Config("eagle3", "EAGLE-3", "EAGLE3", tmp_path),
               "prism": Config("prism", "PRISM", "PRISM", tmp_path)}

    def requests(cycles: int, cycle_s: float) -> list[StreamedRequest]:
        # 101 tokens: the prefill's first one, then `cycles` cycles in cycle_s each
        verify = None if cycles == 100 else cycles
        return [StreamedRequest(True, 0.05, 0.05 + cycles * cycle_s, 101, verify)] * 4

    loads = ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    runs = []
    for c in (1, 2):
        runs.append(simulated.run_record(configs["none"], None, c, requests(100, 0.010), 4.0, 1e4, loads))
        for acc in (4.5, 5.5):
            cycles = round(100 / (acc - 1))  # τ counts the bonus token; the first token is the prefill's
            for name, cycle_s in (("eagle3", 0.020), ("prism", 0.021)):
                runs.append(simulated.run_record(configs[name], acc, c, requests(cycles, cycle_s), 1.0, 1e4, loads))
    results = simulated.build_results(args, "NVIDIA H100 80GB HBM3", ["python", "bench/simulated.py"], 60.0, loads,
                                      [], runs)
    for row in results["comparisons"]:
        assert row["cycle_ms"]["none"] == pytest.approx(10.0) and row["cycle_ms"]["eagle3"] == pytest.approx(20.0)
        assert row["prism_vs_eagle3_cycle"] == pytest.approx(1.05)
        assert row["speedup_prism_vs_none"] == pytest.approx(4.0)  # same tokens, 1 s vs 4 s
    write_json(tmp_path / "simulated.json", results, "simulated")
    text = report.write_report(tmp_path).read_text()
    assert "Simulated 8B: cycle cost of PRISM vs EAGLE-3" in text and "| 1.05x |" in text
    assert (tmp_path / "simulated_cycle_time.png").read_bytes()[:4] == b"\x89PNG"
