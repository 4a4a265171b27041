#!/usr/bin/env bash
# `make demo`: the whole LLM2Comp pipeline on the real SmolLM2-135M, sized for a few minutes on 2 CPU cores:
# prep -> stage 1 (kl) -> stage 2 (ucl) -> stage 3 (scl), each exported and scored on STS-B, against the
# base model with mean pooling. The commands are the full-scale ones; only the recipes' sizes differ.
# --full (or DEMO_FULL=1; `make demo FULL=1`) also scores the base model and the final encoder on six MTEB tasks
# (`llm2comp eval mteb --benchmark llm2comp-offline6`, DATA/mteb), encoded in bf16 where the CPU has it: about
# 12 minutes more on 2 CPU cores (4 for the base model, 8 for the encoder: instructions and memory tokens).
# It leaves out the two retrieval tasks of llm2comp-offline (SciFact, NFCorpus): their ~2.9 M document tokens
# take SmolLM2-135M over an hour per model on 2 cores (docs/EVAL.md), several times the whole demo.
set -euo pipefail
FULL=${DEMO_FULL:-0}
positional=()
for a in "$@"; do
  if [ "$a" = --full ]; then FULL=1; else positional+=("$a"); fi
done
set -- ${positional[@]+"${positional[@]}"}
DATA=${1:-../shared/data}
OUT=${2:-demo_out}
STEPS=${DEMO_STEPS:-}            # optimizer steps per stage (default: the demo recipes')
SEED=${DEMO_SEED:-0}
# STS-B test pairs scored: all of them by default. A number N scores a fixed sample stratified by source set
# and gold score (launch/demo_data.py), quicker but no estimate of the whole set: 300 lay 3.5-4.9 points from
# it for three of four encoders (docs/RESULTS.md).
STS_PAIRS=${DEMO_STS_PAIRS:-all}
LLM2COMP=${LLM2COMP:-.venv/bin/llm2comp}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
# One table is the point: keep library progress bars and deprecation notices out of it.
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONWARNINGS=ignore::FutureWarning

MODEL=$($LLM2COMP models pull smollm2-135m | tail -n 1)

# Data: the shared data set when present, else public hub datasets when the network allows (exit 2 if neither).
"$PY" launch/demo_data.py "$DATA" "$OUT" "$STS_PAIRS"

echo "== prep (tokenize into Arrow shards)"
$LLM2COMP prep compression --input "$OUT/samples/paragraphs.jsonl" --tokenizer "$MODEL" --output "$OUT/data/compression" \
  --max-tokens 128 --min-context 48 --min-continuation 16 --no-progress --overwrite --workers 2 | sed -n 1p
$LLM2COMP prep sentences --input "$OUT/samples/sentences.txt" --tokenizer "$MODEL" --output "$OUT/data/sentences" \
  --max-tokens 48 --no-progress --overwrite --workers 2 | sed -n 1p
$LLM2COMP prep pairs --input "$OUT/samples/pairs.jsonl" --tokenizer "$MODEL" --output "$OUT/data/pairs" --max-tokens 48 \
  --instruction "Retrieve a sentence entailed by the given one" --no-progress --overwrite --workers 2 | sed -n 1p

score() {  # score MODEL_DIR NAME [eval args]
  local dir=$1 name=$2; shift 2
  $LLM2COMP eval sts --model "$dir" --data "$OUT/sts" --output "$OUT/eval/$name.json" --no-progress "$@" > /dev/null
}
mkdir -p "$OUT/eval"
echo "== base model, mean pooling"
score "$MODEL" "0-base-mean" --pooling mean

common=(train.progress=false resume=never "seed=$SEED")
[ -z "$STEPS" ] || common+=("max_steps=$STEPS")
# bf16 where the CPU has bf16 matrix instructions (about 2x fp32 there, and what the full recipes use);
# fp32 elsewhere, where bf16 would be emulated and slower. DEMO_PRECISION=fp32|bf16 decides by hand.
precision=${DEMO_PRECISION:-$(grep -qsE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo bf16 || echo fp32)}
if [ "$precision" = bf16 ]; then common+=(model.dtype=bfloat16 train.precision=bf16); fi
echo "== training in $precision"
echo "== stage 1: compression pretraining (kl)"
$LLM2COMP pretrain --config launch/recipes/demo-smollm2-pretrain.yaml "data=$OUT/data/compression" \
  "output_dir=$OUT/runs/stage1" "${common[@]}" 2>&1 | grep -E "^(training|eval at|done)" | sed 's/; held-out:.*//' || true
echo "== stage 2: unsupervised contrastive"
$LLM2COMP contrast --config launch/recipes/demo-smollm2-ucl.yaml "data=$OUT/data/sentences" "init_from=$OUT/runs/stage1" \
  "output_dir=$OUT/runs/stage2" "${common[@]}" 2>&1 | grep -E "^(training|done)" || true
echo "== stage 3: supervised contrastive"
$LLM2COMP contrast --config launch/recipes/demo-smollm2-scl.yaml "data=$OUT/data/pairs" "init_from=$OUT/runs/stage2" \
  "output_dir=$OUT/runs/stage3" "${common[@]}" 2>&1 | grep -E "^(training|done)" || true

for s in 1 2 3; do
  [ -e "$OUT/runs/stage$s/final/lineage.json" ] || { echo "demo: stage $s did not finish (see above)" >&2; exit 1; }
  $LLM2COMP export --run "$OUT/runs/stage$s" --output "$OUT/export/stage$s" > /dev/null
  score "$OUT/export/stage$s" "stage$s"
done

if [ "$FULL" = 1 ]; then
  # Six MTEB tasks through the mteb package: from DATA/mteb when present, else the datasets cache or the Hub.
  mteb_data=(); [ -d "$DATA/mteb" ] && mteb_data=(--data-dir "$DATA/mteb")
  mteb_dtype=$([ "$precision" = bf16 ] && echo bfloat16 || echo float32)
  echo "== MTEB, six tasks (base model, final encoder; encoding in $precision). Not the two retrieval tasks:"
  echo "   over an hour per model on 2 cores; llm2comp eval mteb --benchmark llm2comp-offline scores all eight"
  rm -rf "$OUT/mteb"
  mteb() {  # mteb MODEL NAME [eval args]
    local dir=$1 name=$2; shift 2
    $LLM2COMP eval mteb --model "$dir" --benchmark llm2comp-offline6 ${mteb_data[@]+"${mteb_data[@]}"} \
      --output "$OUT/mteb/$name" --dtype "$mteb_dtype" --no-progress "$@" | grep "not evaluated" || true
  }
  mteb "$MODEL" "0-base-mean" --pooling mean
  mteb "$OUT/export/stage3" "stage3"
fi

"$PY" - "$OUT" <<'PY'
import json, os, sys
import yaml
out = sys.argv[1]
steps = [yaml.safe_load(open(f"{out}/runs/stage{s}/recipe.yaml"))["train"]["max_steps"] for s in (1, 2, 3)]
rows = [("SmolLM2-135M, mean pooling (no training)", "0-base-mean"), (f"+ stage 1, compression (kl), {steps[0]} steps", "stage1"),
        (f"+ stage 2, unsupervised contrastive, {steps[1]} steps", "stage2"),
        (f"+ stage 3, supervised contrastive, {steps[2]} steps", "stage3")]
evals = [r for r in map(json.loads, open(f"{out}/runs/stage1/metrics.jsonl")) if r.get("eval")]
first, last = evals[0], evals[-1]
print(f"\nStage 1, {last['windows']} held-out windows: KL from the full-context teacher (nats per token), "
      f"no memory -> the K memory tokens")
print(f"  before training {first['kl_no_memory']:.3f} -> {first['kl_memory']:.3f} (recovered {first['recovered']:.3f}); "
      f"after {steps[0]} steps {last['kl_no_memory']:.3f} -> {last['kl_memory']:.3f} (recovered {last['recovered']:.3f})")
which = open(f"{out}/samples/sts_selection.txt").read().strip()  # written by launch/demo_data.py
mteb = {name: json.load(open(f"{out}/mteb/{name}/summary.json")) for _, name in rows
        if os.path.exists(f"{out}/mteb/{name}/summary.json")}
print(f"\nSTS Benchmark test, {which}: Spearman x100 of cosine similarity"
      + ("; MTEB: the average main score x100 over six tasks (llm2comp-offline6)" if mteb else "") + "\n")
print("| model | STS-B |" + (" MTEB (6 tasks) |" if mteb else "") + "\n|---|---:|" + ("---:|" if mteb else ""))
for label, name in rows:
    cell = ""
    if mteb:
        cell = f" {mteb[name]['aggregate']['average']:.2f} |" if name in mteb else " - |"
    print(f"| {label} | {json.load(open(f'{out}/eval/{name}.json'))['results']['STSBenchmark']['spearman']:.2f} |{cell}")
if mteb:
    tasks = list(next(iter(mteb.values()))["results"])
    print("\n| MTEB task | " + " | ".join(label.split(",")[0] for label, name in rows if name in mteb) + " |")
    print("|---|" + "---:|" * len(mteb))
    for t in tasks:
        print(f"| {t} | " + " | ".join(f"{m['results'][t]['main_score']:.2f}" if t in m["results"] else ""
                                       for m in mteb.values()) + " |")
print(f"\nEncoders: {out}/export/stage*/ (Encoder.from_pretrained, llm2comp encode).")
print("Demo-sized: a few dozen steps per stage on a CPU, one seed.")
print("It shows the pipeline end to end; measured reproductions are in docs/RESULTS.md.")
PY
