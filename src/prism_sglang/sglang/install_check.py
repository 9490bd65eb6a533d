"""Checks for installing prism-sglang into an existing SGLang 0.5.17 environment (the official Docker image, or
any venv with sglang): launch/install-into-image.sh runs them, and the Dockerfile runs that script.

    python -m prism_sglang.sglang.install_check missing   # our requirements this environment lacks, one per line
    python -m prism_sglang.sglang.install_check verify    # plugin, entry point, packaged patches, requirements

The package itself is installed with `--no-deps`, so pip never touches the image's torch/CUDA stack; `missing`
names the (pure-Python) requirements to install next, also with `--no-deps`. A requirement of the stack itself
(torch, transformers, ...) that is absent or out of our range is an error (exit 3), never something to install.
Nothing here imports sglang.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.requirements import Requirement

DIST = "prism-sglang"
ENTRY_POINT_GROUP = "sglang.srt.plugins"
ENTRY_POINT_NAME = "prism"
ENTRY_POINT_VALUE = "prism_sglang.sglang.plugin:register"
# The image's own stack: these come with sglang's pins and are never installed or upgraded by us (numba, which
# the CPU engine's kernel needs, is one of sglang's: not pure Python, never installed --no-deps without llvmlite).
STACK = frozenset({"torch", "transformers", "tokenizers", "safetensors", "numpy", "numba", "llvmlite", "triton"})


def base_requirements(dist: str = DIST) -> list[Requirement]:
    """The distribution's requirements outside any extra whose markers hold here."""
    reqs = [Requirement(line) for line in importlib.metadata.requires(dist) or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsatisfied(reqs: Iterable[Requirement]) -> Iterator[tuple[Requirement, str | None]]:
    """(requirement, installed version or None) for each requirement this environment does not meet."""
    for req in reqs:
        version = installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            yield req, version


def _describe(req: Requirement, version: str | None) -> str:
    return f"{req.name}{req.specifier} (installed: {version or 'none'})"


def missing(dist: str = DIST) -> int:
    """Print the requirements to install (`name<specifier>`, one per line); exit 3 if the stack lacks one."""
    todo, stack = [], []
    for req, version in unsatisfied(base_requirements(dist)):
        (stack if req.name.lower() in STACK else todo).append((req, version))
    if stack:
        print("error: this environment's torch/CUDA stack does not meet prism-sglang's requirements: "
              + ", ".join(_describe(r, v) for r, v in stack)
              + "; use an sglang 0.5.17 image (it brings all of them), never install over its stack", file=sys.stderr)
        return 3
    for req, _ in todo:
        print(f"{req.name}{req.specifier}")
    return 0


def problems(dist: str = DIST) -> list[str]:
    """Everything that makes this install incomplete (empty: complete)."""
    found: list[str] = []
    import prism_sglang
    from prism_sglang.sglang import patching, plugin

    package = Path(prism_sglang.__file__).resolve().parent
    eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if len(eps) != 1:
        found.append(f"expected one '{ENTRY_POINT_NAME}' entry point in group {ENTRY_POINT_GROUP}, found {len(eps)} "
                     "(is prism-sglang installed in this Python?)")
    else:
        ep = eps[0]
        if ep.value != ENTRY_POINT_VALUE:
            found.append(f"entry point {ENTRY_POINT_NAME} = {ep.value}, expected {ENTRY_POINT_VALUE}")
        elif ep.load() is not plugin.register:
            found.append(f"entry point {ENTRY_POINT_NAME} does not resolve to {plugin.__name__}.register")
        files = {str(f): f for f in (ep.dist.files or [])} if ep.dist is not None else {}
        init = files.get("prism_sglang/__init__.py")
        if init is not None and Path(str(ep.dist.locate_file(init))).resolve().parent != package:
            found.append(f"prism_sglang is imported from {package}, not from the installed {dist} "
                         f"({Path(str(ep.dist.locate_file(init))).parent})")
    try:
        patches = patching.patch_files()
    except patching.PatchError as e:
        found.append(str(e))
    else:
        if any(package not in p.resolve().parents for p in patches):
            found.append(f"the sglang patches are not inside the installed package {package}")
    found += [f"requirement not met: {_describe(r, v)}" for r, v in unsatisfied(base_requirements(dist))]
    return found


def verify(dist: str = DIST) -> int:
    """Print a short report of the install; exit 1 if it is incomplete."""
    from prism_sglang.resources import DRAFTS_DIR
    from prism_sglang.sglang import patching

    found = problems(dist)
    if found:
        for problem in found:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    import prism_sglang

    drafts = sorted(p.name for p in DRAFTS_DIR.glob("*") if (p / "config.json").is_file())
    print(f"{dist} {installed_version(dist)} at {Path(prism_sglang.__file__).parent}")
    print(f"  entry point: {ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} = {ENTRY_POINT_VALUE}")
    print(f"  patches: {', '.join(p.name for p in patching.patch_files())}")
    print(f"  shipped drafts: {', '.join(drafts) if drafts else 'none (give serve.sh a draft folder)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism_sglang.sglang.install_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["missing", "verify"])
    args = parser.parse_args(argv)
    return missing() if args.command == "missing" else verify()


if __name__ == "__main__":
    sys.exit(main())
