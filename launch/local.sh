#!/usr/bin/env bash
# A training stage on one machine without SLURM (a workstation): torchrun with one worker a GPU.
#
#   launch/local.sh pretrain|contrast RECIPE [key=value ...]
#   NPROC=2 launch/local.sh pretrain launch/recipes/tiny-cpu-pretrain.yaml data=DIR   # 2 CPU workers on gloo
#
# NPROC defaults to the GPUs torch sees (1 without a GPU). `kill -USR1 <pid of this script>` (or SIGTERM)
# makes the workers checkpoint at the next step boundary and stop with exit 75; running the same command
# again resumes from the newest complete checkpoint (resume=auto), as a requeued SLURM job does.
set -uo pipefail
if [ $# -lt 2 ] || { [ "$1" != pretrain ] && [ "$1" != contrast ]; }; then
  echo "usage: launch/local.sh pretrain|contrast RECIPE [key=value ...]" >&2
  exit 2
fi
stage=$1
recipe=$2
shift 2
[ -f "$recipe" ] || { echo "llm2comp: recipe $recipe not found" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
nproc=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
export TORCHRUN=${TORCHRUN:-"$PYTHON -m torch.distributed.run"}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export LLM2COMP_REQUEUE_FILE=${LLM2COMP_REQUEUE_FILE:-$(mktemp -u "${TMPDIR:-/tmp}/llm2comp-requeue.XXXXXX")}
rm -f "$LLM2COMP_REQUEUE_FILE"

"$here/torchrun_node.sh" --standalone --nnodes 1 --nproc-per-node "$nproc" -m trainer.cli "$stage" --config "$recipe" "$@" &
node=$!
stopping=0
trap 'stopping=1; kill -USR1 "$node"' USR1
trap 'stopping=1; kill -TERM "$node"' TERM
while :; do  # a trapped signal ends `wait` early: wait again for the real exit status
  stopping=0
  wait "$node"
  rc=$?
  [ "$stopping" = 1 ] || break
done
if [ "$rc" -eq 75 ]; then
  echo "llm2comp $stage: stopped on a signal at step $(cat "$LLM2COMP_REQUEUE_FILE") with its checkpoint written;" \
    "run the same command again to resume" >&2
  rm -f "$LLM2COMP_REQUEUE_FILE"
fi
exit "$rc"
