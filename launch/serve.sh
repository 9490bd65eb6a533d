#!/usr/bin/env bash
# Start an SGLang 0.5.17 server that decodes speculatively with a PRISM draft. The Docker image's entry point
# (through docker-entrypoint.sh); runs as well on any host with sglang 0.5.17 and prism-sglang installed.
# Everything is explained by `serve.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: serve.sh [--model-path MODEL] [--draft-path DRAFT] [SGLANG_ARGS...]

Runs `python -m sglang.launch_server` with speculative decoding by a PRISM draft:
  --model-path MODEL --speculative-algorithm PRISM --speculative-draft-model-path DRAFT
  --speculative-num-steps NUM_STEPS --speculative-eagle-topk TOPK
  --speculative-num-draft-tokens NUM_DRAFT_TOKENS --host HOST --port PORT
followed by SGLANG_ARGS, unchanged: any other sglang.launch_server flag (--mem-fraction-static 0.8,
--attention-backend triton, --enable-metrics, ...). Coming last, they also override the flags above.

Options (each has an environment variable; the option wins):
  --model-path MODEL  MODEL_PATH  target model: a local HF folder or a hub id (gated ones need HF_TOKEN).
                                  Required with --draft-path; with the default draft it defaults
                                  to HuggingFaceTB/SmolLM2-135M-Instruct
  --draft-path DRAFT  DRAFT_PATH  draft folder (config.json + *.safetensors), e.g. OUT/final of
                                  `prism-sglang train`; alias --speculative-draft-model-path.
                                  Default: the PRISM draft shipped in the installed prism-sglang
                                  package (smollm2-prism, for SmolLM2-135M-Instruct)
  -h, --help                      show this text

Environment:
  HOST              127.0.0.1 (0.0.0.0 in the Docker image)
  PORT              30000
  NUM_STEPS         6   draft steps per cycle = tree depth             (--speculative-num-steps)
  TOPK              4   branches kept per draft step                   (--speculative-eagle-topk)
  NUM_DRAFT_TOKENS  16  tree tokens verified per cycle, root included  (--speculative-num-draft-tokens);
                        with TOPK=1 SGLang requires NUM_STEPS+1, which is then the default
  ALGORITHM         PRISM; EAGLE3 serves an EAGLE-3 draft with the same settings, for comparisons
  PYTHON            python3: the Python that has sglang 0.5.17 and prism-sglang
  DRY_RUN=1         run the checks, then print the command instead of starting the server

6/4/16 is the PRISM paper's tree (6 steps = the depth drafts are trained for, `prism-sglang train
--ttt-steps 6`); a tree gives the best latency at small batch sizes. For large batches, or rejection
sampling at temperature > 0 (--speculative-use-rejection-sampling, chains only), use chains:
TOPK=1 NUM_STEPS=5 (6 draft tokens).

Before starting, serve.sh stops with a clear message if the draft folder is missing or incomplete, or if
sglang is not patched for PRISM (`prism-sglang patch-sglang --check`; the Docker image is patched when it
is built). The server is ready when GET http://HOST:PORT/health answers 200.

Examples:
  serve.sh                                            # SmolLM2-135M-Instruct + the shipped PRISM draft
  serve.sh --model-path meta-llama/Llama-3.1-8B-Instruct --draft-path runs/llama31-prism/final
  TOPK=1 NUM_STEPS=5 serve.sh --model-path M --draft-path D --mem-fraction-static 0.8
  DRY_RUN=1 serve.sh --draft-path D --model-path M    # print the sglang command line
EOF
}

fail() {
    printf 'serve.sh: error: %s\n' "$*" >&2
    exit 1
}

model=${MODEL_PATH:-}
draft=${DRAFT_PATH:-}
extra=()
while [ "$#" -gt 0 ]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --model-path | --draft-path | --speculative-draft-model-path)
            [ "$#" -ge 2 ] || fail "$1 needs a value"
            if [ "$1" = --model-path ]; then model=$2; else draft=$2; fi
            shift 2
            ;;
        --model-path=*) model=${1#*=}; shift ;;
        --draft-path=* | --speculative-draft-model-path=*) draft=${1#*=}; shift ;;
        *) extra+=("$1"); shift ;;
    esac
done

python=${PYTHON:-python3}
host=${HOST:-127.0.0.1}
port=${PORT:-30000}
algorithm=${ALGORITHM:-PRISM}
num_steps=${NUM_STEPS:-6}
topk=${TOPK:-4}
num_draft_tokens=${NUM_DRAFT_TOKENS:-}
for setting in "NUM_STEPS=$num_steps" "TOPK=$topk" "NUM_DRAFT_TOKENS=${num_draft_tokens:-1}" "PORT=$port"; do
    [[ ${setting#*=} =~ ^[1-9][0-9]*$ ]] || fail "${setting%%=*} must be a positive integer, got '${setting#*=}'"
done
if [ -z "$num_draft_tokens" ]; then
    if [ "$topk" = 1 ]; then num_draft_tokens=$((num_steps + 1)); else num_draft_tokens=16; fi
fi

command -v "$python" >/dev/null || fail "no Python '$python' (set PYTHON to the one with sglang 0.5.17)"
"$python" -c 'import prism_sglang' 2>/dev/null ||
    fail "prism-sglang is not installed in $python (launch/install-into-image.sh WHEEL, or use the Docker image)"

# The default pair: SmolLM2-135M-Instruct and the PRISM draft trained for it, shipped inside the package.
if [ -z "$draft" ]; then
    if [ -n "$model" ]; then
        echo "serve.sh: note: no draft given: using the shipped one, trained for SmolLM2-135M-Instruct" \
            "(another target needs its own draft: --draft-path)" >&2
    fi
    model=${model:-HuggingFaceTB/SmolLM2-135M-Instruct}
    draft=$("$python" -c 'from prism_sglang.resources import shipped_draft_dir; print(shipped_draft_dir())' 2>&1) ||
        fail "this prism-sglang has no shipped PRISM draft (${draft##*$'\n'});" \
            "give a draft folder with --draft-path or DRAFT_PATH (e.g. OUT/final of prism-sglang train)"
fi
[ -n "$model" ] || fail "no target model: give --model-path or MODEL_PATH (the model DRAFT_PATH=$draft was trained for)"

# The draft must be a local folder: a mistyped path would be taken for a hub id and fail only later.
[ -d "$draft" ] || fail "draft folder '$draft' does not exist (a hub draft: download it first, e.g." \
    "python -c \"from huggingface_hub import snapshot_download as s; print(s('ORG/NAME'))\")"
[ -f "$draft/config.json" ] || fail "draft folder '$draft' has no config.json: not a draft checkpoint"
compgen -G "$draft/*.safetensors" >/dev/null || fail "draft folder '$draft' has no *.safetensors weights"

# PRISM needs sglang patched (the draft step index, EAGLE3 parity); the check also refuses any sglang but 0.5.17.
status=0
report=$("$python" -m prism_sglang.cli patch-sglang --check 2>&1) || status=$?
if [ "$status" -ne 0 ]; then
    printf '%s\n' "$report" >&2
    [ "$status" -ne 2 ] || fail "$python has no usable sglang 0.5.17 (above: what patch-sglang found)"
    fail "sglang in $python is not patched for PRISM: run 'prism-sglang patch-sglang' as the owner of the" \
        "sglang install (the Docker image does this at build time)"
fi

# SGLANG_PLUGINS, when set, whitelists plugins: make sure it lets ours load.
if [ -n "${SGLANG_PLUGINS:-}" ] && [[ ,$SGLANG_PLUGINS, != *,prism,* ]]; then
    export SGLANG_PLUGINS="$SGLANG_PLUGINS,prism"
fi

cmd=("$python" -m sglang.launch_server
    --model-path "$model"
    --speculative-algorithm "$algorithm"
    --speculative-draft-model-path "$draft"
    --speculative-num-steps "$num_steps"
    --speculative-eagle-topk "$topk"
    --speculative-num-draft-tokens "$num_draft_tokens"
    --host "$host"
    --port "$port"
    "${extra[@]}")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q' "${cmd[0]}"
    printf ' %q' "${cmd[@]:1}"
    printf '\n'
    exit 0
fi
printf 'serve.sh: %s draft %s for %s (steps %s, topk %s, %s draft tokens) on http://%s:%s\n' \
    "$algorithm" "$draft" "$model" "$num_steps" "$topk" "$num_draft_tokens" "$host" "$port" >&2
exec "${cmd[@]}"
