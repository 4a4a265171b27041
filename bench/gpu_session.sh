#!/usr/bin/env bash
# One prepared GPU session (issue 17's figures), under 9 minutes on one H100/H200 whose image has torch,
# transformers, peft and triton only: everything else arrives as wheels in .whl/ (deepspeed built here with
# `pip wheel --no-deps deepspeed==0.19.8`). Each part writes its JSON to $OUT as soon as it ends, so a run
# stopped at its time limit still returns what it measured.
#
#   bash bench/gpu_session.sh            # on the GPU machine (OUT=... or $OUT; .whl/ beside the repo root)
#   bash bench/gpu_session.sh --smoke    # the same code paths on the CPU, tiny model (part of `make test`)
#
# 1. correctness (bench/gpu_checks.py): project vs reference losses in bf16 at the 1.5B shape;
#    bidirectionality under each SDPA backend with and without padding; packed vs unpacked encoder states;
#    compiled vs eager dropout masks and their kernel counts;
# 2. stage 1 at the llama2-7b shape against --baseline (tokens/s, peak memory, MFU vs the measured matmul peak);
# 3. stage 3 at the 7B shape: micro-batches up to 1,024 (stops at the first that does not fit), and chunk sizes;
# 4. encode at the 7B shape: length-sorted, packed, and arbitrary order with padding (texts/s).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-bench/out/gpu_session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
start=$(date +%s)
status=0
log() { echo "== [$(( $(date +%s) - start ))s] $*"; }
run() {  # run NAME CMD...: its output to $OUT/NAME.log as well; a failure is recorded, the session goes on
  local name=$1; shift
  log "$name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log" | grep -vE "^\[.*(WARNING|INFO)" | tail -n 40
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "!! $name exited $rc"; status=1; }
}

$PY - <<'EOF' | tee "$OUT/versions.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for m in ("transformers", "peft", "deepspeed", "triton", "flash_attn"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "not available:", type(e).__name__)
EOF

if [ "$SMOKE" = 1 ]; then
  run checks $PY bench/gpu_checks.py --smoke --out "$OUT"
  common=(--device cpu --model-config tiny --seq 48 --steps 2 --warmup 1)
  run pretrain $PY bench/train_step.py --stage pretrain "${common[@]}" --micro-batch 2 --baseline --json "$OUT/pretrain.json"
  run scl-batch $PY bench/train_step.py --stage scl "${common[@]}" --micro-batch 4 --chunk 4 --json "$OUT/scl-b4-c4.json"
  run encode $PY bench/train_step.py --stage encode "${common[@]}" --micro-batch 8 --repeats 1 --packing 256 --json "$OUT/encode.json"
else
  run checks $PY bench/gpu_checks.py --model-config qwen2-1.5b --out "$OUT"
  run pretrain $PY bench/train_step.py --stage pretrain --model-config llama2-7b --seq 512 --micro-batch 4 \
      --steps 10 --warmup 2 --baseline --gradient-checkpointing --json "$OUT/pretrain.json"
  for b in 256 512 1024; do  # the largest global batch one GPU holds (chunk 32), stopping at the first that fails
    run "scl-b$b" $PY bench/train_step.py --stage scl --model-config llama2-7b --micro-batch $b --chunk 32 \
        --steps 2 --warmup 1 --gradient-checkpointing --json "$OUT/scl-b$b-c32.json"
    grep -q '"status": "ok"' "$OUT/scl-b$b-c32.json" 2> /dev/null || break
  done
  for c in 16 64; do
    run "scl-c$c" $PY bench/train_step.py --stage scl --model-config llama2-7b --micro-batch 256 --chunk $c \
        --steps 2 --warmup 1 --gradient-checkpointing --json "$OUT/scl-b256-c$c.json"
  done
  run encode $PY bench/train_step.py --stage encode --model-config llama2-7b --micro-batch 64 --steps 8 \
      --repeats 2 --packing 8192 --json "$OUT/encode.json"
fi
log "done (exit $status); results in $OUT"
exit $status
