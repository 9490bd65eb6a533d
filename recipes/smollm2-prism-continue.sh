#!/usr/bin/env bash
# The next PRISM draft for SmolLM2: the 2026-12-04 draft (recipes/smollm2-prism-2m.sh) trained further on the
# 5,831 ShareGPT conversations that run never reached (its 800 steps of 4 took 3,200 of 9,031; replayed by
# recipes/unused_conversations.py, which reproduces that run's 2,004,180 tokens exactly), so every token is
# fresh: 3,695,646 more tokens, their own assistant turns labelled by SmolLM2's distribution, <= 768 tokens, TTT 6,
# the 2m run's settings with a new warmup + linear decay over one epoch (1,458 steps; STEPS=N for fewer).
# With it the draft's line has seen 0.17M + 2.0M + 3.7M = 5.9M fresh tokens (34x the 2026-11-23 drafts).
# Run to the end on 2026-12-06/07 (7 sittings, --resume): 1,458 steps, 3,695,646 tokens, 22,420 s of fp32
# training in two data-parallel processes on the 2-core AVX2 host; its final checkpoint is smollm2-prism since then.
# On the 2-core AVX-512 BF16 CPU of the 2m run (~5 s a step in bf16) this epoch is ~2 h.
# On 2026-12-06's AVX2-only host a bf16 matmul measured 37x slower than fp32 (PyTorch's fallback kernel), so
# --precision auto trains in fp32 there: 85 tokens/s in one 1-thread process, 153 in two data-parallel ones
# (bench/results/2026-12-06-cpu/train-scale.json), ~7 h for these 3.7M tokens (train --nproc 2 for that).
# Resumable (--resume): MAX_MINUTES=N stops this run after N minutes of training with a checkpoint (the schedule
# stays one epoch; the eval then measures the draft so far), the next call goes on from there. NPROC=2 trains in
# two data-parallel processes. Usage: [NPROC=2] [MAX_MINUTES=N] bash recipes/smollm2-prism-continue.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/smollm2-prism-continue}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-}
NPROC=${NPROC:-}
MAX_MINUTES=${MAX_MINUTES:-}
prism() { "$PY" -m prism_sglang.cli "$@"; }
prism prepare-model smollm2
INIT="$RUN/init"; mkdir -p "$INIT"
for f in config.json model.safetensors; do   # the 2026-12-04 draft, from git history
  git show "d4fa719:src/prism_sglang/drafts/smollm2-prism/$f" > "$INIT/$f"
done
if [[ ! -f "$RUN/data/train.jsonl" ]]; then   # the 2m run's data: 9,251 conversations, 12 s
  prism prepare-data --out "$RUN/data" --source sharegpt=100000 --keep-answers --max-turns 8 --max-prompt-tokens 1024
fi
if [[ ! -f "$RUN/unused.jsonl" ]]; then   # what the 2m run's 800 steps did not reach (it reports 2,004,180 tokens)
  "$PY" recipes/unused_conversations.py "$RUN/data/train.jsonl" "$RUN/unused.jsonl" --steps 800 --batch-size 4 \
    --max-length 768 --no-group-by-length
fi
# --no-group-by-length: the shuffled batches the recorded run trained on (length grouping became train's default later)
prism train --data "$RUN/unused.jsonl" --out "$RUN/prism" --init-from "$INIT" \
  --ttt-steps 6 --batch-size 4 --lr 5e-4 --max-length 768 --precision auto \
  ${STEPS:+--max-steps "$STEPS"} ${NPROC:+--nproc "$NPROC"} ${MAX_MINUTES:+--max-minutes "$MAX_MINUTES"} \
  --save-every 50 --no-group-by-length --resume
prism eval --draft "$RUN/prism/final" --bench mt-bench,humaneval,gsm8k --limit 10 --num-steps 5 --topk 1 \
  --max-new-tokens 96 --no-baseline --out "$RUN/eval-5-1.json"
