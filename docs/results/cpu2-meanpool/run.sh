#!/bin/bash
# Diagnostic (issue 27): the memory-pooled stage-2 exports of kl and none (seed 0) scored with mean pooling over
# their text tokens instead: the same weights and bidirectional attention, no memory tokens. Run from the
# project root after `launch/reproduce_smollm2.py --profile cpu2` has exported kl-ucl and none-ucl; writes here.
set -euo pipefail
OUT=$(dirname "$0"); EXPORTS=runs/repro-cpu2/export; WORK=$(mktemp -d)
export OMP_NUM_THREADS=1
for v in kl-ucl none-ucl; do
  mkdir "$WORK/$v-as-mean"
  for f in "$EXPORTS/$v"/*; do
    case $(basename "$f") in memory.safetensors|llm2comp_config.json) ;; *) ln -s "$PWD/$f" "$WORK/$v-as-mean/";; esac
  done
  python -c "import json, sys; c = json.load(open(sys.argv[1])); c.update(pooling='mean', memory_tokens=0)
json.dump(c, open(sys.argv[2], 'w'), indent=2)" "$EXPORTS/$v/llm2comp_config.json" "$WORK/$v-as-mean/llm2comp_config.json"
  for s in dev test; do
    llm2comp eval sts --model "$WORK/$v-as-mean" --data runs/repro-cpu2/sts-$s --stsb-split $s --output "$OUT/$v-as-mean.$s.json" --no-progress
  done
  llm2comp eval mteb --model "$WORK/$v-as-mean" --benchmark llm2comp-offline --data-dir ../shared/data/mteb \
    --output "$WORK/mteb-$v" --dtype bfloat16 --no-progress
  cp "$WORK/mteb-$v/summary.json" "$OUT/$v-as-mean.mteb.json"
done
