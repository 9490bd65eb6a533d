"""The configurations compared (no speculation, EAGLE-3, PRISM) and the command lines that serve them: SGLang
(`python -m sglang.launch_server`, GPU hosts) or the CPU server (`prism-sglang serve`).

Both spec configurations get the identical tree (num_steps, topk, num_draft_tokens) and every configuration the
identical server flags otherwise, the running-request cap included: SGLang's EAGLE family lowers its default
cap to 48, which would make the spec servers queue at concurrency 64 where the plain one does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchError

BACKEND_SERVERS = ("auto", "sglang", "sglang-cpu", "cpu")
SGLANG_BACKENDS = ("sglang", "sglang-cpu")

# sglang-cpu: the real SGLang server on SGLang's own CPU engine, with the test-only plain-PyTorch stand-ins for
# sgl_kernel's CPU ops and this machine's shims (tests/sglang_cpu/README.md). float32, so that its greedy output
# can be compared token for token with the reference engine's; no overlap scheduling (SGLang's CPU rule); an idle
# scheduler sleeps instead of spinning (on 2 cores a spinning one takes a whole core from everything else).
SGLANG_CPU_SITE = REPO / "tests" / "sglang_cpu" / "site"
SGLANG_CPU_FLAGS = ("--device", "cpu", "--attention-backend", "intel_amx", "--dtype", "float32",
                    "--disable-overlap-schedule", "--max-total-tokens", "16384", "--sleep-on-idle")


def sglang_cpu_env(threads: int) -> dict[str, str]:
    """The environment of a sglang-cpu server: SGLang's CPU engine, the test site on PYTHONPATH, `threads`
    torch threads. torch.compile stays off: the few SGLang helpers that use it (spec_utils.py) would spend
    40+ s compiling C++ on the first request of every server, for ops of a few elements."""
    return {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": str(SGLANG_CPU_SITE), "TORCH_COMPILE_DISABLE": "1",
            "OMP_NUM_THREADS": str(threads)}


@dataclass(frozen=True)
class Tree:
    """SGLang's speculative settings: draft steps (depth), branching per step, tokens verified per cycle."""

    num_steps: int
    topk: int
    num_draft_tokens: int

    def check(self) -> None:
        if min(self.num_steps, self.topk, self.num_draft_tokens) < 1:
            raise BenchError(f"tree settings must be positive, got {self.describe()}")
        # SGLang silently forces num_draft_tokens = num_steps + 1 for chains: refuse anything else, or the two
        # backends would not run what the results say.
        if self.topk == 1 and self.num_draft_tokens != self.num_steps + 1:
            raise BenchError(f"with --topk 1 (a chain) --num-draft-tokens must be --num-steps + 1 = "
                             f"{self.num_steps + 1} (SGLang forces it), got {self.num_draft_tokens}")
        if self.num_draft_tokens > 1 + self.num_steps * self.topk:
            raise BenchError(f"--num-draft-tokens {self.num_draft_tokens} exceeds the tree's "
                             f"1 + num_steps * topk = {1 + self.num_steps * self.topk} tokens")

    def describe(self) -> str:
        return f"{self.num_steps}/{self.topk}/{self.num_draft_tokens}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Config:
    name: str  # "none" | "eagle3" | "prism": keys in the results
    label: str  # for people: report and plots
    algorithm: str | None  # SGLang's --speculative-algorithm
    draft: Path | None

    @property
    def speculative(self) -> bool:
        return self.algorithm is not None


def configurations(eagle3_draft: Path | None, prism_draft: Path | None, names: list[str]) -> list[Config]:
    available = {
        "none": Config("none", "no speculation", None, None),
        "eagle3": Config("eagle3", "EAGLE-3", "EAGLE3", eagle3_draft),
        "prism": Config("prism", "PRISM", "PRISM", prism_draft),
    }
    return [available[name] for name in names]


def check_draft_dir(config: Config) -> None:
    """A clear message now, rather than a server that dies a minute into loading."""
    draft = config.draft
    flag = f"--{config.name}-draft"
    if draft is None:
        raise BenchError(f"no {config.label} draft: give {flag} DIR (or --random-drafts for an overhead-only run)")
    if not (draft / "config.json").is_file():
        raise BenchError(f"{flag} {draft}: no config.json there (a draft is a folder with config.json and "
                         "*.safetensors)")
    if not any(draft.glob("*.safetensors")):
        raise BenchError(f"{flag} {draft}: no *.safetensors weights there")


def draft_summary(draft: Path | None) -> dict[str, Any] | None:
    """The facts about a draft that the report states: modules, step table, vocabulary, target features."""
    if draft is None:
        return None
    from prism_sglang.config import PrismConfig

    c = PrismConfig.load(draft)
    return {"path": str(draft), "num_modules": c.num_modules, "step_modules": list(c.step_modules),
            "draft_vocab_size": c.draft_vocab_size, "hidden_size": c.hidden_size,
            "aux_layer_ids": list(c.aux_layer_ids) if c.aux_layer_ids is not None else None}


# -- command lines --------------------------------------------------------------------------------------------
def sglang_spec_flags(config: Config, tree: Tree) -> list[str]:
    if not config.speculative:
        return []
    return ["--speculative-algorithm", str(config.algorithm), "--speculative-draft-model-path", str(config.draft),
            "--speculative-num-steps", str(tree.num_steps), "--speculative-eagle-topk", str(tree.topk),
            "--speculative-num-draft-tokens", str(tree.num_draft_tokens)]


def sglang_command(python: str, target: str, config: Config, tree: Tree, host: str, port: int, max_running: int,
                   extra: list[str]) -> list[str]:
    """`python -m sglang.launch_server ...`; `extra` (e.g. --attention-backend triton) comes last and wins."""
    return [python, "-m", "sglang.launch_server", "--model-path", target, "--host", host, "--port", str(port),
            "--max-running-requests", str(max_running), "--cuda-graph-max-bs-decode", str(max_running),
            *sglang_spec_flags(config, tree), *extra]


def cpu_command(python: str, target: str, config: Config, tree: Tree, host: str, port: int, max_running: int,
                threads: int, extra: Sequence[str] = ()) -> list[str]:
    """`prism-sglang serve ...` (the reference engine behind SGLang's /generate), sized so that no request of
    the largest concurrency waits in its queue or gets HTTP 429, and with no request timeout; `extra` (e.g.
    --speculation always) comes last and wins."""
    command = [python, "-m", "prism_sglang.cli", "serve", "--target", target, "--host", host, "--port", str(port),
               "--max-running", str(max_running), "--max-queue", str(max_running), "--num-threads", str(threads),
               "--request-timeout", "0"]
    if not config.speculative:
        return [*command, "--no-draft", *extra]
    return [*command, "--draft", str(config.draft), "--num-steps", str(tree.num_steps), "--topk", str(tree.topk),
            "--num-draft-tokens", str(tree.num_draft_tokens), *extra]


def sglang_cpu_command(python: str, target: str, config: Config, tree: Tree, host: str, port: int,
                       max_running: int, extra: list[str]) -> list[str]:
    return sglang_command(python, target, config, tree, host, port, max_running, [*SGLANG_CPU_FLAGS, *extra])


def resolve_backend_server(choice: str) -> str:
    """auto = SGLang where CUDA is available (and sglang installed), else the CPU server."""
    if choice != "auto":
        return choice
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        return "cpu"
    import torch

    return "sglang" if torch.cuda.is_available() else "cpu"


def check_sglang_for_prism(python: str) -> None:
    """PRISM needs sglang 0.5.17 patched (launch/serve.sh makes the same check)."""
    import subprocess

    result = subprocess.run([python, "-m", "prism_sglang.cli", "patch-sglang", "--check"], capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise BenchError(f"{python}'s sglang is not ready for --speculative-algorithm PRISM:\n"
                         f"{(result.stdout + result.stderr).strip()}\n(run 'prism-sglang patch-sglang' as the owner "
                         "of the sglang install)")


# -- drafts for an overhead-only run --------------------------------------------------------------------------
def make_random_drafts(target: Path, out: Path, draft_vocab_size: int, seed: int = 0) -> tuple[Path, Path]:
    """Untrained EAGLE-3 (M = 1) and PRISM (M = 2, table 0,1) drafts for `target`, shaped as `prism-sglang train`
    makes them (target features from EAGLE-3's default layers, draft vocabulary = the first token ids). Their
    acceptance is near zero: a run with them measures the cost of speculation, not its benefit."""
    import torch

    from prism_sglang.checkpoint import save_draft
    from prism_sglang.target import TargetModel
    from prism_sglang.train.trainer import new_draft

    loaded = TargetModel.load(target)
    vocab = torch.arange(min(draft_vocab_size, loaded.vocab_size))
    paths = []
    for name, modules, table in (("eagle3", 1, (0,)), ("prism", 2, (0, 1))):
        path = out / name
        if not (path / "config.json").is_file():
            save_draft(new_draft(loaded, modules, table, draft_vocab=vocab, seed=seed), path)
        paths.append(path)
    return paths[0], paths[1]
