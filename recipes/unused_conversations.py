"""The conversations of a chat JSONL file that a training run of N optimizer steps never reached.

`prism-sglang train` forms the batches of an epoch from a seeded order (grouped by length unless
--no-group-by-length), one per step, so a run of N steps saw exactly the first N batches of epoch 0. This
replays that order (same tokenizer, same `--max-length`, `--batch-size`, `--seed`, batching) and writes the
other conversations: fresh data for continuing the run's draft. It prints the tokens the replayed steps covered;
compare with the run's summary.json `tokens`.

    python recipes/unused_conversations.py DATA.jsonl OUT.jsonl --steps 800 --batch-size 4 --max-length 768
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.train.data import batches, tokenize_conversation
from prism_sglang.train.pipeline import load_conversations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the run's --data file")
    p.add_argument("out", help="where to write the conversations it did not reach")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps the run took")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="the run's batching (train's default: grouped; runs before 2026-12-07 were not)")
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct, prepared)")
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.target or str(prepare_smollm2()))
    conversations = load_conversations(args.data, print)
    # train drops conversations with nothing to learn before it numbers its examples: do the same
    examples = [(i, e) for i, e in enumerate(tokenize_conversation(tokenizer, c, args.max_length)
                                             for c in conversations) if e is not None]
    epoch = batches([e for _, e in examples], args.batch_size, args.seed, epoch=0,
                    group_by_length=args.group_by_length)
    if args.steps > len(epoch):
        raise SystemExit(f"{args.steps} steps is more than one epoch ({len(epoch)} batches): nothing is unused")
    used = {k for batch in epoch[: args.steps] for k in batch}
    seen_tokens = sum(len(examples[k][1].input_ids) for k in used)
    fresh = [conversations[i] for k, (i, _) in enumerate(examples) if k not in used]
    with open(args.out, "w") as f:
        for messages in fresh:
            f.write(json.dumps({"messages": messages}) + "\n")
    print(f"{len(used)} conversations ({seen_tokens} tokens) were reached by {args.steps} steps; "
          f"{len(fresh)} unused ones written to {args.out}")


if __name__ == "__main__":
    main()
