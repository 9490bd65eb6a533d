"""Apply or verify `patches/sglang-0.5.17/*.patch` on an sglang tree (`prism-sglang patch-sglang [--check]`).

The patches are package data (src/prism_sglang/sglang/patches/, listed in pyproject's package-data), so an
installed wheel applies them as a source checkout does: the Docker image installs the wheel, then patches.

Never imports sglang: the package is located with `importlib.util.find_spec` (or `--sglang-root`, the
directory that contains `sglang/`, or a git checkout whose `python/` does), and its version is read from the
generated `sglang/_version.py` (else from the installed distribution's metadata). Any other version than
0.5.17 is refused: the patches and the PRISM model are written against it.

Patches are applied with GNU `patch` (Debian package `patch`), never `git apply`, so that site-packages and
editable checkouts are handled alike. Each patch is classified by dry runs: applies forward -> not applied;
applies in reverse -> already applied; neither -> half-applied or a different sglang. `--forward` is always
given (with `--batch` alone, `patch` would silently take an applied patch for a reversed one) and `--fuzz=0`
refuses hunks that only roughly match. Pending patches are applied, in order, to a scratch copy of the files
they touch; the real tree is written only once all of them succeeded, so a failure leaves it untouched.
"""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prism_sglang.sglang import SGLANG_VERSION

PATCHES_DIR = Path(__file__).resolve().parent / "patches" / f"sglang-{SGLANG_VERSION}"
_VERSION_RE = re.compile(r"""^__version__\s*=[^'"\n]*['"]([^'"]+)['"]""", re.MULTILINE)


class PatchError(RuntimeError):
    """A patch that cannot be applied, or a tree that does not have all patches."""


class SglangTreeError(PatchError):
    """No usable sglang tree: not found, unknown version, or not the pinned version."""


class PatchState(enum.Enum):
    APPLIED = "already applied"
    PENDING = "not applied"
    CONFLICT = "half-applied or conflicting (does not apply forward or in reverse)"


@dataclass(frozen=True)
class PatchStatus:
    patch: Path
    state: PatchState
    detail: str = ""  # patch's own output, for a conflict


@dataclass(frozen=True)
class SglangTree:
    root: Path  # the directory that contains the `sglang/` package
    version: str


def find_sglang(root: str | Path | None = None) -> SglangTree:
    """Locate an sglang tree (default: the one this Python imports) and read its version."""
    if root is None:
        package = _installed_package_dir()
        if package is None:
            raise SglangTreeError("sglang is not installed in this Python; install it or pass --sglang-root DIR")
        return _tree(package.parent)
    root = Path(root).resolve()
    for candidate in (root, root / "python"):
        if (candidate / "sglang" / "__init__.py").is_file():
            return _tree(candidate)
    raise SglangTreeError(f"{root}: no sglang/ package here or under python/ (pass the directory containing sglang/)")


def _installed_package_dir() -> Path | None:
    """The `sglang/` directory this Python would import (found without importing it)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _tree(root: Path) -> SglangTree:
    return SglangTree(root.resolve(), sglang_version(root.resolve()))


def sglang_version(root: Path) -> str:
    """The version of the sglang package in `root`, without importing it."""
    generated = root / "sglang" / "_version.py"
    if generated.is_file() and (match := _VERSION_RE.search(generated.read_text())):
        return match.group(1)
    if _installed_package_dir() == root / "sglang":
        return importlib.metadata.version("sglang")
    raise SglangTreeError(f"{root}: cannot tell the sglang version (no sglang/_version.py, not the installed sglang)")


def require_pinned(tree: SglangTree) -> None:
    if tree.version != SGLANG_VERSION:
        raise SglangTreeError(
            f"prism-sglang's patches are for sglang {SGLANG_VERSION}, but {tree.root} has sglang {tree.version}; "
            f"install sglang=={SGLANG_VERSION} (a new version needs the patches re-diffed and the GPU suite re-run)"
        )


def patch_files(patches_dir: Path = PATCHES_DIR) -> list[Path]:
    patches = sorted(patches_dir.glob("*.patch"))
    if not patches:
        raise PatchError(f"no *.patch files in {patches_dir} (package data of prism_sglang: reinstall it)")
    return patches


def touched_files(patch: Path) -> list[str]:
    """Paths (relative to the tree root) that a `-p1` unified diff modifies."""
    return [line[len("+++ b/"):].split("\t")[0].strip() for line in patch.read_text().splitlines()
            if line.startswith("+++ b/")]


def check(tree: SglangTree, patches: Sequence[Path]) -> list[PatchStatus]:
    """The state of every patch, in order (a later patch is judged with the earlier ones applied)."""
    require_pinned(tree)
    with tempfile.TemporaryDirectory(prefix="prism-patch-") as scratch:
        return _stage(tree, patches, Path(scratch))


def apply(tree: SglangTree, patches: Sequence[Path]) -> list[PatchStatus]:
    """Apply every pending patch; returns the states found before applying. Raises PatchError on a conflict,
    leaving the tree untouched."""
    require_pinned(tree)
    with tempfile.TemporaryDirectory(prefix="prism-patch-") as scratch:
        statuses = _stage(tree, patches, Path(scratch))
        conflicts = [s for s in statuses if s.state is PatchState.CONFLICT]
        if conflicts:
            raise PatchError(
                "not applying anything: " + "; ".join(f"{s.patch.name}: {s.state.value}\n{s.detail}" for s in conflicts)
            )
        pending = [s.patch for s in statuses if s.state is PatchState.PENDING]
        _write_back(tree.root, Path(scratch), sorted({f for p in pending for f in touched_files(p)}))
    return statuses


def _stage(tree: SglangTree, patches: Sequence[Path], scratch: Path) -> list[PatchStatus]:
    """Classify each patch on a scratch copy of the touched files, applying the pending ones there in order."""
    for rel in sorted({f for p in patches for f in touched_files(p)}):
        source = tree.root / rel
        if not source.is_file():
            raise PatchError(f"{tree.root}: {rel} is missing; this is not a complete sglang {SGLANG_VERSION} tree")
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, scratch / rel)
    statuses = []
    for patch in patches:
        forward = _run_patch(scratch, patch, "--dry-run")
        if forward.returncode == 0:
            _ensure_ok(_run_patch(scratch, patch), patch)
            statuses.append(PatchStatus(patch, PatchState.PENDING))
        elif _run_patch(scratch, patch, "--dry-run", "--reverse").returncode == 0:
            statuses.append(PatchStatus(patch, PatchState.APPLIED))
        else:
            statuses.append(PatchStatus(patch, PatchState.CONFLICT, forward.stdout.strip()))
    return statuses


def _run_patch(directory: Path, patch: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("patch") is None:
        raise PatchError("GNU patch is not installed (Debian/Ubuntu: apt-get install patch)")
    cmd = ["patch", "-d", str(directory), "-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch",
           "--reject-file=-", "-i", str(patch), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _ensure_ok(result: subprocess.CompletedProcess[str], patch: Path) -> None:
    if result.returncode != 0:
        raise PatchError(f"{patch.name} passed its dry run but failed to apply:\n{result.stdout}{result.stderr}")


def _write_back(root: Path, scratch: Path, files: Sequence[str]) -> None:
    """Copy the patched files over the real ones; each is replaced atomically (write beside it, then rename)."""
    for rel in files:
        if not os.access((root / rel).parent, os.W_OK):
            raise PatchError(f"cannot write {root / rel}: no permission (run as the owner of the sglang install)")
    for rel in files:
        target = root / rel
        staged = target.with_name(f".{target.name}.prism-patch")
        shutil.copyfile(scratch / rel, staged)
        shutil.copymode(target, staged)
        os.replace(staged, target)


def main(check_only: bool = False, sglang_root: str | None = None, patches_dir: Path = PATCHES_DIR) -> int:
    """The `prism-sglang patch-sglang` command: prints a report, returns the exit status."""
    try:
        tree = find_sglang(sglang_root)
        patches = patch_files(patches_dir)
        statuses = check(tree, patches) if check_only else apply(tree, patches)
    except SglangTreeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"sglang {tree.version} at {tree.root}")
    for s in statuses:
        done = "applied now" if s.state is PatchState.PENDING and not check_only else s.state.value
        print(f"  {s.patch.name}: {done}")
        if s.detail:
            print("    " + s.detail.replace("\n", "\n    "))
    missing = [s.patch.name for s in statuses if s.state is not PatchState.APPLIED]
    if check_only and missing:
        print(f"error: {len(missing)} patch(es) not cleanly applied: {', '.join(missing)}; run `prism-sglang "
              "patch-sglang` (a half-applied tree needs a fresh sglang install first)", file=sys.stderr)
        return 1
    return 0
