"""How much faster is the server, at a given load, with PRISM than with EAGLE-3 and than without speculation?

For each configuration (no speculation, EAGLE-3 draft, PRISM draft; identical tree settings) this starts a
server, drives sglang.benchmark.serving over MT-bench, GSM8K and HumanEval prompts at each concurrency and
temperature, probes per-position acceptance, stops the server, and writes serving.json (schema-checked),
report.md and plots to bench/results/<date>-<device>/. `python bench/serving.py --help` explains the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as `python bench/serving.py`: import the `bench` package from the repository root, and keep this
    # folder off sys.path (its module names would shadow top-level ones).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import report
from bench.acceptance import conditional_acceptance, merge_histograms, run_acceptance, tau_from_histogram
from bench.common import (
    RESULTS_ROOT,
    BenchError,
    add_torchvision_stub,
    default_results_dir,
    device_label,
    free_port,
    host_info,
    load_average,
    now_iso,
    relative,
    require_free_port,
    require_packages,
    resolve_target,
    script_main,
    slug,
    write_json,
)
from bench.launch import (
    BACKEND_SERVERS,
    SGLANG_BACKENDS,
    Config,
    Tree,
    check_draft_dir,
    check_sglang_for_prism,
    configurations,
    cpu_command,
    draft_summary,
    make_random_drafts,
    resolve_backend_server,
    sglang_command,
    sglang_cpu_command,
    sglang_cpu_env,
)
from bench.prompts import BENCHES, BenchPrompts, load_prompts, write_custom_dataset
from bench.server import ServerProcess, ServerSpec

CONFIG_NAMES = ("none", "eagle3", "prism")
CPU_ROUND_REQUESTS = 3  # the CPU server's default turns: every 3 requests (or every concurrency, if more)

EPILOG = """\
examples:
  # CPU server (prism-sglang serve), SmolLM2-135M-Instruct and untrained drafts: the cost of speculation only
  python bench/serving.py --backend-server cpu --random-drafts --num-prompts 4 --max-tokens 64 \\
      --concurrency 1 2 --temperature 0 1
  # GPU host with sglang 0.5.17 (patched for PRISM): the paper's 6/4/16 tree, concurrency 1..64
  python bench/serving.py --target /models/Llama-3.1-8B-Instruct --eagle3-draft D1 --prism-draft D2 \\
      --server-args="--dtype bfloat16 --mem-fraction-static 0.8" --eval-json runs/llama31/eval-*.json

Per run it records output tokens/s, requests/s, TTFT/TPOT/ITL/E2E percentiles (sglang.benchmark.serving's
own figures), the run's acceptance length from each request's meta_info (sum of output tokens / sum of
verification cycles, never /server_info) and peak memory; per configuration, bench and temperature, the
conditional acceptance at each draft position from a probe pass (spec_correct_drafts_histogram)."""


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say which servers to start and how (shared with bench/lossless.py)."""
    s = p.add_argument_group("servers")
    s.add_argument("--backend-server", choices=BACKEND_SERVERS, default="auto",
                   help="sglang: python -m sglang.launch_server; sglang-cpu: the same on SGLang's CPU engine with "
                        "the test-only CPU kernels of tests/sglang_cpu (float32; correctness, not speed); cpu: "
                        "prism-sglang serve (the reference engine); auto (default): sglang where CUDA is "
                        "available, else cpu")
    s.add_argument("--target", metavar="DIR", default=None,
                   help="target model folder (default: SmolLM2-135M-Instruct, prepared on first use)")
    s.add_argument("--eagle3-draft", metavar="DIR", type=Path, default=None,
                   help="EAGLE-3 draft (default with the default target: the shipped smollm2-eagle3)")
    s.add_argument("--prism-draft", metavar="DIR", type=Path, default=None,
                   help="PRISM draft (default with the default target: the shipped smollm2-prism)")
    s.add_argument("--random-drafts", action="store_true",
                   help="use untrained EAGLE-3 and PRISM drafts made for the target: acceptance near zero, so the "
                        "results show the overhead of speculation only")
    s.add_argument("--random-draft-vocab", metavar="N", type=int, default=8192,
                   help="draft vocabulary of --random-drafts (default: 8192, as the shipped SmolLM2 drafts)")
    s.add_argument("--configs", metavar="NAME", nargs="+", choices=CONFIG_NAMES, default=list(CONFIG_NAMES),
                   help="configurations to run, in this order (default: none eagle3 prism)")
    s.add_argument("--num-steps", metavar="N", type=int, default=6, help="draft steps per cycle (default: 6)")
    s.add_argument("--topk", metavar="K", type=int, default=4, help="branches per draft step (default: 4)")
    s.add_argument("--num-draft-tokens", metavar="N", type=int, default=None,
                   help="tokens verified per cycle, root included (default: 16; num-steps + 1 with --topk 1)")
    s.add_argument("--host", default="127.0.0.1", help="address the servers bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=0,
                   help="server port; 0 (default) = a free one for each server; servers that run at once "
                        "(--interleave) take PORT, PORT+1, ...")
    s.add_argument("--startup-timeout", metavar="SECONDS", type=float, default=900.0,
                   help="how long a server may take to answer /health (default: 900)")
    s.add_argument("--server-args", metavar="'ARGS'", default="",
                   help="more server flags for every configuration, one string, given with '=': sglang.launch_server's "
                        "(--server-args='--attention-backend triton --mem-fraction-static 0.7') or, with "
                        "--backend-server cpu, prism-sglang serve's (--server-args='--speculation always')")
    s.add_argument("--sglang-python", metavar="PYTHON", default=sys.executable,
                   help="Python that runs sglang.launch_server (default: this one)")
    s.add_argument("--server-threads", metavar="N", type=int, default=1,
                   help="torch threads of a cpu or sglang-cpu server (default: 1)")


def add_benches_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--benches", metavar="NAME", nargs="+", choices=BENCHES, default=list(BENCHES),
                       help="prompt sets (default: mt-bench gsm8k humaneval; MT-bench: first turns)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/serving.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(p)

    load = p.add_argument_group("load")
    add_benches_argument(load)
    load.add_argument("--num-prompts", metavar="N", type=int, default=80,
                      help="distinct prompts per bench, the first N of each set (default: 80)")
    load.add_argument("--requests-per-slot", metavar="K", type=int, default=2,
                      help="at concurrency c a run sends max(num-prompts, K * c) requests, repeating prompts, "
                           "so that every slot stays busy (default: 2)")
    load.add_argument("--max-tokens", metavar="N", type=int, default=256,
                      help="output tokens per request; EOS is ignored, so every request makes exactly N (default: "
                           "256; at least 4, sglang's custom dataset refuses fewer)")
    load.add_argument("--concurrency", metavar="C", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64],
                      help="requests in flight (default: 1 2 4 8 16 32 64)")
    load.add_argument("--temperature", metavar="T", type=float, nargs="+", default=[0.0, 1.0],
                      help="sampling temperatures (default: 0 1)")
    load.add_argument("--warmup-requests", metavar="N", type=int, default=1,
                      help="unmeasured requests before each run (default: 1)")
    load.add_argument("--seed", type=int, default=0, help="request order seed of sglang.benchmark.serving")
    load.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                      help="start every configuration's server at once and run each bench/temperature/concurrency "
                           "on all of them in turn (order reversed every other time), so that drift of the "
                           "machine's speed hits all alike (default: on for --backend-server cpu, whose servers "
                           "share the host's memory; off for SGLang, whose servers each claim the GPU's)")
    load.add_argument("--interleave-requests", metavar="N", type=int, default=None,
                      help="interleaved, take turns every N requests instead of every run: each run is measured "
                           "in rounds of N requests, every configuration running a round before the next one "
                           "starts (order reversed every other round), so that drift within minutes hits all "
                           "alike too; a run's figures are sglang.benchmark.serving's metrics over all its "
                           "rounds' requests and summed round durations (N >= every --concurrency; default: "
                           f"the whole run, except max({CPU_ROUND_REQUESTS}, every --concurrency) for "
                           "--backend-server cpu, whose host's speed drifts within minutes)")

    probe = p.add_argument_group("per-position acceptance probe")
    probe.add_argument("--probe-prompts", metavar="N", type=int, default=10,
                       help="prompts per bench sent once each, not streamed, to read spec_correct_drafts_histogram "
                            "(default: 10; 0 = no probe)")
    probe.add_argument("--probe-max-tokens", metavar="N", type=int, default=None,
                       help="output tokens per probe request (default: --max-tokens)")
    probe.add_argument("--probe-concurrency", metavar="C", type=int, default=8, help="(default: 8)")

    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", type=Path, default=None,
                     help="results folder (default: bench/results/<date>-<device>/; serving.json there is replaced)")
    out.add_argument("--eval-json", metavar="FILE", type=Path, nargs="+", default=[],
                     help="`prism-sglang eval --out` files to fold into report.md (offline acceptance)")
    args = p.parse_args(argv)
    _check_numbers(p, args)
    cpu = resolve_backend_server(args.backend_server) == "cpu"
    if args.interleave is None:
        args.interleave = args.interleave_requests is not None or cpu
    if args.interleave_requests is None and args.interleave and cpu:
        # the host's speed drifts within minutes (2-core EPYC: requests of one length 4.0 s, 5.0 s minutes later)
        args.interleave_requests = max(CPU_ROUND_REQUESTS, *args.concurrency)
    return args


def check_server_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    positive = {"--server-threads": args.server_threads, "--random-draft-vocab": args.random_draft_vocab}
    for flag, value in positive.items():
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.random_drafts and (args.eagle3_draft or args.prism_draft):
        p.error("--random-drafts replaces --eagle3-draft and --prism-draft: give one or the other")


def _check_numbers(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_server_arguments(p, args)
    positive = {"--num-prompts": args.num_prompts, "--requests-per-slot": args.requests_per_slot,
                "--probe-concurrency": args.probe_concurrency}
    for flag, value in positive.items():
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.max_tokens < 4:
        p.error(f"--max-tokens must be >= 4 (sglang's custom dataset refuses fewer), got {args.max_tokens}")
    if min(args.concurrency) < 1:
        p.error("--concurrency values must be >= 1")
    if min(args.temperature) < 0:
        p.error("--temperature values must be >= 0")
    if args.probe_prompts < 0 or args.warmup_requests < 0:
        p.error("--probe-prompts and --warmup-requests must be >= 0")
    if args.interleave_requests is not None:
        if args.interleave is False:
            p.error("--interleave-requests takes turns between servers running at once: drop --no-interleave")
        if args.interleave_requests < max(args.concurrency):
            p.error(f"--interleave-requests must be >= every --concurrency (a round keeps every slot busy), got "
                    f"{args.interleave_requests} < {max(args.concurrency)}")


# -- set-up ---------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything resolved before the first server starts (so that mistakes fail in seconds, not hours)."""

    backend: str
    device: str
    out: Path
    target: Path
    tree: Tree
    configs: list[Config]
    prompts: dict[str, BenchPrompts]
    datasets: dict[tuple[str, int], list[tuple[Path, int]]]  # (bench, requests) -> each round's file, requests
    extra_server_args: list[str]


def resolve_drafts(args: argparse.Namespace, target: Path) -> tuple[Path | None, Path | None]:
    """--random-drafts, or the given folders, or the shipped SmolLM2 drafts for the default target."""
    if args.random_drafts:
        # Git-ignored scratch: the drafts are reproducible from the seed, and too big to keep with results.
        folder = RESULTS_ROOT / "tmp" / "random-drafts" / f"{slug(target.name)}-v{args.random_draft_vocab}"
        return make_random_drafts(target, folder, args.random_draft_vocab)
    eagle3, prism = args.eagle3_draft, args.prism_draft
    if args.target is None:  # the shipped drafts are made for the default target only
        from prism_sglang.resources import BASELINE_DRAFT, DEFAULT_DRAFT

        eagle3 = eagle3 or shipped_draft(BASELINE_DRAFT)
        prism = prism or shipped_draft(DEFAULT_DRAFT)
    return eagle3, prism


def shipped_draft(name: str) -> Path | None:
    """A draft shipped in the package, or None (check_draft_dir then says what to do if it is needed)."""
    from prism_sglang.resources import shipped_draft_dir

    try:
        return shipped_draft_dir(name)
    except FileNotFoundError:
        return None


def requests_for(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.num_prompts, args.requests_per_slot * concurrency)


def rounds(requests: int, per_round: int | None) -> list[tuple[int, int]]:
    """(first request, requests) of each round of a run; one round when not measured in rounds."""
    size = per_round or requests
    return [(start, min(size, requests - start)) for start in range(0, requests, size)]


def prepare_servers(args: argparse.Namespace, config_names: list[str]) -> Setup:
    """Resolve and check the server flags (add_server_arguments) and load the prompts; no prompt files yet."""
    backend = resolve_backend_server(args.backend_server)
    device = device_label() if backend == "sglang" else "cpu"  # sglang-cpu runs on the CPU whatever the host has
    tree = Tree(args.num_steps, args.topk, args.num_draft_tokens or (args.num_steps + 1 if args.topk == 1 else 16))
    tree.check()
    target = resolve_target(args.target, log=lambda _: None)
    if not (target / "config.json").is_file():
        raise BenchError(f"--target {target}: no config.json there (a local HF model folder is needed)")
    eagle3, prism = resolve_drafts(args, target)
    configs = configurations(eagle3.resolve() if eagle3 else None, prism.resolve() if prism else None, config_names)
    for config in configs:
        if config.speculative:
            check_draft_dir(config)
    if args.port:
        require_free_port(args.host, args.port)
    if backend in SGLANG_BACKENDS and any(c.name == "prism" for c in configs):
        check_sglang_for_prism(args.sglang_python)
    out = (args.out or default_results_dir(device)).resolve()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    prompts = {bench: load_prompts(bench, args.num_prompts, tokenizer) for bench in args.benches}
    return Setup(backend, device, out, target, tree, configs, prompts, {}, shlex.split(args.server_args))


def prepare(args: argparse.Namespace) -> Setup:
    setup = prepare_servers(args, args.configs)
    for bench in args.benches:
        for count in sorted({requests_for(args, c) for c in args.concurrency}):
            parts = rounds(count, args.interleave_requests)
            names = ([f"{bench}-{count}"] if len(parts) == 1 else
                     [f"{bench}-{count}-round{k}" for k in range(len(parts))])
            setup.datasets[bench, count] = [
                (write_custom_dataset(setup.prompts[bench], size, setup.out / "prompts" / f"{name}.jsonl", start), size)
                for name, (start, size) in zip(names, parts, strict=True)]
    return setup


# -- one configuration ----------------------------------------------------------------------------------------
def server_spec(args: argparse.Namespace, setup: Setup, config: Config, max_running: int,
                port_offset: int = 0) -> ServerSpec:
    """`max_running`: the largest concurrency the server will see (it sizes running requests and queue);
    `port_offset`: added to a given --port (servers running at once)."""
    port = args.port + port_offset if args.port else free_port(args.host)
    require_free_port(args.host, port)
    env = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if setup.backend == "sglang":
        command = sglang_command(args.sglang_python, str(setup.target), config, setup.tree, args.host, port,
                                 max_running, setup.extra_server_args)
    elif setup.backend == "sglang-cpu":
        command = sglang_cpu_command(args.sglang_python, str(setup.target), config, setup.tree, args.host, port,
                                     max_running, setup.extra_server_args)
        env.update(sglang_cpu_env(args.server_threads))
    else:
        command = cpu_command(sys.executable, str(setup.target), config, setup.tree, args.host, port, max_running,
                              args.server_threads, setup.extra_server_args)
    return ServerSpec(config.name, command, args.host, port, setup.out / "logs" / f"server-{config.name}.log", env,
                      args.startup_timeout)


@contextlib.contextmanager
def start_server(args: argparse.Namespace, setup: Setup, config: Config, max_running: int,
                 port_offset: int = 0) -> Iterator[ServerProcess]:
    """The configuration's server, healthy, for the `with` block; stopped (by PID) when it ends, however."""
    spec = server_spec(args, setup, config, max_running, port_offset)
    print(f"[{config.name}] starting: {' '.join(spec.command)}", flush=True)
    with ServerProcess(spec) as server:
        print(f"[{config.name}] ready after {server.startup_seconds} s", flush=True)
        yield server


def config_record(setup: Setup, config: Config, server: ServerProcess, reported: dict[str, Any]) -> dict[str, Any]:
    """A configuration as results record it (serving.schema.json#/$defs/config)."""
    assert server.memory is not None
    return {"name": config.name, "label": config.label, "algorithm": config.algorithm,
            "draft": draft_summary(config.draft), "command": server.spec.command,
            "startup_seconds": server.startup_seconds, "server_reported": reported,
            "peak_memory_mib": server.memory.overall_peak_mib, "log": relative(server.spec.log, setup.out)}


REPORTED_KEYS = ("speculative_algorithm", "speculative_draft_model_path", "speculative_num_steps",
                 "speculative_eagle_topk", "speculative_num_draft_tokens", "max_running_requests")


def check_server(info: dict[str, Any], config: Config, tree: Tree) -> dict[str, Any]:
    """The server must serve what this configuration claims: the draft (or none) and the exact tree. SGLang can
    change tree settings while resolving its arguments; a changed tree would make the comparison unfair."""
    reported = {key: info.get(key) for key in REPORTED_KEYS}
    if not config.speculative:
        if reported["speculative_algorithm"]:
            raise BenchError(f"the 'none' server reports speculative_algorithm={reported['speculative_algorithm']}")
        return reported
    wanted = {"speculative_num_steps": tree.num_steps, "speculative_eagle_topk": tree.topk,
              "speculative_num_draft_tokens": tree.num_draft_tokens}
    wrong = {k: (reported[k], v) for k, v in wanted.items() if reported[k] is not None and reported[k] != v}
    if wrong:
        raise BenchError(f"the '{config.name}' server resolved different tree settings (reported, asked): {wrong}")
    path = reported["speculative_draft_model_path"]
    if path is not None and Path(path).resolve() != Path(str(config.draft)).resolve():
        raise BenchError(f"the '{config.name}' server serves draft {path}, not {config.draft}")
    return reported


def run_record(config: Config, bench: str, temperature: float, concurrency: int, requests: int,
               result: dict[str, Any], acceptance: dict[str, Any] | None, memory_mib: float,
               loads: tuple[list[float], list[float]], files: dict[str, str]) -> dict[str, Any]:
    from bench.loadgen import latency_summary

    failed = sum(1 for e in result.get("errors", []) if e)
    return {
        "config": config.name, "bench": bench, "temperature": temperature, "concurrency": concurrency,
        "requests": requests, "completed": result["completed"], "failed": failed,
        "duration_s": result["duration"], "output_throughput": result["output_throughput"],
        "request_throughput": result["request_throughput"], "total_output_tokens": result["total_output_tokens"],
        "latency_ms": latency_summary(result), "acceptance": acceptance, "peak_memory_mib": memory_mib,
        "load_average": {"start": loads[0], "end": loads[1]}, **files,
    }


@dataclass(frozen=True)
class Cell:
    """One measured run's load: a bench at one temperature and concurrency."""

    bench: str
    temperature: float
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.bench}-t{self.temperature:g}-c{self.concurrency}"


def cells(args: argparse.Namespace) -> list[Cell]:
    return [Cell(bench, temperature, concurrency) for temperature in args.temperature for bench in args.benches
            for concurrency in args.concurrency]


def cell_rounds(args: argparse.Namespace, setup: Setup, cell: Cell) -> list[tuple[Path, int]]:
    """The prompt file and request count of each round of the cell's runs (one round: the whole run)."""
    return setup.datasets[cell.bench, requests_for(args, cell.concurrency)]


def run_round(args: argparse.Namespace, setup: Setup, serving: Any, config: Config, server: ServerProcess,
              cell: Cell, index: int) -> tuple[dict[str, Any], list[Any]]:
    """Round `index` of a run (the whole run when it is not measured in rounds): the module's result and the
    measured requests' outputs. Warm-up requests go before the first round only."""
    from bench import loadgen

    datasets = cell_rounds(args, setup, cell)
    dataset, size = datasets[index]
    name = cell.name if len(datasets) == 1 else f"{cell.name}-round{index}"
    spec = loadgen.RunSpec(server.spec.url, dataset, size, args.max_tokens, cell.concurrency,
                           cell.temperature, str(setup.target), args.seed, args.warmup_requests if index == 0 else 0,
                           setup.out / "raw" / config.name / f"{name}.jsonl")
    log = setup.out / "logs" / config.name / f"{cell.name}.log"
    result, outputs = loadgen.run(serving, spec, log)
    if not result["completed"]:  # no figure of such a run means anything: stop and say why
        errors = [e for e in result.get("errors", []) if e]
        raise BenchError(f"[{config.name}] every request of {name} failed; first error: "
                         f"{errors[0][-1500:] if errors else '?'} (see {log})")
    if len(datasets) > 1:
        print(f"    [{config.name}] {name}: {result['output_throughput']:.1f} tok/s", flush=True)
    return result, outputs


def cell_record(args: argparse.Namespace, setup: Setup, serving: Any, config: Config, server: ServerProcess,
                cell: Cell, parts: list[tuple[dict[str, Any], list[Any]]],
                loads: tuple[list[float], list[float]]) -> dict[str, Any]:
    """A configuration's run of a cell from its rounds (one or more)."""
    from bench import loadgen

    result = loadgen.merge_rounds(serving, parts, str(setup.target))
    raw = setup.out / "raw" / config.name / f"{cell.name}.jsonl"
    if len(parts) > 1:  # the rounds' files are the module's; this one holds the merged metrics
        raw.write_text(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}) + "\n")
    outputs = [o for _, measured in parts for o in measured]
    acceptance = run_acceptance(loadgen.acceptance_records(outputs)) if config.speculative else None
    files = {"raw_output": relative(raw, setup.out),
             "log": relative(setup.out / "logs" / config.name / f"{cell.name}.log", setup.out)}
    assert server.memory is not None
    run = run_record(config, cell.bench, cell.temperature, cell.concurrency, len(outputs), result, acceptance,
                     server.memory.window_peak_mib, loads, files)
    _print_run(run)
    return run


def _print_run(run: dict[str, Any]) -> None:
    tau = f", tau {run['acceptance']['tau']:.2f}" if run["acceptance"] else ""
    failed = f", {run['failed']} FAILED" if run["failed"] else ""
    print(f"  [{run['config']}] {run['bench']} T={run['temperature']:g} c={run['concurrency']}: "
          f"{run['output_throughput']:.1f} tok/s{tau}, TTFT p50 {run['latency_ms']['ttft']['median']:.0f} ms, "
          f"{run['duration_s']:.0f} s{failed}", flush=True)


def probe_config(args: argparse.Namespace, setup: Setup, config: Config, url: str) -> list[dict[str, Any]]:
    """Per-position acceptance: each probe prompt once, not streamed, histograms summed per bench and T."""
    from bench.native import probe_meta_info

    if not config.speculative or args.probe_prompts == 0:
        return []
    max_tokens = args.probe_max_tokens or args.max_tokens
    rows = []
    for temperature in args.temperature:
        for bench in args.benches:
            texts = setup.prompts[bench].texts[:args.probe_prompts]
            metas = probe_meta_info(url, texts, temperature, max_tokens, args.probe_concurrency)
            histogram = merge_histograms(m.get("spec_correct_drafts_histogram") or [] for m in metas)
            tokens = sum(m.get("completion_tokens", 0) for m in metas)
            cycles = sum(m.get("spec_verify_ct") or 0 for m in metas)
            rows.append({
                "config": config.name, "bench": bench, "temperature": temperature, "prompts": len(texts),
                "max_tokens": max_tokens, "cycles": sum(histogram), "histogram": histogram,
                "conditional_acceptance": conditional_acceptance(histogram, setup.tree.num_steps),
                "tau_cycles": tau_from_histogram(histogram), "tau_meta_info": tokens / cycles if cycles else None,
            })
    return rows


# -- comparisons ----------------------------------------------------------------------------------------------
def compare_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Side by side per (bench, temperature, concurrency), from this one invocation's runs: throughput and
    acceptance of each configuration, speedups over no speculation and PRISM over EAGLE-3."""
    cells: dict[tuple[str, float, int], dict[str, dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["bench"], run["temperature"], run["concurrency"]), {})[run["config"]] = run
    rows = []
    for (bench, temperature, concurrency), by_config in cells.items():
        throughput = {name: r["output_throughput"] for name, r in by_config.items()}
        tau = {name: r["acceptance"]["tau"] for name, r in by_config.items() if r["acceptance"]}
        rows.append({"bench": bench, "temperature": temperature, "concurrency": concurrency,
                     "output_throughput": throughput, "tau": tau,
                     "speedup_eagle3_vs_none": _ratio(throughput, "eagle3", "none"),
                     "speedup_prism_vs_none": _ratio(throughput, "prism", "none"),
                     "prism_vs_eagle3": _ratio(throughput, "prism", "eagle3")})
    return rows


def _ratio(values: dict[str, float], numerator: str, denominator: str) -> float | None:
    if numerator in values and values.get(denominator):
        return values[numerator] / values[denominator]
    return None


# -- main -----------------------------------------------------------------------------------------------------
def measure_cell(args: argparse.Namespace, setup: Setup, serving: Any, pairs: list[tuple[Config, ServerProcess]],
                 cell: Cell, turn: int) -> list[dict[str, Any]]:
    """Every configuration's run of one cell, round by round, each round on all servers in turn; `turn` counts
    the rounds before this cell, and the order is reversed every other round. Runs are listed in the order of
    the cell's first round."""
    def order(k: int) -> list[tuple[Config, ServerProcess]]:
        return pairs if (turn + k) % 2 == 0 else pairs[::-1]

    parts: dict[str, list[tuple[dict[str, Any], list[Any]]]] = {config.name: [] for config, _ in pairs}
    for _, server in pairs:
        assert server.memory is not None
        server.memory.reset_window()
    start_load = load_average()
    for k in range(len(cell_rounds(args, setup, cell))):
        for config, server in order(k):
            parts[config.name].append(run_round(args, setup, serving, config, server, cell, k))
    loads = (start_load, load_average())
    return [cell_record(args, setup, serving, config, server, cell, parts[config.name], loads)
            for config, server in order(0)]


def measure(args: argparse.Namespace, setup: Setup,
            serving: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Every configuration's runs, acceptance probe and record: (configs, runs, positions, memory kind).

    Interleaved, all servers are up at once and each cell (or each round of --interleave-requests requests) is
    run by every configuration in turn, the order reversed every other time, so that a machine whose speed
    drifts over the invocation (a shared CPU host: 20% between runs minutes apart) slows every configuration
    alike; otherwise one server runs at a time."""
    configs, runs, positions, memory_kind = [], [], [], None
    groups = [setup.configs] if args.interleave else [[config] for config in setup.configs]
    for group in groups:
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(start_server(args, setup, config, max(args.concurrency), i))
                       for i, config in enumerate(group)]
            reported = [check_server(server.server_info(), config, setup.tree)
                        for config, server in zip(group, servers, strict=True)]
            pairs = list(zip(group, servers, strict=True))
            turn = 0
            for cell in cells(args):
                runs += measure_cell(args, setup, serving, pairs, cell, turn)
                turn += len(cell_rounds(args, setup, cell))
            for (config, server), server_reported in zip(pairs, reported, strict=True):
                positions += probe_config(args, setup, config, server.spec.url)
                assert server.memory is not None
                memory_kind = server.memory.kind
                configs.append(config_record(setup, config, server, server_reported))
    return configs, runs, positions, memory_kind


def settings_record(args: argparse.Namespace, setup: Setup, sent: dict[str, Any],
                    memory_kind: str | None) -> dict[str, Any]:
    return {
        "backend_server": setup.backend, "target": str(setup.target), "tree": setup.tree.to_dict(),
        "benches": args.benches, "prompts_per_bench": args.num_prompts,
        "prompt_ids": {b: p.ids for b, p in setup.prompts.items()},
        "mt_bench_turns": "first turn only (the second needs the model's own first answer)",
        "requests_per_slot": args.requests_per_slot,
        "requests_by_concurrency": {str(c): requests_for(args, c) for c in args.concurrency},
        "max_tokens": args.max_tokens, "ignore_eos": True, "concurrencies": args.concurrency,
        "temperatures": args.temperature, "request_rate": "inf", "warmup_requests": args.warmup_requests,
        "seed": args.seed, "sent_sampling_params": sent, "server_args": setup.extra_server_args,
        "server_threads": args.server_threads if setup.backend in ("cpu", "sglang-cpu") else None,
        "random_drafts": args.random_drafts, "memory_kind": memory_kind, "interleaved": args.interleave,
        "interleave_requests": args.interleave_requests,
        "probe": {"prompts_per_bench": args.probe_prompts, "max_tokens": args.probe_max_tokens or args.max_tokens,
                  "concurrency": args.probe_concurrency},
    }


def main(argv: list[str] | None = None) -> int:
    add_torchvision_stub()  # before anything imports transformers (sglang.benchmark.serving needs both)
    args = parse_args(argv)
    require_packages()
    started, start_load = time.monotonic(), load_average()
    setup = prepare(args)
    from bench import loadgen

    serving = loadgen.import_serving()
    sent = {}
    for temperature in args.temperature:  # fail now, not after an hour, if the request function drops a setting
        probe_spec = loadgen.RunSpec("http://unused", Path("unused"), 1, args.max_tokens, 1, temperature,
                                     str(setup.target), args.seed, 0, Path("unused"))
        sent[f"{temperature:g}"] = loadgen.sent_sampling_params(serving, probe_spec)
    print(f"benchmarking {[c.name for c in setup.configs]} on {setup.device} ({setup.backend} server), "
          f"tree {setup.tree.describe()}, results in {setup.out}", flush=True)
    configs, runs, positions, memory_kind = measure(args, setup, serving)
    results = {
        "schema_version": 1, "kind": "serving", "created": now_iso(), "device": setup.device,
        "command": ["python", "bench/serving.py", *(sys.argv[1:] if argv is None else argv)],
        "host": host_info(setup.device), "duration_s": round(time.monotonic() - started, 1),
        "load_average": {"start": start_load, "end": load_average()},
        "settings": settings_record(args, setup, sent, memory_kind), "configs": configs, "runs": runs,
        "acceptance_by_position": positions, "comparisons": compare_runs(runs),
    }
    path = write_json(setup.out / "serving.json", results, "serving")
    written = report.write_report(setup.out, eval_json=args.eval_json)
    print(f"wrote {path}, {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
