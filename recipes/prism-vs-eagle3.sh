#!/usr/bin/env bash
# PRISM (M = 2, table 0,1) vs EAGLE-3 (M = 1) for SmolLM2-135M-Instruct: same data (ShareGPT's own assistant
# turns), same code, same optimizer steps and tokens, at several data sizes; tau with 95% intervals from
# `prism-sglang eval` (T = 0, chain 5/1) on MT-bench, HumanEval and GSM8K prompts no run trained on.
# The target runs once per conversation: its outputs go to a feature cache (one forward per conversation of the
# largest size; the sizes are nested seeded subsets) that every run reads, so a run's time is the draft's alone.
# The two architectures train side by side, one torch thread each, so both see the same machine.
# Resumable: finished runs and evaluations are skipped. Results: $RUN/summary.tsv (bench/arch_comparison.py) and
# $RUN/*/eval.json.
# The 2026-12-04 runs (50/100/200 conversations) used SIZES="50 100 200" MAX_LENGTH=512 BATCH=2 EVAL_LIMIT=10,
# no feature cache and --no-group-by-length (length grouping became train's default later).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/prism-vs-eagle3}
SIZES=${SIZES:-"400 800 1600"}   # conversations, ascending (one epoch each: every token fresh; ~630 tokens each at 768)
MAX_LENGTH=${MAX_LENGTH:-768}
VOCAB=${VOCAB:-8192}
TTT=${TTT:-6}
BATCH=${BATCH:-4}
LR=${LR:-1e-3}
EVAL_LIMIT=${EVAL_LIMIT:-20}   # prompts per bench (MT-bench: both turns)
EVAL_TOKENS=${EVAL_TOKENS:-96}
prism() { "$PY" -m prism_sglang.cli "$@"; }

if [[ ! -f "$RUN/data/train.jsonl" ]]; then
  prism prepare-data --out "$RUN/data" --source sharegpt=100000 --keep-answers --max-turns 8 --max-prompt-tokens 1024
fi

FEATURES=$RUN/features
LARGEST=${SIZES##* }
if [[ ! -f "$FEATURES/built-$LARGEST" ]]; then
  start=$SECONDS
  prism train --data "$RUN/data/train.jsonl" --limit "$LARGEST" --max-length "$MAX_LENGTH" --precision bf16 \
    --modules 1 --draft-vocab-size "$VOCAB" --feature-cache "$FEATURES" --cache-only --out "$RUN/features-build" \
    > "$RUN/features.log" 2>&1
  echo "$((SECONDS - start)) s (2 threads) for the target's outputs of $LARGEST conversations" > "$FEATURES/built-$LARGEST"
fi

series() {  # series NAME MODULES TABLE: train then evaluate every size, in order
  local name=$1 modules=$2 table=$3 size
  for size in $SIZES; do
    local out="$RUN/$name-$size"
    if [[ ! -f "$out/summary.json" ]]; then
      OMP_NUM_THREADS=1 prism train --data "$RUN/data/train.jsonl" --limit "$size" --out "$out" \
        --modules "$modules" --table "$table" --draft-vocab-size "$VOCAB" --ttt-steps "$TTT" --batch-size "$BATCH" \
        --lr "$LR" --max-length "$MAX_LENGTH" --epochs 1 --precision bf16 --feature-cache "$FEATURES" \
        --save-every 100 --resume > "$out.train.log" 2>&1
    fi
    PY=$PY EVAL_LIMIT=$EVAL_LIMIT EVAL_TOKENS=$EVAL_TOKENS recipes/eval-draft.sh "$out"
  done
}
mkdir -p "$RUN"
series eagle3 1 0 & eagle3=$!
series prism 2 0,1 & prism=$!
wait "$eagle3" "$prism"

"$PY" bench/arch_comparison.py "$RUN"   # $RUN/summary.tsv; --plot PNG draws tau against tokens
