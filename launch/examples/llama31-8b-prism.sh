#!/usr/bin/env bash
# Llama-3.1-8B-Instruct with your PRISM draft, on one GPU (an 80 GB H100 or similar).
#   DRAFT_PATH=runs/llama31-prism/final launch/examples/llama31-8b-prism.sh [more sglang flags]
# Train the draft first (on a GPU; the target's own answers as data, see README):
#   prism-sglang prepare-data --target /models/Llama-3.1-8B-Instruct --out runs/llama31-data
#   prism-sglang train --target /models/Llama-3.1-8B-Instruct --data runs/llama31-data/train.jsonl \
#       --modules 2 --out runs/llama31-prism
# The hub model is gated: accept its licence and export HF_TOKEN, or set MODEL_PATH to a local copy.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${DRAFT_PATH:?set DRAFT_PATH to your PRISM draft for Llama-3.1-8B-Instruct (e.g. runs/llama31-prism/final)}"

# PRISM paper tree (6 steps, 4 branches, 16 verified tokens): serve.sh's defaults, spelled out here.
MODEL_PATH=${MODEL_PATH:-meta-llama/Llama-3.1-8B-Instruct} NUM_STEPS=${NUM_STEPS:-6} TOPK=${TOPK:-4} \
    NUM_DRAFT_TOKENS=${NUM_DRAFT_TOKENS:-16} \
    exec "$here/../serve.sh" --dtype bfloat16 --mem-fraction-static 0.8 "$@"
