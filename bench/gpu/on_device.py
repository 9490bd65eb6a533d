"""The GPU kit, host side (bench/gpu/README.md): receive the parts, set up SGLang, then the measurements in
priority order, each stage time-boxed, each leaving its results, its log and a one-line verdict in $OUT.

Runs with the host's own Python and the standard library alone until the stage `setup` has made the venv; the
measurements run in that venv. `--dry-run` (any machine, no CUDA) builds every stage's commands, parses the bench
scripts' arguments, prints the schedule against the budget and runs each verdict on sample results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from bench.gpu.kit import sha256  # the standard library only, like this file

REPO = Path(__file__).resolve().parents[2]
TRITON = "--attention-backend triton --sampling-backend pytorch --mem-fraction-static 0.5"
FLASHINFER = "--attention-backend flashinfer --sampling-backend pytorch --mem-fraction-static 0.5"
CHAIN, TREE = ("5", "1", "6"), ("6", "4", "16")
LOSSLESS_PROMPTS = 17  # per bench: 51 prompts over MT-bench, GSM8K and HumanEval
RETURN_LIMIT = 15 << 20  # a file of $OUT comes back only under 16 MiB
GRACE_S = 30  # after a time box: SIGINT (the bench scripts stop their servers), then SIGKILL


@dataclass
class Context:
    store: Path  # .gpu_store: survives between runs while the host stays up
    carry: Path  # where the runs put the parts (.gpu_carry)
    out: Path  # $OUT: what comes back (at most 8 files)
    dry_run: bool
    results: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.results = self.store / "results" / f"{dt.date.today().isoformat()}-{device_slug(self.dry_run)}"
        self.log = self.out / "kit.log"

    @property
    def venv(self) -> Path:
        return self.store / "venv"

    @property
    def python(self) -> str:
        return sys.executable if self.dry_run else str(self.venv / "bin" / "python")

    @property
    def target(self) -> Path:
        return self.store / "smollm2-135m-instruct"

    def draft(self, name: str) -> Path:
        return self.store / "bundle" / "drafts" / name


def device_slug(dry_run: bool) -> str:
    if dry_run:
        return "dry-run"
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "gpu"
    return "h200" if "H200" in name else "h100" if "H100" in name else "gpu"


# -- parts -----------------------------------------------------------------------------------------------------
def expected_sums(carry: Path, store: Path) -> dict[str, str]:
    for folder in (carry, store):
        if (folder / "SHA256SUMS").is_file():
            lines = (folder / "SHA256SUMS").read_text().splitlines()
            return {name: digest for digest, name in (line.split() for line in lines if line.strip())}
    raise KitFailure("no SHA256SUMS in .gpu_carry or .gpu_store: the first run carries it with part_00")


def receive(ctx: Context) -> tuple[list[str], list[str]]:
    """Move the carried parts into the store (they survive there while the host is up), check them; returns the
    parts that are good and those missing or damaged."""
    ctx.store.mkdir(parents=True, exist_ok=True)
    sums = expected_sums(ctx.carry, ctx.store)
    if (ctx.carry / "SHA256SUMS").is_file():
        shutil.copy2(ctx.carry / "SHA256SUMS", ctx.store / "SHA256SUMS")
    good, bad = [], []
    for name, digest in sums.items():
        if name == "bundle.tar":
            continue
        if (ctx.carry / name).is_file():
            shutil.move(ctx.carry / name, ctx.store / name)
        part = ctx.store / name
        (good if part.is_file() and sha256(part) == digest else bad).append(name)
    return good, bad


class KitFailure(RuntimeError):
    """A stage cannot go on; the message is its verdict."""


# -- stage steps -----------------------------------------------------------------------------------------------
def unpack(ctx: Context) -> str:
    """The parts -> .gpu_store/bundle; the site tree -> the venv's site-packages; our package registered there."""
    good, bad = receive(ctx)
    if bad:
        raise KitFailure(f"parts missing or damaged: {', '.join(bad)} (have {', '.join(good) or 'none'}): carry "
                         "them again (README: the runs)")
    sums = expected_sums(ctx.carry, ctx.store)
    done = ctx.store / "bundle" / ".unpacked"
    if done.is_file() and done.read_text() == sums["bundle.tar"]:
        return "bundle already unpacked"
    bundle = ctx.store / "bundle.tar"
    with open(bundle, "wb") as f:
        for name in sorted(n for n in sums if n.startswith("part_")):
            with open(ctx.store / name, "rb") as part:
                shutil.copyfileobj(part, f, 1 << 20)
    if sha256(bundle) != sums["bundle.tar"]:
        raise KitFailure("the parts do not reassemble to the bundle's sha256: build and carry them again")
    shutil.rmtree(ctx.store / "bundle", ignore_errors=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(ctx.store / "bundle", filter="data")
    bundle.unlink()
    make_venv(ctx)
    done.write_text(sums["bundle.tar"])
    return f"unpacked {len(sums) - 1} parts"


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def make_venv(ctx: Context) -> None:
    """A venv over the host's Python and its packages (torch, triton: never replaced), with the kit's packages in
    its site-packages, ahead of the host's, and this checkout registered as prism-sglang (its plugin entry point).
    The host's python3 is itself a venv (/opt/torch/.venv), whose packages a venv made from it does not see
    (--system-site-packages means the base interpreter's), so a .pth adds the host's site directories after ours."""
    import site as host_site

    shutil.rmtree(ctx.venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(ctx.venv)], check=True)
    site = site_packages(ctx.venv)
    host_dirs = [d for d in host_site.getsitepackages() if Path(d).is_dir()]
    (site / "zz_host_site_packages.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in host_dirs) + "\n")
    bundle = ctx.store / "bundle"
    with lzma.open(bundle / "site.tar.xz") as xz, tarfile.open(fileobj=xz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("site/")]
        for m in members:
            m.name = m.name[len("site/"):]
        tar.extractall(site, members=members, filter="data")
    for entry in sorted((bundle / "raw").iterdir()) if (bundle / "raw").is_dir() else []:
        shutil.copytree(entry, site / entry.name, dirs_exist_ok=True)
    if (bundle / "drafts.tar.xz").is_file():
        with lzma.open(bundle / "drafts.tar.xz") as xz, tarfile.open(fileobj=xz) as tar:
            tar.extractall(bundle, filter="data")
    register_checkout(site)


def register_checkout(site: Path) -> None:
    """What `pip install -e .` leaves behind, without a build backend: this checkout's src/ and root on sys.path
    (prism_sglang, bench) and a dist-info with the sglang plugin entry point."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (site / "prism_sglang_checkout.pth").write_text(f"{REPO / 'src'}\n{REPO}\n")
    info = site / f"prism_sglang-{project['version']}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project.get("entry-points", {}) | {"console_scripts": project.get("scripts", {})}
    sections = (f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
                for group, entries in groups.items())
    (info / "entry_points.txt").write_text("\n".join(sections))


SELF_CHECK = ("import json, torch, transformers, sglang, sgl_kernel, flashinfer, xgrammar; "
              "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
              "'gpu': torch.cuda.get_device_name(0), 'transformers': transformers.__version__, "
              "'sglang': sglang.__version__, 'flashinfer': flashinfer.__version__}))")


def setup_steps(ctx: Context) -> list[Step]:
    py, cli = ctx.python, [ctx.python, "-m", "prism_sglang.cli"]
    return [Step("unpack", unpack),
            Step("prepare-model", [*cli, "prepare-model", "smollm2", "--out", str(ctx.target)]),
            Step("patch-sglang", [*cli, "patch-sglang"]),
            Step("patch-sglang --check", [*cli, "patch-sglang", "--check"]),
            Step("self-check", [py, "-c", SELF_CHECK]),
            Step("nvidia-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"])]


def drafts_args(ctx: Context) -> list[str]:
    return ["--eagle3-draft", str(ctx.draft("smollm2-eagle3")), "--prism-draft", str(ctx.draft("smollm2-prism"))]


def tree_args(tree: tuple[str, str, str]) -> list[str]:
    return ["--num-steps", tree[0], "--topk", tree[1], "--num-draft-tokens", tree[2]]


def lossless_steps(ctx: Context, backend: str, server_args: str) -> list[Step]:
    """Both trees in one invocation: one no-speculation server serves as the reference for both."""
    return [Step(f"lossless {backend}",
                 [ctx.python, "-m", "bench.lossless", "--backend-server", "sglang", "--target", str(ctx.target),
                  *drafts_args(ctx), *tree_args(CHAIN), "--also-tree", "/".join(TREE), "--num-prompts",
                  str(LOSSLESS_PROMPTS), "--max-tokens", "64", "--concurrency", "16", f"--server-args={server_args}",
                  "--out", str(ctx.results), "--tag", backend])]


def serving_steps(ctx: Context) -> list[Step]:
    return [Step("serving", [ctx.python, "-m", "bench.serving", "--backend-server", "sglang", "--target",
                             str(ctx.target), *drafts_args(ctx), *tree_args(TREE), "--concurrency", "1", "4", "16",
                             "32", "--temperature", "0", "--num-prompts", "8", "--requests-per-slot", "2",
                             "--max-tokens", "128", "--probe-prompts", "4", f"--server-args={TRITON}",
                             "--out", str(ctx.results)])]


def simulated_steps(ctx: Context) -> list[Step]:
    return [Step("simulated", [ctx.python, "-m", "bench.simulated", "--acc-len", "4.5", "--concurrency", "1", "8",
                               "32", "--requests-per-slot", "2", f"--server-args={TRITON}", "--out",
                               str(ctx.results)])]


def train_steps(ctx: Context) -> list[Step]:
    """2.5 minutes of GPU training of a PRISM draft on ShareGPT's own answers (one epoch at most), then its tau
    (T = 0, chain 5/1; `eval` runs the reference engine on the host's CPU cores)."""
    data, out = ctx.store / "train.jsonl", ctx.store / "train" / "prism"
    cli = [ctx.python, "-m", "prism_sglang.cli"]
    return [Step("train data", lambda c: unxz(c.store / "bundle" / "data" / "train.jsonl.xz", data)),
            Step("train", [*cli, "train", "--data", str(data), "--out", str(out), "--target", str(ctx.target),
                           "--modules", "2", "--table", "0,1", "--draft-vocab-size", "8192", "--ttt-steps", "6",
                           "--batch-size", "16", "--lr", "5e-4", "--max-length", "1024", "--epochs", "1",
                           "--max-minutes", "2.5", "--device", "cuda", "--precision", "bf16"]),
            Step("eval", [*cli, "eval", "--target", str(ctx.target), "--draft", str(out / "final"), "--limit", "5",
                          "--num-steps", "5", "--topk", "1", "--max-new-tokens", "96", "--no-baseline",
                          "--out", str(ctx.results / "train-eval.json")])]


def unxz(src: Path, dst: Path) -> str:
    if not src.is_file():
        raise KitFailure(f"{src} is not in the bundle (built with --no-train-data?)")
    with lzma.open(src) as i, open(dst, "wb") as o:
        shutil.copyfileobj(i, o, 1 << 20)
    return f"{dst} ({dst.stat().st_size / 2**20:.1f} MiB)"


# -- verdicts (run in the venv: they validate with bench.common's schemas) ---------------------------------------
def lossless_summary(path: Path) -> tuple[bool, str]:
    from bench.common import validate

    data = json.loads(path.read_text())
    validate(data, "lossless")
    checks = ", ".join(f"{c['config']} {c['identical']}/{c['prompts']} identical"
                       + (f" tau {c['tau']:.2f}" if c["tau"] else "") for c in data["checks"])
    start = max((c["startup_seconds"] or 0) for c in data["configs"])
    return data["lossless"], f"{checks} (slowest start {start:.0f} s)"


def serving_summary(path: Path) -> tuple[bool, str]:
    from bench.common import validate

    data = json.loads(path.read_text())
    validate(data, "serving")
    cells = []
    for c in sorted({r["concurrency"] for r in data["comparisons"]}):
        rows = [r for r in data["comparisons"] if r["concurrency"] == c and r["temperature"] == 0]
        mean = {k: _mean([r[k] for r in rows if r.get(k) is not None])
                for k in ("speedup_prism_vs_none", "prism_vs_eagle3")}
        cells.append(f"c={c} PRISM/none {_x(mean['speedup_prism_vs_none'])} "
                     f"PRISM/EAGLE-3 {_x(mean['prism_vs_eagle3'])}")
    return True, "; ".join(cells) + " (mean over benches, T=0)"


def simulated_summary(path: Path) -> tuple[bool, str]:
    from bench.common import validate

    data = json.loads(path.read_text())
    validate(data, "simulated")
    return True, "; ".join(f"tau {c['acceptance_length']} c={c['concurrency']} PRISM/EAGLE-3 cycle "
                           f"{_x(c['prism_vs_eagle3_cycle'])}" for c in data["comparisons"])


def eval_summary(path: Path) -> tuple[bool, str]:
    pooled = json.loads(path.read_text())["all"]
    lo, hi = pooled["tau"]["ci95"]
    return True, f"tau {pooled['tau']['mean']:.2f} ({lo:.2f}-{hi:.2f}) over {pooled['requests']} prompts"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def verdict(summaries: list[tuple[str, Path, Callable[[Path], tuple[bool, str]]]]) -> str:
    """ok when every expected results file exists and passes; each file's summary either way."""
    ok, parts = True, []
    for label, path, summary in summaries:
        if not path.is_file():
            ok = False
            parts.append(f"{label}: no {path.name}")
            continue
        good, text = summary(path)
        ok = ok and good
        parts.append(f"{label}: {text}")
    return ("ok: " if ok else "failed: ") + "; ".join(parts)


def lossless_files(results: Path, backend: str) -> list[tuple[str, Path, Callable[[Path], tuple[bool, str]]]]:
    return [("/".join(tree), results / f"lossless-{backend}-{'-'.join(tree)}.json", lossless_summary)
            for tree in (CHAIN, TREE)]


VERDICTS: dict[str, Callable[[Path], list[tuple[str, Path, Callable[[Path], tuple[bool, str]]]]]] = {
    "lossless-triton": lambda r: lossless_files(r, "triton"),
    "lossless-flashinfer": lambda r: lossless_files(r, "flashinfer"),
    "serving": lambda r: [("6/4/16", r / "serving.json", serving_summary)],
    "simulated": lambda r: [("6/4/16", r / "simulated.json", simulated_summary)],
    "train": lambda r: [("PRISM trained here, chain 5/1", r / "train-eval.json", eval_summary)],
}
# Results committed from CPU runs, on which --dry-run runs each kind's summary.
SAMPLES = {
    lossless_summary: REPO / "bench" / "results" / "2026-11-23-cpu" / "lossless-cpu-6-4-16.json",
    serving_summary: REPO / "bench" / "results" / "2026-12-04-cpu" / "serving.json",
}


# -- stages ----------------------------------------------------------------------------------------------------
@dataclass
class Step:
    label: str
    action: list[str] | Callable[[Context], str]


@dataclass(frozen=True)
class Stage:
    name: str
    box_s: int  # most seconds it may take
    min_s: int  # not started with less than this left
    steps: Callable[[Context], list[Step]]
    why: str


STAGES = (
    Stage("setup", 120, 60, setup_steps, "unpack, venv, SmolLM2 converted, sglang patched and checked"),
    Stage("lossless-triton", 180, 90, lambda c: lossless_steps(c, "triton", TRITON),
          "PRISM and EAGLE-3 vs no speculation, CUDA graphs, Triton attention, chain 5/1 and tree 6/4/16"),
    Stage("lossless-flashinfer", 150, 90, lambda c: lossless_steps(c, "flashinfer", FLASHINFER),
          "the same with FlashInfer attention (its JIT shows in the slowest start)"),
    Stage("serving", 150, 100, serving_steps, "none / EAGLE-3 / PRISM, c = 1, 4, 16, 32, T = 0"),
    Stage("simulated", 150, 120, simulated_steps, "Llama-3.1-8B shapes, dummy weights, forced tau 4.5"),
    Stage("train", 240, 150, train_steps, "GPU training of a PRISM draft on ShareGPT answers, then its tau"),
)


class Reporter:
    """$OUT/verdicts.txt (one line per stage), $OUT/kit.log (every command's output), $OUT/results.tar.gz (the
    results folder), rewritten after each stage so that a run cut at its limit still brings back what it did."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.lines = ctx, []
        ctx.out.mkdir(parents=True, exist_ok=True)

    def say(self, text: str) -> None:
        print(text, flush=True)
        with open(self.ctx.log, "a") as log:
            log.write(text + "\n")

    def verdict(self, stage: str, text: str, seconds: float) -> None:
        line = f"{stage}: {text} [{seconds:.0f} s]"
        self.lines.append(line)
        (self.ctx.out / "verdicts.txt").write_text("\n".join(self.lines) + "\n")
        self.say(f"== verdict {line}")
        if self.ctx.results.is_dir():
            self.pack_results()

    def pack_results(self) -> None:
        """results.tar.gz; a file over 16 MiB would not come back, so then without the servers' logs and the
        raw per-request files (the JSON and report keep every figure)."""
        path = self.ctx.out / "results.tar.gz"
        for bulky in ((), ("logs", "raw")):
            with tarfile.open(path, "w:gz") as tar:
                tar.add(self.ctx.results, arcname=self.ctx.results.name,
                        filter=lambda m, bulky=bulky: None if set(Path(m.name).parts[1:2]) & set(bulky) else m)
            if path.stat().st_size <= RETURN_LIMIT:
                if bulky:
                    self.say(f"results.tar.gz packed without {', '.join(bulky)}/ (over {RETURN_LIMIT >> 20} MiB)")
                return
        self.say(f"results.tar.gz is over {RETURN_LIMIT >> 20} MiB even so: it will not come back")


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A shell starts background jobs (`nohup ... &`) with SIGINT
    ignored, children inherit that, and Python then installs no KeyboardInterrupt handler: the time box's SIGINT
    would do nothing and only the SIGKILL after GRACE_S would stop the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_command(argv: list[str], timeout: float, log: Path) -> int:
    """The command in its own process group, its output appended to `log`; past `timeout`, SIGINT (the bench
    scripts stop their servers on it), then SIGKILL after GRACE_S. Returns the exit status (124: timed out)."""
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        process = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
                                   preexec_fn=_default_sigint)
        try:
            return process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return 124


def run_stage(ctx: Context, stage: Stage, deadline: float, reporter: Reporter) -> bool:
    started = time.monotonic()
    left = deadline - started
    if left < stage.min_s:
        reporter.verdict(stage.name, f"skipped: {left:.0f} s left of the budget, it needs {stage.min_s} s", 0)
        return False
    end = started + min(stage.box_s, left)
    reporter.say(f"== stage {stage.name} ({stage.why}); time box {end - started:.0f} s")
    ctx.results.mkdir(parents=True, exist_ok=True)
    try:
        for step in stage.steps(ctx):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise KitFailure(f"time box of {stage.box_s} s spent before '{step.label}'")
            if callable(step.action):
                reporter.say(f"-- {step.label}: {step.action(ctx)}")
                continue
            rc = run_command(step.action, remaining, ctx.log)
            if rc != 0:
                raise KitFailure(f"'{step.label}' " + ("ran past its time box" if rc == 124 else f"exited {rc}")
                                 + " (kit.log)")
        text = verdict_in_venv(ctx, stage.name) if stage.name in VERDICTS else "ok"
    except KitFailure as e:
        text = f"failed: {e}"
        if stage.name in VERDICTS:  # a cut stage may still have written some results
            text += f"; {verdict_in_venv(ctx, stage.name)}"
    reporter.verdict(stage.name, text, time.monotonic() - started)
    return text.startswith("ok")


def verdict_in_venv(ctx: Context, stage: str) -> str:
    """The venv's Python has jsonschema (bench.common.validate); the host's may not."""
    result = subprocess.run([ctx.python, "-m", "bench.gpu.on_device", "--verdict", stage, str(ctx.results)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or f"failed: verdict crashed: {result.stderr.strip()[-300:]}"


# -- dry run ---------------------------------------------------------------------------------------------------
def dry_run(ctx: Context, stages: list[Stage], budget: float) -> int:
    """Every stage's commands built and, for the bench scripts, parsed by their own argument parsers; the
    schedule against the budget; the verdicts on committed CPU results. Starts nothing."""
    import importlib

    problems, elapsed = [], 0.0
    for stage in stages:
        starts = budget - elapsed >= stage.min_s
        box = min(stage.box_s, budget - elapsed) if starts else 0
        when = f"box {box:.0f} s" if starts else "skipped if every stage before it uses its whole box"
        print(f"[{stage.name}] {when}: {stage.why}")
        for step in stage.steps(ctx):
            if callable(step.action):
                print(f"    {step.label}: (done in this script)")
                continue
            print(f"    {step.label}: {shlex.join(step.action)}")
            if step.action[1] == "-m" and step.action[2].startswith("bench."):
                module = importlib.import_module(step.action[2])
                try:
                    module.parse_args(step.action[3:])
                except SystemExit:
                    problems.append(f"{stage.name}: {step.action[2]} rejects its arguments")
        for label, path, summary in VERDICTS.get(stage.name, lambda r: [])(ctx.results):
            sample = SAMPLES.get(summary)
            if sample is None:
                print(f"    verdict: {path.name} ({label}); no committed sample here to check it on")
                continue
            _, text = summary(sample)
            print(f"    verdict: {path.name} ({label}); on {sample.relative_to(REPO)}: {text}")
        elapsed += box
    print(f"worst case: {elapsed:.0f} s of the {budget:.0f} s budget")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


# -- the command line ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bash bench/gpu/on-device.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--receive", action="store_true", help="only take the carried parts into the store and check them")
    p.add_argument("--dry-run", action="store_true", help="build and check every stage's commands; start nothing")
    p.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], default=[s.name for s in STAGES],
                   help="stages to run, in this order (default: all, in priority order)")
    p.add_argument("--budget", type=float, default=480,
                   help="seconds for all stages (default: 480, so that the whole session stays within ~12 minutes)")
    p.add_argument("--carry", type=Path, default=REPO / ".gpu_carry", help="where the runs put the parts")
    p.add_argument("--store", type=Path, default=REPO / ".gpu_store", help="what survives between runs")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / ".gpu_store" / "out")),
                   help="what comes back (default: $OUT)")
    p.add_argument("--verdict", nargs=2, metavar=("STAGE", "RESULTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.verdict:
        stage, results = args.verdict
        try:
            print(verdict(VERDICTS[stage](Path(results))))
        except Exception as e:  # a verdict must always say something: the results are still in results.tar.gz
            print(f"failed: results do not check: {type(e).__name__}: {str(e)[:400]}")
        return 0
    ctx = Context(args.store.resolve(), args.carry.resolve(), args.out.resolve(), args.dry_run)
    stages = [s for name in args.stages for s in STAGES if s.name == name]
    if args.dry_run:
        return dry_run(ctx, stages, args.budget)
    if args.receive:
        good, bad = receive(ctx)
        print(f"receive: {len(good)} parts good ({', '.join(good)}); still to carry: {', '.join(bad) or 'none'}")
        return 0
    reporter = Reporter(ctx)
    deadline = time.monotonic() + args.budget
    for stage in stages:
        ok = run_stage(ctx, stage, deadline, reporter)
        if stage.name == "setup" and not ok:
            reporter.say("setup failed: the measurements need it; stopping")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
