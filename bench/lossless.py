"""Is the speculative server lossless? Greedy output of each speculative configuration equals the no-speculation
server's, token for token, on the same prompts.

The no-speculation server runs first and answers every prompt (MT-bench first turns, GSM8K, HumanEval, chat
template applied) once through SGLang's native /generate at temperature 0, EOS honoured; then each speculative
server (EAGLE-3, PRISM; identical tree) answers the same prompts with the same settings and the same number in
flight. Per prompt the token ids are compared; a mismatch is recorded with the position of the first differing
token. Acceptance is read per request from `meta_info` (completion tokens / verification cycles). Results go to
lossless-<tag>.json (schema-checked) in the results folder and into its report.md; the exit status is 1 when
any output differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as in bench/serving.py

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bench import report
from bench.common import (
    BenchError,
    add_torchvision_stub,
    host_info,
    load_average,
    now_iso,
    require_packages,
    script_main,
    slug,
    write_json,
)
from bench.launch import Tree
from bench.native import generate_greedy
from bench.serving import (
    Setup,
    add_benches_argument,
    add_server_arguments,
    check_server,
    check_server_arguments,
    config_record,
    prepare_servers,
    start_server,
)

EPILOG = """\
examples:
  # CPU server, SmolLM2 + the shipped drafts, a short check
  python bench/lossless.py --backend-server cpu --num-prompts 2 --max-tokens 32 --topk 1 --num-steps 4
  # the real SGLang server on its CPU engine (test-only kernels of tests/sglang_cpu), float32
  python bench/lossless.py --backend-server sglang-cpu --num-prompts 10 --max-tokens 64 --topk 1 --num-steps 3
  # GPU host: 60 prompts, 256 tokens, one run per attention backend and tree (CUDA graphs are on by default)
  python bench/lossless.py --server-args='--attention-backend triton' --topk 1 --num-steps 5
  python bench/lossless.py --server-args='--attention-backend flashinfer'          # 6/4/16 tree

Batched GPU kernels may round differently at different batch sizes, so a few late divergences can come from
the floating point of batching rather than from the speculative decoder: --concurrency 1 rules that out, and
SGLang's batch-invariant --enable-deterministic-inference (in --server-args) is meant to."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/lossless.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(p)
    load = p.add_argument_group("prompts")
    add_benches_argument(load)
    load.add_argument("--num-prompts", metavar="N", type=int, default=20,
                      help="prompts per bench, the first N of each set (default: 20, i.e. 60 in all)")
    load.add_argument("--max-tokens", metavar="N", type=int, default=256,
                      help="most output tokens per request; EOS ends a request earlier (default: 256)")
    load.add_argument("--concurrency", metavar="C", type=int, default=8,
                      help="requests in flight, the same for every server (default: 8)")
    p.add_argument("--also-tree", metavar="S/K/N", action="append", default=[], type=parse_tree,
                   help="check the speculative configurations with this tree too (num-steps/topk/num-draft-tokens, "
                        "repeatable), against the same no-speculation outputs: one reference server for all trees; "
                        "one results file per tree")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", type=Path, default=None,
                     help="results folder (default: bench/results/<date>-<device>/)")
    out.add_argument("--tag", default=None,
                     help="names the results file lossless-<tag>.json (default: backend, tree and --server-args); "
                          "with --also-tree, lossless-<tag>-<tree>.json")
    args = p.parse_args(argv)
    check_server_arguments(p, args)
    for flag, value in {"--num-prompts": args.num_prompts, "--max-tokens": args.max_tokens,
                        "--concurrency": args.concurrency}.items():
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if not any(name != "none" for name in args.configs):
        p.error("--configs needs a speculative configuration (eagle3, prism) to compare with no speculation")
    for tree in args.also_tree:
        try:
            tree.check()
        except BenchError as e:
            p.error(f"--also-tree {tree.describe()}: {e}")
    return args


def parse_tree(text: str) -> Tree:
    try:
        steps, topk, tokens = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not num-steps/topk/num-draft-tokens, e.g. 5/1/6") from None
    return Tree(steps, topk, tokens)


# -- comparing --------------------------------------------------------------------------------------------------
def first_divergence(reference: Sequence[int], output: Sequence[int]) -> int | None:
    """Index of the first token where the two outputs differ (a length difference counts at the shorter's end);
    None when they are identical."""
    for i, (a, b) in enumerate(zip(reference, output, strict=False)):
        if a != b:
            return i
    return None if len(reference) == len(output) else min(len(reference), len(output))


def compare(reference: list[dict[str, Any]], outputs: list[dict[str, Any]],
            labels: list[tuple[str, str]]) -> dict[str, Any]:
    """One speculative configuration against the reference: identical prompts, mismatches, pooled acceptance."""
    mismatches = []
    for (bench, item_id), ref, out in zip(labels, reference, outputs, strict=True):
        at = first_divergence(ref["output_ids"], out["output_ids"])
        if at is not None:
            mismatches.append({"bench": bench, "id": item_id, "first_divergence": at,
                               "reference_tokens": len(ref["output_ids"]), "output_tokens": len(out["output_ids"])})
    tokens = sum(len(o["output_ids"]) for o in outputs)
    cycles = sum(o["meta_info"].get("spec_verify_ct") or 0 for o in outputs)
    return {"prompts": len(outputs), "identical": len(outputs) - len(mismatches), "mismatches": mismatches,
            "output_tokens": tokens, "verify_cycles": cycles, "tau": tokens / cycles if cycles else None}


# -- main -------------------------------------------------------------------------------------------------------
def default_tag(setup: Setup) -> str:
    return slug(f"{setup.backend} {setup.tree.describe()} {' '.join(setup.extra_server_args)}")


def results_tag(args: argparse.Namespace, setup: Setup) -> str:
    if not args.tag:
        return default_tag(setup)
    return slug(f"{args.tag} {setup.tree.describe()}") if args.also_tree else args.tag


def main(argv: list[str] | None = None) -> int:
    add_torchvision_stub()
    args = parse_args(argv)
    require_packages(("httpx", "psutil", "jsonschema"))
    started, start_load = time.monotonic(), load_average()
    names = ["none", *(name for name in args.configs if name != "none")]  # the reference always runs first
    setup = prepare_servers(args, names)
    labels = [(bench, item_id) for bench in args.benches for item_id in setup.prompts[bench].ids]
    texts = [text for bench in args.benches for text in setup.prompts[bench].texts]
    trees = [setup.tree, *args.also_tree]
    print(f"checking {names[1:]} against no speculation on {setup.device} ({setup.backend} server), tree "
          f"{', '.join(t.describe() for t in trees)}, {len(texts)} prompts x {args.max_tokens} tokens, greedy",
          flush=True)
    reference, *spec_configs = setup.configs
    with start_server(args, setup, reference, args.concurrency) as server:
        reported = check_server(server.server_info(), reference, setup.tree)
        reference_outputs = generate_greedy(server.spec.url, texts, args.max_tokens, args.concurrency)
        reference_record = config_record(setup, reference, server, reported)
    all_lossless = True
    for tree in trees:
        tree_setup = replace(setup, tree=tree)
        configs, checks = [reference_record], []
        for config in spec_configs:
            with start_server(args, tree_setup, config, args.concurrency) as server:
                reported = check_server(server.server_info(), config, tree)
                outputs = generate_greedy(server.spec.url, texts, args.max_tokens, args.concurrency)
                configs.append(config_record(tree_setup, config, server, reported))
            checks.append(report_check(config.name, tree, compare(reference_outputs, outputs, labels)))
        lossless = all(not c["mismatches"] for c in checks)
        all_lossless = all_lossless and lossless
        results = {
            "schema_version": 1, "kind": "lossless", "created": now_iso(), "device": setup.device,
            "command": ["python", "bench/lossless.py", *(sys.argv[1:] if argv is None else argv)],
            "host": host_info(setup.device), "duration_s": round(time.monotonic() - started, 1),
            "load_average": {"start": start_load, "end": load_average()},
            "settings": {"backend_server": setup.backend, "target": str(setup.target), "tree": tree.to_dict(),
                         "benches": args.benches, "prompt_ids": {b: p.ids for b, p in setup.prompts.items()},
                         "max_tokens": args.max_tokens, "concurrency": args.concurrency,
                         "sampling_params": {"temperature": 0.0, "max_new_tokens": args.max_tokens},
                         "server_args": setup.extra_server_args},
            "configs": configs, "checks": checks, "lossless": lossless,
        }
        path = write_json(setup.out / f"lossless-{results_tag(args, tree_setup)}.json", results, "lossless")
        print(f"wrote {path}: {'lossless' if lossless else 'NOT LOSSLESS'}", flush=True)
    written = report.write_report(setup.out)
    print(f"wrote {written}", flush=True)
    return 0 if all_lossless else 1


def report_check(name: str, tree: Tree, comparison: dict[str, Any]) -> dict[str, Any]:
    """Print one configuration's comparison with the reference; return it as the results record it is."""
    c = {"config": name, **comparison}
    tau = f", tau {c['tau']:.2f}" if c["tau"] else ""
    print(f"[{name} {tree.describe()}] {c['identical']}/{c['prompts']} outputs identical to no speculation{tau}",
          flush=True)
    for m in c["mismatches"]:
        print(f"  {m['bench']} {m['id']}: first differs at token {m['first_divergence']} "
              f"({m['output_tokens']} vs {m['reference_tokens']} tokens)", flush=True)
    return c


if __name__ == "__main__":
    sys.exit(script_main(main))
