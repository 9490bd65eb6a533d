#!/usr/bin/env bash
# PRISM (M = 2, table 0,1) vs EAGLE-3 (M = 1) for SmolLM2-135M-Instruct: same data (ShareGPT's own assistant
# turns), same code, same optimizer steps and tokens, at several data sizes; tau with 95% intervals from
# `prism-sglang eval` (T = 0, chain 5/1) on MT-bench, HumanEval and GSM8K prompts no run trained on.
# The two architectures train side by side, one torch thread each, so both see the same machine.
# Resumable: finished runs and evaluations are skipped. Results: $RUN/summary.tsv and $RUN/*/eval.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/prism-vs-eagle3}
SIZES=${SIZES:-"50 100 200"}   # conversations (each trained for one epoch: every token fresh)
MAX_LENGTH=${MAX_LENGTH:-512}
VOCAB=${VOCAB:-8192}
TTT=${TTT:-6}
BATCH=${BATCH:-2}
LR=${LR:-1e-3}
EVAL_LIMIT=${EVAL_LIMIT:-10}   # prompts per bench (MT-bench: both turns)
EVAL_TOKENS=${EVAL_TOKENS:-96}
prism() { "$PY" -m prism_sglang.cli "$@"; }

if [[ ! -f "$RUN/data/train.jsonl" ]]; then
  prism prepare-data --out "$RUN/data" --source sharegpt=100000 --keep-answers --max-turns 8 --max-prompt-tokens 1024
fi

# --no-group-by-length: the shuffled batches the recorded run trained on (length grouping became train's default later)
series() {  # series NAME MODULES TABLE: train then evaluate every size, in order
  local name=$1 modules=$2 table=$3 size
  for size in $SIZES; do
    local out="$RUN/$name-$size"
    if [[ ! -f "$out/summary.json" ]]; then
      OMP_NUM_THREADS=1 prism train --data "$RUN/data/train.jsonl" --limit "$size" --out "$out" \
        --modules "$modules" --table "$table" --draft-vocab-size "$VOCAB" --ttt-steps "$TTT" --batch-size "$BATCH" \
        --lr "$LR" --max-length "$MAX_LENGTH" --epochs 1 --precision bf16 --no-group-by-length --resume > "$out.train.log" 2>&1
    fi
    if [[ ! -f "$out/eval.json" ]]; then
      OMP_NUM_THREADS=1 prism eval --draft "$out/final" --bench mt-bench,humaneval,gsm8k --limit "$EVAL_LIMIT" \
        --max-new-tokens "$EVAL_TOKENS" --num-steps 5 --topk 1 --no-baseline --out "$out/eval.json.tmp" \
        > "$out.eval.log" 2>&1
      mv "$out/eval.json.tmp" "$out/eval.json"
    fi
  done
}
mkdir -p "$RUN"
series eagle3 1 0 & eagle3=$!
series prism 2 0,1 & prism=$!
wait "$eagle3" "$prism"

# shellcheck disable=SC2086  # SIZES is a list of sizes: one argument each
"$PY" - "$RUN" $SIZES <<'PY'
import json, sys
from pathlib import Path
run, sizes = Path(sys.argv[1]), sys.argv[2:]
lines = ["arch\tconversations\ttokens\tsteps\ttrain_s\ttau\tci95_low\tci95_high\tper_position"]
for arch in ("eagle3", "prism"):
    for size in sizes:
        d = run / f"{arch}-{size}"
        summary, report = json.loads((d / "summary.json").read_text()), json.loads((d / "eval.json").read_text())
        tau = report["all"]["tau"]
        pos = " ".join(f"{p:.3f}" if p is not None else "-" for p in report["all"]["per_position_acceptance"])
        lines.append(f"{arch}\t{size}\t{summary.get('tokens')}\t{summary.get('steps')}\t"
                     f"{summary.get('seconds')}\t{tau['mean']:.3f}\t{tau['ci95'][0]:.3f}\t{tau['ci95'][1]:.3f}\t{pos}")
(run / "summary.tsv").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
