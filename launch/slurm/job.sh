# The body of pretrain.sbatch and contrast.sbatch, sourced by them with STAGE set. Nothing cluster-specific
# lives here: the #SBATCH lines and the LLM2COMP_* variables (docs/TRAINING.md, "Clusters") are the knobs.
#
# One srun task per node runs launch/torchrun_node.sh: torchrun with one worker a GPU, joined to the other
# nodes by c10d rendezvous at the first node's NodeAddr (host names need not resolve). LLM2COMP_LAUNCHER=srun
# instead runs one srun task a rank (no torchrun): ranks from SLURM_PROCID, the process group at the first
# node's NodeAddr (trainer/engine/dist.py). On SIGUSR1 the workers checkpoint and leave a marker; this script
# then requeues the job, and the next start resumes (resume=auto).
set -uo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: sbatch [sbatch options] launch/slurm/$STAGE.sbatch RECIPE [key=value ...]" >&2
  exit 2
fi
RECIPE=$1
shift
: "${SLURM_JOB_ID:?not a SLURM job: submit with sbatch, or use launch/local.sh on one machine}"
if [ ! -f "$RECIPE" ]; then
  echo "llm2comp: recipe $RECIPE not found (relative paths are from the submit directory ${SLURM_SUBMIT_DIR:-?})" >&2
  exit 2
fi

node_addr() { scontrol show node "$1" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p'; }
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
head_addr=$(node_addr "$head_node")
nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
# GPUs per node as SLURM granted them (--gpus-per-node=8 or =a100:8, or --gres=gpu:8: then the devices
# SLURM made visible); CPU-only jobs run one worker a node.
gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
if [ -z "$gpus" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  gpus=$(awk -F, '{print NF}' <<< "$CUDA_VISIBLE_DEVICES")
fi
nproc=${LLM2COMP_NPROC_PER_NODE:-${gpus##*:}}
[ "${nproc:-0}" -gt 0 ] 2>/dev/null || nproc=1
port=${LLM2COMP_RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}  # per job, so jobs sharing a node don't collide
cpus=${SLURM_CPUS_PER_TASK:-$nproc}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus / nproc > 0 ? cpus / nproc : 1 ))}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
# Where the workers say "stopped on a signal, checkpoint written" (a shared path: rank 0 may be on any node).
export LLM2COMP_REQUEUE_FILE=${LLM2COMP_REQUEUE_FILE:-${SLURM_SUBMIT_DIR:-$PWD}/.llm2comp-requeue-$SLURM_JOB_ID}
rm -f "$LLM2COMP_REQUEUE_FILE"

echo "llm2comp $STAGE: job $SLURM_JOB_ID (start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))) on $nnodes node(s) [$SLURM_JOB_NODELIST]," \
  "$nproc worker(s) a node, launcher ${LLM2COMP_LAUNCHER:-torchrun}, head $head_addr:$port, OMP_NUM_THREADS=$OMP_NUM_THREADS, $(date -Is)"
echo "llm2comp $STAGE: --config $RECIPE $*"

# srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): without it a node's workers share one core.
if [ "${LLM2COMP_LAUNCHER:-torchrun}" = srun ]; then
  per_rank=$(( cpus / nproc > 0 ? cpus / nproc : 1 ))
  gpu_opt=(); [ "${gpus##*:}" -gt 0 ] 2>/dev/null && gpu_opt=(--gpus-per-task=1)
  export OMP_NUM_THREADS=$per_rank
  # shellcheck disable=SC2206  # PYTHON may be a command with arguments
  cmd=(srun --ntasks="$(( nnodes * nproc ))" --ntasks-per-node="$nproc" --cpus-per-task="$per_rank" "${gpu_opt[@]}"
       --kill-on-bad-exit=1 ${PYTHON:-python3} -m trainer.cli "$STAGE" --config "$RECIPE" "$@")
else
  cmd=(srun --ntasks="$nnodes" --ntasks-per-node=1 --cpus-per-task="$cpus" --kill-on-bad-exit=1
       bash -c 'addr=$(scontrol show node "$SLURMD_NODENAME" | sed -n "s/.*NodeAddr=\([^ ]*\).*/\1/p")
                exec "$0" --local-addr "${addr:-$(hostname)}" "$@"'
       "$LAUNCH_DIR/torchrun_node.sh" --nnodes "$nnodes" --nproc-per-node "$nproc" --max-restarts 0
       --rdzv-backend c10d --rdzv-endpoint "$head_addr:$port" --rdzv-id "$SLURM_JOB_ID"
       -m trainer.cli "$STAGE" --config "$RECIPE" "$@")
fi
echo "llm2comp $STAGE: ${cmd[*]:0:6} ..."
"${cmd[@]}"
rc=$?

if [ -e "$LLM2COMP_REQUEUE_FILE" ]; then
  step=$(cat "$LLM2COMP_REQUEUE_FILE")
  rm -f "$LLM2COMP_REQUEUE_FILE"
  echo "llm2comp $STAGE: stopped on a signal at step $step with its checkpoint written; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
if [ "$rc" -ne 0 ]; then
  echo "llm2comp $STAGE: job $SLURM_JOB_ID failed (srun exit $rc); the launcher's report above names the failed rank" \
    "and node. Submitting the same command again resumes from the newest complete checkpoint." >&2
fi
exit "$rc"
