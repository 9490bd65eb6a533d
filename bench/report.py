"""report.md and PNG plots for a results folder: serving.json, simulated.json and the offline acceptance
evaluations (`prism-sglang eval --out` files, copied into offline-eval/), whichever are there.

Every number in the report is read from those files; ratios are computed from the runs of one invocation.
Regenerate with `python bench/report.py DIR [--eval-json FILE ...]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # see bench/serving.py

import argparse
import json
import shutil
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from bench.common import BenchError, script_main, validate

LABELS = {"none": "no speculation", "eagle3": "EAGLE-3", "prism": "PRISM"}
COLORS = {"none": "tab:gray", "eagle3": "tab:blue", "prism": "tab:red"}
RATIOS = (("speedup_eagle3_vs_none", "EAGLE-3 / none"), ("speedup_prism_vs_none", "PRISM / none"),
          ("prism_vs_eagle3", "PRISM / EAGLE-3"))
OFFLINE_DIR = "offline-eval"


# -- small formatting helpers ---------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio_fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def load(path: Path, schema_name: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    validate(data, schema_name)
    return data


# -- plots ----------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark hosts
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: list[Any], cols: list[Any], title: str) -> tuple[Any, Any]:
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.3 * len(rows)), squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_throughput(serving: dict[str, Any], out: Path) -> Path:
    s = serving["settings"]
    fig, axes = _grid(s["temperatures"], s["benches"], f"Output throughput vs concurrency ({serving['device']})")
    for i, t in enumerate(s["temperatures"]):
        for j, bench in enumerate(s["benches"]):
            ax = axes[i][j]
            for config in serving["configs"]:
                runs = sorted((r for r in serving["runs"] if (r["config"], r["bench"], r["temperature"]) ==
                               (config["name"], bench, t)), key=lambda r: r["concurrency"])
                ax.plot([r["concurrency"] for r in runs], [r["output_throughput"] for r in runs], marker="o",
                        color=COLORS[config["name"]], label=config["label"])
            _concurrency_axis(ax, f"{bench}, T={t:g}", "output tokens/s", s["concurrencies"])
    axes[0][0].legend()
    return _save(fig, out / "throughput.png")


def plot_speedup(serving: dict[str, Any], out: Path) -> Path:
    s = serving["settings"]
    fig, axes = _grid(s["temperatures"], s["benches"], f"Speedup vs concurrency ({serving['device']})")
    styles = {"speedup_eagle3_vs_none": ("tab:blue", "o"), "speedup_prism_vs_none": ("tab:red", "o"),
              "prism_vs_eagle3": ("tab:purple", "s")}
    for i, t in enumerate(s["temperatures"]):
        for j, bench in enumerate(s["benches"]):
            ax = axes[i][j]
            rows = sorted((c for c in serving["comparisons"] if (c["bench"], c["temperature"]) == (bench, t)),
                          key=lambda c: c["concurrency"])
            for key, label in RATIOS:
                points = [(c["concurrency"], c[key]) for c in rows if c[key] is not None]
                if points:
                    color, marker = styles[key]
                    ax.plot(*zip(*points, strict=True), marker=marker, color=color, label=label)
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
            _concurrency_axis(ax, f"{bench}, T={t:g}", "throughput ratio", s["concurrencies"])
    axes[0][0].legend()
    return _save(fig, out / "speedup.png")


def plot_positions(serving: dict[str, Any], out: Path) -> Path | None:
    rows = serving["acceptance_by_position"]
    if not rows:
        return None
    s = serving["settings"]
    fig, axes = _grid(s["temperatures"], s["benches"], "Conditional acceptance by draft position (probe)")
    for i, t in enumerate(s["temperatures"]):
        for j, bench in enumerate(s["benches"]):
            ax = axes[i][j]
            for row in rows:
                if (row["bench"], row["temperature"]) == (bench, t):
                    points = [(k + 1, p) for k, p in enumerate(row["conditional_acceptance"]) if p is not None]
                    if points:
                        ax.plot(*zip(*points, strict=True), marker="o", color=COLORS[row["config"]],
                                label=LABELS[row["config"]])
            ax.set_title(f"{bench}, T={t:g}")
            ax.set_xlabel("draft position")
            ax.set_ylabel("P(accept i | accepted i-1)")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    return _save(fig, out / "acceptance_by_position.png")


def plot_simulated(simulated: dict[str, Any], out: Path) -> Path:
    accs = simulated["settings"]["acceptance_lengths"]
    fig, axes = _grid([0], accs, f"Simulated {simulated['settings']['model']} cycle time ({simulated['device']})")
    for j, acc in enumerate(accs):
        ax = axes[0][j]
        for name in ("eagle3", "prism"):
            runs = sorted((r for r in simulated["runs"] if r["config"] == name and r["acceptance_length"] == acc),
                          key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in runs], [r["cycle_ms"] for r in runs], marker="o",
                    color=COLORS[name], label=LABELS[name])
        _concurrency_axis(ax, f"SGLANG_SIMULATE_ACC_LEN={acc:g}", "ms per verification cycle",
                          simulated["settings"]["concurrencies"])
    axes[0][0].legend()
    return _save(fig, out / "simulated_cycle_time.png")


def _concurrency_axis(ax: Any, title: str, ylabel: str, concurrencies: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(concurrencies), [str(c) for c in concurrencies])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)  # differences of a few percent should look like that
    ax.set_title(title)
    ax.set_xlabel("concurrency")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


# -- sections -------------------------------------------------------------------------------------------------
def serving_sections(serving: dict[str, Any], plots: dict[str, Path | None]) -> list[str]:
    return [_measured(serving), _throughput(serving, plots), _latency(serving), _positions(serving, plots),
            _memory(serving)]


def _measured(serving: dict[str, Any]) -> str:
    s, host = serving["settings"], serving["host"]
    tree = s["tree"]
    lines = ["## Serving benchmark: what was measured, and how", ""]
    if s["random_drafts"]:
        lines += ["> **Untrained (random) drafts.** Their acceptance is near zero, so these numbers show the *cost* "
                  "of speculation (draft steps and tree verification that rarely pay off), not its benefit. "
                  "They say nothing about how much faster PRISM or EAGLE-3 make a server.", ""]
    lines += [
        f"- Date: {serving['created']}; device: **{serving['device']}** ({s['backend_server']} server); "
        f"host {host['hostname']}, {host['cpu_count']} CPUs, {host['platform']}.",
        f"- Load average (1/5/15 min) at start {serving['load_average']['start']}, at end "
        f"{serving['load_average']['end']}; each run's own is in serving.json (`runs[].load_average`).",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in host['versions'].items() if v)}; git "
        f"{host['git']['commit'] or '?'}{' (uncommitted changes)' if host['git']['dirty'] else ''}.",
        f"- Command: `{' '.join(serving['command'])}` ({serving['duration_s']:.0f} s).",
        f"- Target: `{s['target']}`. Tree (num_steps/topk/num_draft_tokens): **{tree['num_steps']}/{tree['topk']}/"
        f"{tree['num_draft_tokens']}**, identical for EAGLE-3 and PRISM (checked against each server's "
        "/server_info).",
        f"- Load: sglang.benchmark.serving (`--backend sglang`, native /generate, streamed), `custom` dataset, "
        f"request rate inf with `--max-concurrency` C; {s['prompts_per_bench']} prompts per bench "
        f"({', '.join(s['benches'])}; MT-bench: {s['mt_bench_turns']}), chat template applied; requests per run "
        f"by concurrency {s['requests_by_concurrency']} (prompts repeat when more requests than prompts); "
        f"exactly {s['max_tokens']} output tokens per request (EOS ignored); temperatures {s['temperatures']} "
        f"(sent as `sampling_params` {s['sent_sampling_params']}, checked before the runs); "
        f"{s['warmup_requests']} warm-up request(s) per run, not measured.",
        "- Throughput, TTFT, TPOT, ITL and E2E latency are sglang.benchmark.serving's own figures for the run.",
        "- Order: " + ("interleaved: every configuration's server up at once, each bench/temperature/concurrency run "
                       "on all of them in turn, the order reversed every other time (drift of the machine's speed "
                       "hits all alike)." if s.get("interleaved") else
                       "one server at a time, each configuration's runs back to back.")
        + (f" Turns every {s['interleave_requests']} requests: each run measured in rounds of that many, every "
           "configuration running a round before the next starts; a run's figures are sglang.benchmark.serving's "
           "`calculate_metrics` over all its rounds' requests and summed round durations."
           if s.get("interleave_requests") else ""),
        "- Acceptance length per run (τ, bonus token included) from each measured request's "
        "`meta_info.spec_accept_length` (= completion tokens / verification cycles): τ_run = Σ output_len / "
        "Σ (output_len / spec_accept_length), all tokens over all cycles of the run. /server_info is not used "
        "(cumulative since start, warm-up included).",
        f"- Per-position acceptance: a separate probe, {s['probe']['prompts_per_bench']} prompts per bench, "
        f"{s['probe']['max_tokens']} tokens, non-streamed /generate, summing each request's "
        "`spec_correct_drafts_histogram` (cycles by number of accepted drafts a); position i = "
        "P(a ≥ i | a ≥ i − 1).",
        f"- Memory: {_memory_kind(s['memory_kind'])}.",
        "", "Configurations:", "",
        table(["config", "draft", "modules", "step table", "draft vocab", "server start (s)"],
              [[c["label"], f"`{c['draft']['path']}`" if c["draft"] else "–",
                str(c["draft"]["num_modules"]) if c["draft"] else "–",
                str(c["draft"]["step_modules"]) if c["draft"] else "–",
                str(c["draft"]["draft_vocab_size"]) if c["draft"] else "–", fmt(c["startup_seconds"], 1)]
               for c in serving["configs"]]),
        "", "Server commands:", "",
        *[f"- {c['label']}: `{' '.join(c['command'])}`" for c in serving["configs"]],
    ]
    return "\n".join(lines)


def _memory_kind(kind: str | None) -> str:
    return {"gpu_memory_used_nvidia_smi": "peak GPU memory in use on the device (nvidia-smi, all processes; "
                                          "SGLang reserves --mem-fraction-static up front)",
            "cpu_rss_server_process_tree": "peak resident memory (RSS) of the server's process tree (psutil), "
                                           "CPU"}.get(kind or "", "not measured")


def _throughput(serving: dict[str, Any], plots: dict[str, Path | None]) -> str:
    names = [c["name"] for c in serving["configs"]]
    header = ["bench", "C", *[f"{LABELS[n]} tok/s" for n in names], *[label for _, label in RATIOS],
              *[f"τ {LABELS[n]}" for n in names if n != "none"]]
    lines = ["## Output throughput and speedup", "",
             "Ratios are output-token throughputs of the same invocation (same prompts, settings and machine).", ""]
    for t in serving["settings"]["temperatures"]:
        rows = sorted((c for c in serving["comparisons"] if c["temperature"] == t),
                      key=lambda c: (c["bench"], c["concurrency"]))
        body = [[c["bench"], str(c["concurrency"]), *[fmt(c["output_throughput"].get(n), 1) for n in names],
                 *[ratio_fmt(c[key]) for key, _ in RATIOS], *[fmt(c["tau"].get(n)) for n in names if n != "none"]]
                for c in rows]
        body += _mean_rows(rows, names)
        lines += [f"### Temperature {t:g}", "", table(header, body), ""]
    lines += [f"![throughput]({plots['throughput'].name})" if plots.get("throughput") else "",
              f"![speedup]({plots['speedup'].name})" if plots.get("speedup") else ""]
    return "\n".join(lines)


def _mean_rows(rows: list[dict[str, Any]], names: list[str]) -> list[list[str]]:
    """Per concurrency, the mean over benches of each ratio (the paper's "mean speedup" convention)."""
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        same = [r for r in rows if r["concurrency"] == c]
        if len(same) < 2:
            continue
        means = []
        for key, _ in RATIOS:
            values = [r[key] for r in same if r[key] is not None]
            means.append(ratio_fmt(statistics.fmean(values)) if values else "–")
        out.append(["**mean**", str(c), *["" for _ in names], *means, *["" for n in names if n != "none"]])
    return out


def _latency(serving: dict[str, Any]) -> str:
    header = ["config", "bench", "T", "C", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99",
              "E2E p50", "failed"]
    order = {c["name"]: i for i, c in enumerate(serving["configs"])}
    runs = sorted(serving["runs"], key=lambda r: (r["temperature"], r["bench"], r["concurrency"], order[r["config"]]))
    body = [[LABELS[r["config"]], r["bench"], f"{r['temperature']:g}", str(r["concurrency"]),
             *[fmt(r["latency_ms"][m][p], 1) for m in ("ttft", "tpot", "itl") for p in ("median", "p99")],
             fmt(r["latency_ms"]["e2e_latency"]["median"], 0), str(r["failed"])] for r in runs]
    return "\n".join(["## Latency (ms)", "", table(header, body)])


def _positions(serving: dict[str, Any], plots: dict[str, Path | None]) -> str:
    rows = serving["acceptance_by_position"]
    if not rows:
        return "## Acceptance by position\n\nNo probe (no speculative configuration, or --probe-prompts 0)."
    depth = serving["settings"]["tree"]["num_steps"]
    header = ["config", "bench", "T", "prompts", "cycles", "τ (cycles)", "τ (meta_info)",
              *[f"pos {i}" for i in range(1, depth + 1)]]
    body = [[LABELS[r["config"]], r["bench"], f"{r['temperature']:g}", str(r["prompts"]), str(r["cycles"]),
             fmt(r["tau_cycles"]), fmt(r["tau_meta_info"]), *[fmt(p) for p in r["conditional_acceptance"]]]
            for r in sorted(rows, key=lambda r: (r["temperature"], r["bench"], r["config"]))]
    lines = ["## Acceptance by position (probe)", "",
             "τ (cycles) = Σ (a + 1) h[a] / Σ h[a] over verification cycles; τ (meta_info) = completion tokens / "
             "cycles, SGLang's per-request definition, which also counts the prefill's first token.", "",
             table(header, body), ""]
    if plots.get("positions"):
        lines.append(f"![acceptance by position]({plots['positions'].name})")
    return "\n".join(lines)


def _memory(serving: dict[str, Any]) -> str:
    body = [[c["label"], fmt(c["peak_memory_mib"], 0)] for c in serving["configs"]]
    return "\n".join(["## Peak memory", "", _memory_kind(serving["settings"]["memory_kind"]) + ".", "",
                      table(["config", "peak MiB (whole server lifetime)"], body)])


# -- offline acceptance (prism-sglang eval) -------------------------------------------------------------------
def collect_offline(out: Path, eval_json: Sequence[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Copy the given eval files into OUT/offline-eval/ (the report must stand alone), then read them all."""
    folder = out / OFFLINE_DIR
    for path in eval_json:
        if not path.is_file():
            raise BenchError(f"--eval-json {path}: no such file")
        folder.mkdir(parents=True, exist_ok=True)
        if path.resolve() != (folder / path.name).resolve():
            shutil.copy(path, folder / path.name)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    reports = []
    for path in files:
        data = json.loads(path.read_text())
        if not {"settings", "benches", "all"} <= data.keys():
            raise BenchError(f"{path}: not a `prism-sglang eval --out` report (needs settings, benches, all)")
        reports.append((path.name, data))
    return reports


def offline_section(reports: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["## Offline acceptance (`prism-sglang eval`, reference engine)", "",
             "Each file's settings and per-bench results as written by `prism-sglang eval --out`: τ is the mean "
             "over requests with its 95% interval, per-position acceptance is conditional as above, and the "
             "speedup is speculative vs target-only decoding of the reference engine in the same run.", "",
             offline_summary(reports), ""]
    for name, data in reports:
        s = data["settings"]
        lines += [f"### {name}", "",
                  f"draft `{s.get('draft')}` (modules {s.get('draft_modules')}, table {s.get('step_modules')}); "
                  f"target {s.get('target')}; tree {s.get('num_steps')}/{s.get('topk')}/{s.get('num_draft_tokens')}; "
                  f"T={s.get('temperature')}; max tokens {s.get('max_new_tokens')}; limit {s.get('limit')}; "
                  f"device {s.get('device')}; {s.get('date')}", ""]
        rows = []
        for bench, r in [*data["benches"].items(), ("all", data["all"])]:
            lo, hi = r["tau"]["ci95"]
            positions = " ".join(fmt(p) for p in r["per_position_acceptance"])
            rows.append([bench, str(r["requests"]), f"{fmt(r['tau']['mean'])} ({fmt(lo)}–{fmt(hi)})", positions,
                         ratio_fmt(r.get("speedup"))])
        lines += [table(["bench", "requests", "τ (95% CI)", "per-position acceptance", "speedup"], rows), ""]
    return "\n".join(lines)


def _draft_name(path: str) -> str:
    """runs/smollm2/prism-800/final -> prism-800 (a training run's name); other folders by their own name."""
    folder = Path(path)
    return folder.parent.name if folder.name == "final" else folder.name


def offline_summary(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per file: mean τ per bench side by side (the data-scaling and EAGLE-3 vs PRISM comparisons)."""
    benches = sorted({bench for _, data in reports for bench in data["benches"]})
    rows = []
    for name, data in reports:
        s = data["settings"]
        taus = [fmt(data["benches"][b]["tau"]["mean"]) if b in data["benches"] else "–" for b in benches]
        rows.append([name, f"`{_draft_name(str(s.get('draft')))}`", str(s.get("draft_modules")),
                     f"{s.get('num_steps')}/{s.get('topk')}/{s.get('num_draft_tokens')}", fmt(s.get("temperature"), 1),
                     *taus, fmt(data["all"]["tau"]["mean"]), ratio_fmt(data["all"].get("speedup"))])
    return table(["file", "draft", "modules", "tree", "T", *(f"τ {b}" for b in benches), "τ all", "speedup"], rows)


# -- simulated ------------------------------------------------------------------------------------------------
def simulated_section(simulated: dict[str, Any], plot: Path | None) -> str:
    s = simulated["settings"]
    tree = s["tree"]
    lines = ["## Simulated 8B: cycle cost of PRISM vs EAGLE-3", "",
             f"{s['model']} architecture with dummy weights (`--load-format dummy`, drafts "
             f"`--speculative-draft-load-format dummy`), acceptance forced by SGLANG_SIMULATE_ACC_LEN "
             f"({s['simulate_acc_method']}, token mode {s['simulate_acc_token_mode']}); tree {tree['num_steps']}/"
             f"{tree['topk']}/{tree['num_draft_tokens']}; {s['input_len']} random input ids, {s['output_len']} "
             f"output tokens; device {simulated['device']}, {simulated['created']}. Command: "
             f"`{' '.join(simulated['command'])}`.",
             "Cycle time = (request latency − TTFT) / verification cycles, mean over requests; without "
             "speculation, per decode step. PRISM's claim: its draft step costs what EAGLE-3's does, so the "
             "PRISM/EAGLE-3 cycle-time ratio should be ≈ 1.00.", ""]
    header = ["τ", "C", "none ms/step", "EAGLE-3 ms/cycle", "PRISM ms/cycle", "PRISM/EAGLE-3 cycle",
              "none tok/s", "EAGLE-3 tok/s", "PRISM tok/s", "EAGLE-3 / none", "PRISM / none"]
    body = [[fmt(c["acceptance_length"]), str(c["concurrency"]), fmt(c["cycle_ms"].get("none")),
             fmt(c["cycle_ms"].get("eagle3")), fmt(c["cycle_ms"].get("prism")), ratio_fmt(c["prism_vs_eagle3_cycle"]),
             fmt(c["output_throughput"].get("none"), 1), fmt(c["output_throughput"].get("eagle3"), 1),
             fmt(c["output_throughput"].get("prism"), 1), ratio_fmt(c["speedup_eagle3_vs_none"]),
             ratio_fmt(c["speedup_prism_vs_none"])]
            for c in simulated["comparisons"]]
    lines += [table(header, body), ""]
    if plot:
        lines.append(f"![simulated cycle time]({plot.name})")
    return "\n".join(lines)


# -- the report -----------------------------------------------------------------------------------------------
def lossless_section(checks: list[dict[str, Any]]) -> str:
    lines = ["## Lossless check: greedy outputs against no speculation", "",
             "bench/lossless.py: every prompt once through /generate at temperature 0 (EOS honoured) on the "
             "no-speculation server and on each speculative one, token ids compared; τ from each request's "
             "meta_info (output tokens / verification cycles).", ""]
    header = ["file", "device (server)", "tree", "server args", "config", "identical", "first divergences", "τ"]
    body = []
    for name, data in checks:
        s = data["settings"]
        tree = "/".join(str(s["tree"][k]) for k in ("num_steps", "topk", "num_draft_tokens"))
        for c in data["checks"]:
            firsts = ", ".join(str(m["first_divergence"]) for m in c["mismatches"]) or "–"
            body.append([name, f"{data['device']} ({s['backend_server']})", tree, " ".join(s["server_args"]) or "–",
                         c["config"],
                         f"{c['identical']}/{c['prompts']}", firsts, fmt(c["tau"])])
    lines.append(table(header, body))
    return "\n".join(lines)


def write_report(out: Path, eval_json: Sequence[Path] = ()) -> Path:
    """(Re)write OUT/report.md and its plots from the JSON files in OUT."""
    serving = load(out / "serving.json", "serving")
    simulated = load(out / "simulated.json", "simulated")
    offline = collect_offline(out, eval_json)
    lossless = [(path.name, load(path, "lossless")) for path in sorted(out.glob("lossless-*.json"))]
    if not (serving or simulated or offline or lossless):
        raise BenchError(f"{out}: nothing to report (no serving.json, simulated.json, lossless-*.json or "
                         f"{OFFLINE_DIR}/*.json)")
    device = (serving or simulated or (lossless[0][1] if lossless else {})).get("device", "?")
    sections = [f"# PRISM benchmark results: {device}\n\n"
                "Generated by bench/report.py from the JSON files in this folder; every figure is read from them."]
    if serving:
        plots = {"throughput": plot_throughput(serving, out), "speedup": plot_speedup(serving, out),
                 "positions": plot_positions(serving, out)}
        sections += serving_sections(serving, plots)
    if lossless:
        sections.append(lossless_section(lossless))
    if offline:
        sections.append(offline_section(offline))
    if simulated:
        plot = plot_simulated(simulated, out) if simulated["runs"] else None
        sections.append(simulated_section(simulated, plot))
    path = out / "report.md"
    path.write_text("\n\n".join(sections).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/report.py", description="(Re)write report.md and the plots of "
                                "a results folder from its serving.json, simulated.json, lossless-*.json and "
                                "offline-eval/*.json.")
    p.add_argument("folder", type=Path, help="results folder, e.g. bench/results/2026-01-01-cpu")
    p.add_argument("--eval-json", metavar="FILE", type=Path, nargs="+", default=[],
                   help="`prism-sglang eval --out` files to add (copied into FOLDER/offline-eval/)")
    args = p.parse_args(argv)
    print(f"wrote {write_report(args.folder, args.eval_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
