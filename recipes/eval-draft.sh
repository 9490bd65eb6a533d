#!/usr/bin/env bash
# The architecture comparison's evaluation of one trained run, skipped when done:
#   recipes/eval-draft.sh RUN_DIR   ->  RUN_DIR/eval.json (the report), RUN_DIR.eval.log
# `prism-sglang eval` of RUN_DIR/final on EVAL_LIMIT prompts each of MT-bench, HumanEval and GSM8K, EVAL_TOKENS new
# tokens, T = 0, chain 5/1, target-only decoding skipped, one thread (runs side by side see the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EVAL_LIMIT=${EVAL_LIMIT:-20}
EVAL_TOKENS=${EVAL_TOKENS:-96}
run=${1:?usage: recipes/eval-draft.sh RUN_DIR}
if [[ ! -f "$run/eval.json" ]]; then
  OMP_NUM_THREADS=1 "$PY" -m prism_sglang.cli eval --draft "$run/final" --bench mt-bench,humaneval,gsm8k \
    --limit "$EVAL_LIMIT" --max-new-tokens "$EVAL_TOKENS" --num-steps 5 --topk 1 --no-baseline \
    --out "$run/eval.json.tmp" > "$run.eval.log" 2>&1
  mv "$run/eval.json.tmp" "$run/eval.json"
fi
