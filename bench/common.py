"""What every benchmark script needs: paths, the machine it runs on, results folders, schema-checked JSON."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_ROOT = REPO / "bench" / "results"
SCHEMA_DIR = REPO / "bench" / "schema"
# The import-only torchvision stand-in of the test suite (tests/stubs/README.md): `import sglang` needs
# torchvision at module level, and PyPI's torchvision wheels do not load against a CPU torch.
TORCHVISION_STUB = REPO / "tests" / "stubs"


class BenchError(RuntimeError):
    """A benchmark cannot run as asked; the message says what to change. Scripts print it and exit 1."""


def add_torchvision_stub() -> None:
    """Make `import sglang` work on a CPU machine without torchvision. Must run before transformers is first
    imported: transformers decides at its first import which torchvision-backed classes exist."""
    has_sglang = importlib.util.find_spec("sglang") is not None
    if has_sglang and importlib.util.find_spec("torchvision") is None and str(TORCHVISION_STUB) not in sys.path:
        sys.path.insert(0, str(TORCHVISION_STUB))


def require_packages(names: tuple[str, ...] = ("httpx", "psutil", "jsonschema", "matplotlib")) -> None:
    """Fail at the start, not after an hour of measuring, when a package the results need is missing."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError(f"missing Python packages: {', '.join(missing)}. Install them with:\n"
                         f"  {sys.executable} -m pip install {' '.join(missing)}\n(they are in the dev extra: "
                         "pip install -e '.[dev]')")


def resolve_target(target: str | None, log: Callable[[str], None] = print) -> Path:
    """The target folder given, or SmolLM2-135M-Instruct (converted on first use) when none is."""
    if target is not None:
        return Path(target)
    from prism_sglang.prepare_model import prepare_smollm2

    return prepare_smollm2(log=log)


# -- the machine ----------------------------------------------------------------------------------------------
def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs nvidia-smi sees ([] without a driver). Asked of nvidia-smi rather than torch so
    that this process never creates a CUDA context (it would show up in the server's memory figures)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_label() -> str:
    """What results are labelled with: the first GPU's name, or "cpu"."""
    names = gpu_names()
    return names[0] if names else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def today() -> str:
    return dt.date.today().isoformat()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_results_dir(device: str) -> Path:
    return RESULTS_ROOT / f"{today()}-{slug(device)}"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: a shared machine's load changes every timing taken on it."""
    return [round(x, 2) for x in os.getloadavg()]


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def cpu_info() -> dict[str, Any]:
    """The CPU model and the vector extensions that decide which kernels run (the same code measures very
    differently on AVX2 and on AVX-512 BF16 / AMX machines)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor()}
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in text.splitlines()
                                                             if ":" in line)}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", ""),
            "extensions": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"})}


def host_info(device: str) -> dict[str, Any]:
    return {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "cpu": cpu_info(), "device": device, "gpus": gpu_names(),
        "versions": {name: package_version(name) for name in ("torch", "transformers", "sglang", "prism-sglang")},
        "git": git_state(),
    }


# -- networking -----------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require_free_port(host: str, port: int) -> None:
    """Fail before starting a server on a taken port: otherwise the benchmark could silently measure whatever
    server already listens there."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise BenchError(f"port {port} on {host} is in use ({e.strerror}); stop what listens there, or pass "
                             "--port 0 to pick a free port") from e


# -- results --------------------------------------------------------------------------------------------------
def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validate(data: dict[str, Any], schema_name: str) -> None:
    """Raise BenchError listing every way `data` breaks bench/schema/<schema_name>.schema.json. The schemas refer
    to each other by relative URI (simulated reuses serving's definitions): all are registered by $id."""
    import jsonschema
    from referencing import Registry, Resource

    schemas = [json.loads(path.read_text()) for path in sorted(SCHEMA_DIR.glob("*.schema.json"))]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    main = schema(schema_name)
    validator = jsonschema.validators.validator_for(main)(main, registry=registry)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:20]]
        raise BenchError(f"results do not match {schema_name}.schema.json:\n" + "\n".join(lines))


def write_json(path: Path, data: dict[str, Any], schema_name: str) -> Path:
    """Validate against the schema first, so that no file that breaks it is ever written."""
    validate(data, schema_name)
    try:
        text = json.dumps(data, indent=2, allow_nan=False)  # NaN / Infinity are not JSON
    except ValueError as e:
        raise BenchError(f"results for {path} hold a non-finite number: {e}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def write_report(out: str | None, report: dict[str, Any]) -> None:
    """A CPU measurement script's JSON (no schema: each script's own keys) to `out`, if one was given."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")


def relative(path: Path, root: Path) -> str:
    """A path as stored in results: relative to the results folder when inside it (the folder can move)."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# -- process life ---------------------------------------------------------------------------------------------
def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt wherever the harness is, so that `finally` blocks stop
    the servers. Python's default SIGTERM action would end the process without running them and orphan the
    server. SIGINT gets the handler explicitly because a process started in the background by a non-interactive
    shell (`cmd &`, nohup, some CI runners) inherits SIGINT as ignored, and Python then installs none: the
    harness would run on and the Ctrl-C would be lost. (asyncio.run leaves a handler other than Python's own in
    place, so the interrupt is raised inside sglang.benchmark.serving's event loop too.)"""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def script_main(main: Any, argv: list[str] | None = None) -> int:
    """Run a script's main: BenchError -> a one-paragraph message and exit status 1; Ctrl-C -> 130."""
    stop_on_signals()
    try:
        return int(main(argv) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: servers stopped, partial results not written", file=sys.stderr)
        return 130
