#!/usr/bin/env bash
# The PRISM paper's recipe on the same budget as recipes/prism-vs-eagle3.sh's largest size: upcycle the EAGLE-3
# draft trained on the first HALF conversations (its run eagle3-HALF) to PRISM (M = 2, table 0,1: both modules start
# as copies of its layer), fine-tune it on the next HALF with the same settings, and evaluate it like the others.
# Its line then trained on the same FULL = 2 x HALF conversations, tokens and (about) optimizer steps as eagle3-FULL
# and prism-FULL. Run after recipes/prism-vs-eagle3.sh (it reads that run's data, eagle3-HALF and feature cache).
# Resumable like it. Results: $RUN/prism-upcycled-HALF+HALF/{summary,eval}.json, a row of $RUN/summary.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/prism-vs-eagle3}
HALF=${HALF:-800}
MAX_LENGTH=${MAX_LENGTH:-768}
TTT=${TTT:-6}
BATCH=${BATCH:-4}
LR=${LR:-1e-3}
EVAL_LIMIT=${EVAL_LIMIT:-20}
EVAL_TOKENS=${EVAL_TOKENS:-96}
prism() { "$PY" -m prism_sglang.cli "$@"; }

out="$RUN/prism-upcycled-$HALF+$HALF"
next="$RUN/data/conversations-$HALF-to-$((2 * HALF)).jsonl"
if [[ ! -f "$next" ]]; then  # --limit 2*HALF's conversations that --limit HALF does not hold (nested seeded subsets)
  "$PY" - "$RUN/data/train.jsonl" "$HALF" "$next" <<'PY'
import json, sys
from prism_sglang.train.pipeline import load_conversations, subset
data, half, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conversations = load_conversations(data, print)
first = {json.dumps(c) for c in subset(conversations, half, seed=0)}
second = [c for c in subset(conversations, 2 * half, seed=0) if json.dumps(c) not in first]
with open(out + ".tmp", "w") as f:
    f.writelines(json.dumps({"messages": c}) + "\n" for c in second)
print(f"{len(second)} conversations -> {out}")
PY
  mv "$next.tmp" "$next"
fi
if [[ ! -d "$out/init" ]]; then
  prism upcycle --from "$RUN/eagle3-$HALF/final" --modules 2 --table 0,1 --out "$out/init.tmp"
  mv "$out/init.tmp" "$out/init"
fi
if [[ ! -f "$out/summary.json" ]]; then
  prism train --data "$next" --init-from "$out/init" --out "$out" --ttt-steps "$TTT" --batch-size "$BATCH" \
    --lr "$LR" --max-length "$MAX_LENGTH" --epochs 1 --precision bf16 --feature-cache "$RUN/features" \
    --save-every 100 --resume > "$out.train.log" 2>&1
fi
PY=$PY EVAL_LIMIT=$EVAL_LIMIT EVAL_TOKENS=$EVAL_TOKENS recipes/eval-draft.sh "$out"
"$PY" bench/arch_comparison.py "$RUN"   # the table of every run, this one included
