#!/usr/bin/env bash
# One node's share of a training job: `torchrun "$@"`, with the stop signals passed to its workers.
#
#   launch/torchrun_node.sh --nnodes ... --nproc-per-node ... -m trainer.cli pretrain --config RECIPE ...
#
# SIGUSR1 (SLURM's warning before the time limit, or `scancel --signal=USR1`) and SIGTERM go to the workers,
# which checkpoint at the next step boundary and stop. torchrun itself ignores SIGUSR1: its default action
# would kill it and orphan the workers mid-checkpoint. Exit status: torchrun's, or 75 (requeue me) when the
# workers stopped on a signal and left the marker $LLM2COMP_REQUEUE_FILE.
set -uo pipefail
TORCHRUN=${TORCHRUN:-torchrun}

# shellcheck disable=SC2086  # TORCHRUN may be a command with arguments ("python -m torch.distributed.run")
( trap '' USR1; exec $TORCHRUN "$@" ) &
agent=$!
stopping=0
forward() { stopping=1; pkill "-$1" -P "$agent" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
# A trapped signal makes `wait` return early (status > 128): wait again until torchrun itself has exited.
while :; do
  stopping=0
  wait "$agent"
  rc=$?
  [ "$stopping" = 1 ] || break
done
if [ "$rc" -ne 0 ] && [ -n "${LLM2COMP_REQUEUE_FILE:-}" ] && [ -e "$LLM2COMP_REQUEUE_FILE" ]; then
  exit 75
fi
exit "$rc"
