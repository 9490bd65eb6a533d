"""Finding and importing sglang for the sglang tests (tests/test_sglang_*.py); sglang is not imported here.

Without sglang the calling test module is skipped, or fails under PRISM_REQUIRE_SGLANG=1 (set by `make test`).
On CPU, `import sglang` needs the import-only torchvision stub (tests/stubs) on sys.path; tests/__init__.py puts
it there (only when sglang is installed and no real torchvision is), before transformers is first imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

STUBS = Path(__file__).parent / "stubs"
REQUIRED = os.environ.get("PRISM_REQUIRE_SGLANG") == "1"


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (PRISM_REQUIRE_SGLANG=1 makes this an error)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def sglang_package_dir() -> Path:
    """The installed sglang package directory, found without importing it."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail("sglang is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def add_torchvision_stub() -> None:
    has_sglang = importlib.util.find_spec("sglang") is not None
    if has_sglang and importlib.util.find_spec("torchvision") is None and str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))


def import_sglang() -> ModuleType:
    sglang_package_dir()
    try:
        import sglang
    except Exception as e:  # any import-time failure means: no usable sglang here
        skip_or_fail(f"sglang is not importable: {e!r}")
    return sglang
