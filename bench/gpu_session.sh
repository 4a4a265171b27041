#!/usr/bin/env bash
# The prepared GPU session (bench/session.py says what it measures), on one lent H100/H200 whose image has
# torch, transformers, peft and triton but not our versions of them, nor deepspeed: the wheels built here by
# `python bench/carry_wheels.py` travel in .whl/ and are installed into a target folder first.
#
#   bash bench/gpu_session.sh [--budget-s 540]     # on the GPU machine: $OUT gets session.json, session.log
#   bash bench/gpu_session.sh --smoke              # the same parts and files on the CPU, tiny shapes (make test)
#
# On the device: run(command="LLM2COMP_COMMIT=<commit> bash bench/gpu_session.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; [ -x .venv/bin/python ] && PY=.venv/bin/python
smoke=0; for arg in "$@"; do [ "$arg" = --smoke ] && smoke=1; done
if [ "$smoke" = 0 ] && [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then  # built for the device's Python
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || echo "!! installing the carried wheels failed"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore DS_BUILD_OPS=0
exec $PY bench/session.py "$@"
