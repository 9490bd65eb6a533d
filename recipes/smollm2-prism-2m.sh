#!/usr/bin/env bash
# The shipped PRISM draft of 2026-12-04: the 2026-11-23 PRISM draft (recipes/smollm2-drafts.sh) fine-tuned on
# 2.0M fresh tokens, ShareGPT's own assistant turns labelled by SmolLM2's distribution (the PRISM paper's
# recipe: no generation). One epoch of 800 optimizer steps of 4 conversations (<= 768 tokens), bf16, TTT 6.
# On the 2-core CPU it took 69 min of training (4,159 s; the run was stopped at step 155 and resumed from its
# step-150 checkpoint, the same schedule). Usage: bash recipes/smollm2-prism-2m.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/smollm2-prism-2m}
PY=${PYTHON:-.venv/bin/python}
prism() { "$PY" -m prism_sglang.cli "$@"; }
prism prepare-model smollm2
# the starting point: the PRISM draft shipped until 2026-12-04, from git history (it was replaced by this run's)
INIT="$RUN/init"; mkdir -p "$INIT"
for f in config.json model.safetensors; do
  git show "497773a:src/prism_sglang/drafts/smollm2-prism/$f" > "$INIT/$f"
done
# 9,251 conversations (evaluation prompts refused), 12 s
prism prepare-data --out "$RUN/data" --source sharegpt=100000 --keep-answers --max-turns 8 --max-prompt-tokens 1024
# --no-group-by-length: the shuffled batches the recorded run trained on (length grouping became train's default later)
prism train --data "$RUN/data/train.jsonl" --out "$RUN/prism" --init-from "$INIT" \
  --modules 2 --table 0,1 --ttt-steps 6 --batch-size 4 --lr 5e-4 --max-length 768 --precision bf16 \
  --max-steps 800 --save-every 50 --no-group-by-length --resume
prism eval --draft "$RUN/prism/final" --bench mt-bench,humaneval,gsm8k --limit 10 --num-steps 5 --topk 1 \
  --max-new-tokens 96 --no-baseline --out "$RUN/eval-5-1.json"
