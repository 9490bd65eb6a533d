#!/usr/bin/env bash
# The EAGLE-3 comparison for llama31-8b-prism.sh: same target, same tree, same flags, stock
# `--speculative-algorithm EAGLE3`, with the authors' public EAGLE-3 draft (downloaded once to the HF cache).
#   launch/examples/llama31-8b-eagle3.sh [more sglang flags]
# For a like-for-like baseline, train an EAGLE-3 draft on the same data and budget as the PRISM one
# (`prism-sglang train --modules 1 ...`) and pass DRAFT_PATH=runs/llama31-eagle3/final.
# Serve one at a time on the same GPU and benchmark both the same way (bench/, or sglang.bench_serving).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

if [ -z "${DRAFT_PATH:-}" ]; then
    DRAFT_PATH=$("$python" -c 'from huggingface_hub import snapshot_download as s
print(s("yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"))')
fi
ALGORITHM=EAGLE3 DRAFT_PATH=$DRAFT_PATH MODEL_PATH=${MODEL_PATH:-meta-llama/Llama-3.1-8B-Instruct} \
    NUM_STEPS=${NUM_STEPS:-6} TOPK=${TOPK:-4} NUM_DRAFT_TOKENS=${NUM_DRAFT_TOKENS:-16} \
    exec "$here/../serve.sh" --dtype bfloat16 --mem-fraction-static 0.8 "$@"
