#!/usr/bin/env bash
# The EAGLE-3 comparison for smollm2-prism.sh: the EAGLE-3 draft (M = 1: one module for every step) shipped
# inside prism-sglang (smollm2-eagle3), trained on the same data and budget as smollm2-prism, served with
# `--speculative-algorithm EAGLE3` and the same target, tree and flags.
#   launch/examples/smollm2-eagle3.sh [more sglang flags]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

if [ -z "${DRAFT_PATH:-}" ]; then
    DRAFT_PATH=$("$python" -c 'from prism_sglang.resources import BASELINE_DRAFT, shipped_draft_dir
print(shipped_draft_dir(BASELINE_DRAFT))')
fi
ALGORITHM=EAGLE3 DRAFT_PATH=$DRAFT_PATH MODEL_PATH=${MODEL_PATH:-HuggingFaceTB/SmolLM2-135M-Instruct} \
    exec "$here/../serve.sh" --mem-fraction-static 0.3 "$@"
