"""Does a PRISM draft step cost what an EAGLE-3 one costs? Measured at 8B scale without any weights.

SGLang serves the Llama-3.1-8B-Instruct architecture with random weights (`--load-format dummy`), EAGLE-3 and
PRISM (M = 2, table 0,1) drafts of the same shape (`--speculative-draft-load-format dummy`), and a forced
acceptance length (SGLANG_SIMULATE_ACC_LEN, "fixed" token mode: emitted tokens are a constant id). With the
acceptance the same, any difference in time per verification cycle is the cost of the draft itself. The
script writes the config folders, serves each configuration, drives a closed-loop streaming load at each
concurrency, and writes simulated.json + report.md. GPU only (CUDA + SGLang 0.5.17); --dry-run writes the
folders and prints the commands anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # see bench/serving.py

import argparse
import json
import random
import shlex
import statistics
import time
from typing import Any

from bench import report
from bench.common import (
    BenchError,
    default_results_dir,
    device_label,
    free_port,
    gpu_names,
    host_info,
    load_average,
    now_iso,
    package_version,
    relative,
    require_free_port,
    require_packages,
    script_main,
    write_json,
)
from bench.launch import Config, Tree, check_sglang_for_prism, configurations, sglang_command
from bench.server import ServerProcess, ServerSpec

MODEL = "Llama-3.1-8B-Instruct"
SGLANG_VERSION = "0.5.17"
# The public config.json of meta-llama/Llama-3.1-8B-Instruct (dimensions only; no weights are ever loaded).
LLAMA_31_8B_INSTRUCT: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
DRAFT_VOCAB = 32000  # as the public EAGLE-3 drafts for Llama 3.1 8B
AUX_LAYERS = (1, 15, 28)  # EAGLE-3's default for a 32-layer target: [1, L//2 - 1, L - 4]
DRAFT_MAX_POSITIONS = 2048  # as the public EAGLE-3 draft; input + output must fit
SIMULATE_METHOD = "match-expected"  # SGLang's default: each cycle accepts floor or ceil of the target, mean exact
SIMULATE_TOKEN_MODE = "fixed"

EPILOG = """\
examples:
  python bench/simulated.py --dry-run                # write the config folders, print the SGLang commands
  python bench/simulated.py --server-args="--attention-backend triton --mem-fraction-static 0.8"

Per (acceptance length, concurrency) it reports the time per verification cycle ((latency - TTFT) /
spec_verify_ct, mean over requests; per decode step without speculation), output tokens/s, the
PRISM/EAGLE-3 cycle-time ratio (the claim: 1.00) and both speedups over no speculation."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/simulated.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="write the config folders and print the commands, start nothing (works without a GPU)")
    p.add_argument("--acc-len", metavar="TAU", type=float, nargs="+", default=[4.5, 5.5, 6.3],
                   help="forced acceptance lengths, bonus token included (default: 4.5 5.5 6.3; at most "
                        "num-steps + 1)")
    p.add_argument("--concurrency", metavar="C", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64],
                   help="requests in flight (default: 1 2 4 8 16 32 64)")
    p.add_argument("--configs", metavar="NAME", nargs="+", choices=("none", "eagle3", "prism"),
                   default=["none", "eagle3", "prism"], help="(default: none eagle3 prism)")
    p.add_argument("--num-steps", metavar="N", type=int, default=6, help="draft steps per cycle (default: 6)")
    p.add_argument("--topk", metavar="K", type=int, default=4, help="branches per draft step (default: 4)")
    p.add_argument("--num-draft-tokens", metavar="N", type=int, default=None,
                   help="tokens verified per cycle (default: 16; num-steps + 1 with --topk 1)")
    p.add_argument("--input-len", metavar="N", type=int, default=256, help="random prompt ids (default: 256)")
    p.add_argument("--output-len", metavar="N", type=int, default=256, help="output tokens (default: 256)")
    p.add_argument("--requests-per-slot", metavar="K", type=int, default=4,
                   help="requests per run = max(8, K * concurrency) (default: 4)")
    p.add_argument("--warmup-requests", metavar="N", type=int, default=8,
                   help="unmeasured requests after each start, all at once (default: 8)")
    p.add_argument("--server-args", metavar="'ARGS'", default="",
                   help="more sglang.launch_server flags for every server, one string, given with '=' "
                        "(--server-args='--attention-backend triton')")
    p.add_argument("--sglang-python", metavar="PYTHON", default=sys.executable,
                   help="Python that runs sglang.launch_server (default: this one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default) = a free port for each server")
    p.add_argument("--startup-timeout", metavar="SECONDS", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="results folder (default: bench/results/<date>-<device>/; simulated.json there is replaced)")
    args = p.parse_args(argv)
    tree = _tree(args)
    if max(args.acc_len) > tree.num_steps + 1 or min(args.acc_len) < 1:
        p.error(f"--acc-len must lie in [1, num-steps + 1 = {tree.num_steps + 1}]")
    if args.input_len + args.output_len > DRAFT_MAX_POSITIONS:
        p.error(f"--input-len + --output-len must be <= {DRAFT_MAX_POSITIONS} (the drafts' max_position_embeddings)")
    if min(args.concurrency) < 1 or args.requests_per_slot < 1 or args.output_len < 2 or args.input_len < 1:
        p.error("--concurrency, --requests-per-slot, --input-len must be >= 1 and --output-len >= 2")
    return args


def _tree(args: argparse.Namespace) -> Tree:
    tree = Tree(args.num_steps, args.topk, args.num_draft_tokens or (args.num_steps + 1 if args.topk == 1 else 16))
    tree.check()
    return tree


# -- config folders -------------------------------------------------------------------------------------------
def draft_config(num_modules: int, table: tuple[int, ...]) -> dict[str, Any]:
    """An 8B-shaped draft config.json, written by PrismConfig so it follows our checkpoint rules (a one-module
    draft comes out as a standard LlamaForCausalLMEagle3 config)."""
    from prism_sglang.config import PrismConfig

    t = LLAMA_31_8B_INSTRUCT
    return PrismConfig(
        hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
        num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"], vocab_size=t["vocab_size"], draft_vocab_size=DRAFT_VOCAB,
        target_hidden_size=t["hidden_size"], rms_norm_eps=t["rms_norm_eps"],
        max_position_embeddings=DRAFT_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": t["rope_theta"]}, aux_layer_ids=AUX_LAYERS,
        num_modules=num_modules, step_modules=table, torch_dtype="bfloat16",
        bos_token_id=t["bos_token_id"], eos_token_id=t["eos_token_id"],
    ).to_dict()


def write_model_folders(out: Path) -> dict[str, Path]:
    """OUT/models/{target, eagle3, prism}/config.json (no weights: every server loads dummy weights)."""
    folders = {"target": out / "models" / "llama-3.1-8b-instruct", "eagle3": out / "models" / "eagle3-8b",
               "prism": out / "models" / "prism-8b"}
    contents = {"target": LLAMA_31_8B_INSTRUCT, "eagle3": draft_config(1, (0,)), "prism": draft_config(2, (0, 1))}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(contents[name], indent=2) + "\n")
    return folders


# -- commands -------------------------------------------------------------------------------------------------
def server_plan(args: argparse.Namespace, folders: dict[str, Path]) -> list[tuple[Config, float | None]]:
    """(configuration, forced acceptance length): the plain server once, each draft once per length."""
    plan: list[tuple[Config, float | None]] = []
    for config in configurations(folders["eagle3"], folders["prism"], args.configs):
        plan += [(config, None)] if not config.speculative else [(config, acc) for acc in args.acc_len]
    return plan


def simulate_env(acc: float | None) -> dict[str, str]:
    if acc is None:
        return {}
    return {"SGLANG_SIMULATE_ACC_LEN": f"{acc:g}", "SGLANG_SIMULATE_ACC_METHOD": SIMULATE_METHOD,
            "SGLANG_SIMULATE_ACC_TOKEN_MODE": SIMULATE_TOKEN_MODE}


def command_for(args: argparse.Namespace, folders: dict[str, Path], config: Config, port: int) -> list[str]:
    dummy = ["--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16"]
    if config.speculative:
        dummy += ["--speculative-draft-load-format", "dummy"]
    return sglang_command(args.sglang_python, str(folders["target"]), config, _tree(args), args.host, port,
                          max(args.concurrency), [*dummy, *shlex.split(args.server_args)])


def printable(env: dict[str, str], command: list[str]) -> str:
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *map(shlex.quote, command)])


def require_gpu_sglang() -> None:
    missing = []
    if not gpu_names():
        missing.append("no NVIDIA GPU (nvidia-smi finds none)")
    version = package_version("sglang")
    if version != SGLANG_VERSION:
        missing.append(f"found sglang {version}" if version else "sglang is not installed")
    if missing:
        raise BenchError(f"bench/simulated.py needs a CUDA GPU with SGLang {SGLANG_VERSION} "
                         f"({'; '.join(missing)}). On this machine, --dry-run writes the config folders and "
                         "prints the commands to run there.")


# -- measuring ------------------------------------------------------------------------------------------------
def random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Ids from the ordinary-token range of the Llama 3 vocabulary (special tokens start at 128000).
    return [[rng.randrange(1000, 100000) for _ in range(length)] for _ in range(count)]


def measure(args: argparse.Namespace, server: ServerProcess, config: Config, acc: float | None) -> list[dict]:
    from bench.native import closed_loop

    url = server.spec.url
    closed_loop(url, random_prompts(args.warmup_requests, args.input_len, args.seed + 1), 16,
                max(1, args.warmup_requests))
    runs = []
    for concurrency in args.concurrency:
        count = max(8, args.requests_per_slot * concurrency)
        assert server.memory is not None
        server.memory.reset_window()
        start_load = load_average()
        results, wall = closed_loop(url, random_prompts(count, args.input_len, args.seed), args.output_len,
                                    concurrency)
        runs.append(run_record(config, acc, concurrency, results, wall, server.memory.window_peak_mib,
                               (start_load, load_average())))
        r = runs[-1]
        print(f"  [{config.name} tau={acc if acc is not None else '-'}] c={concurrency}: "
              f"{fmt_ms(r['cycle_ms'])} ms/cycle, "
              f"{r['output_throughput']:.0f} tok/s, measured tau {fmt_ms(r['accept_length_measured'])}", flush=True)
    return runs


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_record(config: Config, acc: float | None, concurrency: int, results: list[Any], wall: float,
               memory_mib: float, loads: tuple[list[float], list[float]]) -> dict[str, Any]:
    ok = [r for r in results if r.ok and r.completion_tokens > 1]
    cycles = [r.verify_ct if config.speculative else r.completion_tokens - 1 for r in ok]
    per_cycle = [(r.latency - r.ttft) / c * 1000 for r, c in zip(ok, cycles, strict=True) if c]
    tokens = sum(r.completion_tokens for r in results if r.ok)
    spec_cycles = sum(c for c in cycles if c) if config.speculative else 0
    return {
        "config": config.name, "acceptance_length": acc, "concurrency": concurrency, "requests": len(results),
        "completed": sum(r.ok for r in results), "failed": sum(not r.ok for r in results),
        "errors": sorted({r.error for r in results if r.error})[:5], "duration_s": wall,
        "output_throughput": tokens / wall if wall else 0.0,
        "cycle_ms": statistics.fmean(per_cycle) if per_cycle else None,
        "ttft_ms": statistics.fmean(r.ttft for r in ok) * 1000 if ok else None,
        "accept_length_measured": sum(r.completion_tokens for r in ok) / spec_cycles if spec_cycles else None,
        "peak_memory_mib": memory_mib, "load_average": {"start": loads[0], "end": loads[1]},
    }


def compare(runs: list[dict[str, Any]], accs: list[float]) -> list[dict[str, Any]]:
    """Per (acceptance length, concurrency): each configuration's cycle time and throughput (the plain server's
    figures repeat under every length), the PRISM/EAGLE-3 cycle ratio, speedups over no speculation."""
    plain = {r["concurrency"]: r for r in runs if r["config"] == "none"}
    rows = []
    for acc in accs:
        for c in sorted({r["concurrency"] for r in runs}):
            cell = {r["config"]: r for r in runs if r["acceptance_length"] == acc and r["concurrency"] == c}
            if c in plain:
                cell["none"] = plain[c]
            cycle = {name: r["cycle_ms"] for name, r in cell.items() if r["cycle_ms"] is not None}
            throughput = {name: r["output_throughput"] for name, r in cell.items()}
            rows.append({"acceptance_length": acc, "concurrency": c, "cycle_ms": cycle,
                         "output_throughput": throughput,
                         "prism_vs_eagle3_cycle": _ratio(cycle, "prism", "eagle3"),
                         "speedup_eagle3_vs_none": _ratio(throughput, "eagle3", "none"),
                         "speedup_prism_vs_none": _ratio(throughput, "prism", "none")})
    return rows


def _ratio(values: dict[str, float], a: str, b: str) -> float | None:
    return values[a] / values[b] if a in values and values.get(b) else None


def build_results(args: argparse.Namespace, device: str, command: list[str], duration: float,
                  loads: tuple[list[float], list[float]], servers: list[dict[str, Any]],
                  runs: list[dict[str, Any]]) -> dict[str, Any]:
    """simulated.json's content (bench/schema/simulated.schema.json)."""
    return {
        "schema_version": 1, "kind": "simulated", "created": now_iso(), "device": device, "command": command,
        "host": host_info(device), "duration_s": duration, "load_average": {"start": loads[0], "end": loads[1]},
        "settings": {"model": MODEL, "tree": _tree(args).to_dict(), "acceptance_lengths": args.acc_len,
                     "simulate_acc_method": SIMULATE_METHOD, "simulate_acc_token_mode": SIMULATE_TOKEN_MODE,
                     "concurrencies": args.concurrency, "input_len": args.input_len, "output_len": args.output_len,
                     "requests_per_slot": args.requests_per_slot, "warmup_requests": args.warmup_requests,
                     "draft_vocab_size": DRAFT_VOCAB, "aux_layer_ids": list(AUX_LAYERS),
                     "prism_step_modules": [0, 1], "server_args": shlex.split(args.server_args),
                     "memory_kind": "gpu_memory_used_nvidia_smi", "seed": args.seed},
        "servers": servers, "runs": runs, "comparisons": compare(runs, args.acc_len),
    }


# -- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run:
        require_gpu_sglang()
        require_packages()
    device = device_label()
    out = (args.out or default_results_dir(device)).resolve()
    folders = write_model_folders(out / "simulated")
    plan = server_plan(args, folders)
    if args.dry_run:
        print(f"config folders: {', '.join(str(f) for f in folders.values())}")
        for config, acc in plan:
            print(printable(simulate_env(acc), command_for(args, folders, config, args.port or 30000)))
        return 0
    if "prism" in args.configs:
        check_sglang_for_prism(args.sglang_python)
    started, start_load = time.monotonic(), load_average()
    runs, servers = [], []
    for config, acc in plan:
        port = args.port or free_port(args.host)
        require_free_port(args.host, port)
        env = {**simulate_env(acc), "PYTHONUNBUFFERED": "1"}
        name = config.name if acc is None else f"{config.name}-acc{acc:g}"
        spec = ServerSpec(name, command_for(args, folders, config, port), args.host, port,
                          out / "logs" / f"simulated-server-{name}.log", env, args.startup_timeout)
        print(f"[{name}] starting: {printable(simulate_env(acc), spec.command)}", flush=True)
        with ServerProcess(spec) as server:
            runs += measure(args, server, config, acc)
            assert server.memory is not None
            servers.append({"name": name, "config": config.name, "acceptance_length": acc, "command": spec.command,
                            "env": simulate_env(acc), "startup_seconds": server.startup_seconds,
                            "peak_memory_mib": server.memory.overall_peak_mib, "log": relative(spec.log, out)})
    command = ["python", "bench/simulated.py", *(sys.argv[1:] if argv is None else argv)]
    results = build_results(args, device, command, round(time.monotonic() - started, 1),
                            (start_load, load_average()), servers, runs)
    path = write_json(out / "simulated.json", results, "simulated")
    print(f"wrote {path}, {report.write_report(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
