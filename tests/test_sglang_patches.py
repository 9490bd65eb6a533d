"""patches/sglang-0.5.17 and `prism-sglang patch-sglang [--check]`, on copies of the installed sglang's files."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prism_sglang import cli
from prism_sglang.sglang.patching import main, patch_files, touched_files
from tests.sglang_support import sglang_package_dir

pytestmark = pytest.mark.sglang

INSTALLED = sglang_package_dir().parent  # skips this module without sglang
PATCHES = patch_files()
TOUCHED = sorted({f for p in PATCHES for f in touched_files(p)})


def wheel_hashes() -> dict[str, str]:
    """sha256 of each file as the sglang wheel shipped it (its RECORD); empty for an editable install."""
    files = importlib.metadata.distribution("sglang").files or []
    return {str(f): f.hash.value for f in files if f.hash is not None and f.hash.mode == "sha256"}


def sha256(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


@pytest.fixture
def pristine(tmp_path) -> Path:
    """The directory containing a `sglang/` with the files the patches touch (plus the package's version and
    __init__ files), as the 0.5.17 wheel ships them, whether or not the installed copy is patched already."""
    root = tmp_path / "site-packages"
    for rel in [*TOUCHED, "sglang/__init__.py", "sglang/_version.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(INSTALLED / rel, root / rel)
    for patch in reversed(PATCHES):  # `make install` patched the installed copy: undo it here (no-op if not)
        subprocess.run(["patch", "-d", str(root), "-p1", "-R", "--forward", "--batch", "--fuzz=0",
                        "--no-backup-if-mismatch", "--reject-file=-", "-i", str(patch)], capture_output=True)
    hashes = wheel_hashes()
    for rel in TOUCHED:
        if rel in hashes:
            assert sha256(root / rel) == hashes[rel], f"{rel} differs from the sglang 0.5.17 wheel"
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in TOUCHED}


def test_patches_are_well_formed():
    assert [p.name for p in PATCHES] == ["0001-spec-draft-step.patch", "0002-prism-eagle3-parity.patch"]
    for patch in PATCHES:
        lines = patch.read_text().splitlines()
        first_diff = next(i for i, line in enumerate(lines) if line.startswith("--- "))
        assert len(" ".join(lines[:first_diff]).split()) > 20, f"{patch.name}: the header must say what and why"
        assert all(line.startswith("--- a/sglang/") for line in lines if line.startswith("--- "))
        assert all(line.startswith("+++ b/sglang/") for line in lines if line.startswith("+++ "))
    assert TOUCHED == ["sglang/srt/arg_groups/speculative_hook.py", "sglang/srt/model_executor/forward_context.py",
                       "sglang/srt/speculative/adaptive_spec_params.py", "sglang/srt/speculative/eagle_worker_v2.py"]


def test_apply_then_apply_again_is_a_no_op(pristine, capsys):
    assert main(check_only=True, sglang_root=str(pristine)) == 1
    assert capsys.readouterr().out.count(": not applied") == 2

    assert main(sglang_root=str(pristine)) == 0
    assert capsys.readouterr().out.count(": applied now") == 2
    text = {rel: (pristine / rel).read_text() for rel in TOUCHED}
    assert "spec_draft_step: Optional[int] = None" in text["sglang/srt/model_executor/forward_context.py"]
    assert "spec_draft_step=i + 1," in text["sglang/srt/speculative/eagle_worker_v2.py"]
    assert text["sglang/srt/arg_groups/speculative_hook.py"].count('"PRISM")') == 2
    assert '("EAGLE", "EAGLE3", "PRISM")' in text["sglang/srt/speculative/adaptive_spec_params.py"]
    for rel in TOUCHED:
        py_compile.compile(str(pristine / rel), doraise=True, cfile=str(pristine / "compiled.pyc"))
    assert not [p for p in pristine.rglob("*") if p.suffix in (".orig", ".rej") or ".prism-patch" in p.name]

    patched = snapshot(pristine)
    assert main(sglang_root=str(pristine)) == 0
    assert capsys.readouterr().out.count(": already applied") == 2
    assert snapshot(pristine) == patched
    assert main(check_only=True, sglang_root=str(pristine)) == 0


def test_check_finds_a_half_applied_patch(pristine, capsys):
    original = (pristine / "sglang/srt/speculative/eagle_worker_v2.py").read_bytes()
    assert main(sglang_root=str(pristine)) == 0
    (pristine / "sglang/srt/speculative/eagle_worker_v2.py").write_bytes(original)  # 0001: one file of two
    capsys.readouterr()

    assert main(check_only=True, sglang_root=str(pristine)) == 1
    out, err = capsys.readouterr()
    assert "0001-spec-draft-step.patch: half-applied or conflicting" in out
    assert "0002-prism-eagle3-parity.patch: already applied" in out
    assert "not cleanly applied: 0001-spec-draft-step.patch" in err

    before = snapshot(pristine)
    assert main(sglang_root=str(pristine)) == 1
    assert "not applying anything: 0001-spec-draft-step.patch" in capsys.readouterr().err
    assert snapshot(pristine) == before


def test_a_hunk_that_does_not_apply_leaves_the_tree_untouched(pristine, capsys):
    hook = pristine / "sglang/srt/arg_groups/speculative_hook.py"
    hook.write_text(hook.read_text().replace('"EAGLE / EAGLE3 / NEXTN, not "', '"EAGLE / EAGLE3, not "'))
    before = snapshot(pristine)
    assert main(sglang_root=str(pristine)) == 1
    assert "0002-prism-eagle3-parity.patch: half-applied or conflicting" in capsys.readouterr().err
    assert snapshot(pristine) == before  # 0001 would apply, but nothing is written when any patch fails


def test_other_sglang_versions_are_refused(pristine, capsys):
    version = pristine / "sglang/_version.py"
    version.write_text(version.read_text().replace("'0.5.17'", "'0.5.23'"))
    before = snapshot(pristine)
    for check_only in (True, False):
        assert main(check_only=check_only, sglang_root=str(pristine)) == 2
        err = capsys.readouterr().err
        assert "patches are for sglang 0.5.17" in err and "has sglang 0.5.23" in err
    assert snapshot(pristine) == before


def test_a_tree_without_a_version_is_refused(pristine, capsys):
    (pristine / "sglang/_version.py").unlink()
    assert main(sglang_root=str(pristine)) == 2
    assert "cannot tell the sglang version" in capsys.readouterr().err


def test_a_git_checkout_is_found_under_python(pristine, tmp_path, capsys):
    checkout = tmp_path / "sglang-checkout"
    shutil.copytree(pristine, checkout / "python")
    assert main(sglang_root=str(checkout)) == 0
    assert f"sglang 0.5.17 at {checkout / 'python'}" in capsys.readouterr().out


def test_not_an_sglang_tree(tmp_path, capsys):
    assert main(sglang_root=str(tmp_path)) == 2
    assert "no sglang/ package here or under python/" in capsys.readouterr().err


def test_cli_subcommand(pristine, capsys):
    assert cli.main(["patch-sglang", "--check", "--sglang-root", str(pristine)]) == 1
    assert cli.main(["patch-sglang", "--sglang-root", str(pristine)]) == 0
    assert cli.main(["patch-sglang", "--check", "--sglang-root", str(pristine)]) == 0


def test_installed_sglang_is_patched():
    """`make install` patches the venv's sglang, as the Docker image does; the model tests rely on it."""
    result = subprocess.run([sys.executable, "-m", "prism_sglang.cli", "patch-sglang", "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"run prism-sglang patch-sglang (make install does):\n{result.stdout}{result.stderr}"
    assert f"at {INSTALLED.resolve()}" in result.stdout
