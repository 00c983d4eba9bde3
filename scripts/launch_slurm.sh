#!/usr/bin/env bash
# Multi-node `redone` on Slurm: one launcher per node (srun, 1 task/node), rendezvous from Slurm variables.
#
#   sbatch --nodes 4 scripts/launch_slurm.sh train --stage cpt --config configs/cpt/my_cpt.yaml
#   sbatch --nodes 4 scripts/launch_slurm.sh pipeline --config configs/pipeline/qwen2.5-7b.yaml --only sft
#   LAUNCHER=torchrun DEEPSPEED_CONFIG=configs/deepspeed/zero3.json sbatch scripts/launch_slurm.sh train ...
#   DRY_RUN=1 bash scripts/launch_slurm.sh train --stage cpt --config ...   # print the per-node command
#
# Everything after the script name is passed to `redone` unchanged. Environment knobs:
#   LAUNCHER            accelerate (default) | torchrun
#   ACCELERATE_CONFIG   accelerate YAML (default configs/accelerate/multinode.yaml: DeepSpeed ZeRO-3)
#   DEEPSPEED_CONFIG    torchrun only: a DeepSpeed JSON turns DeepSpeed on (ZeRO-3 init if its stage is 3);
#                       empty = plain DDP
#   GPUS_PER_NODE       default: SLURM_GPUS_ON_NODE, else 8
#   MASTER_PORT         default 29500
# output_dir, data.cache_dir and $HF_HOME must be on a filesystem every node sees: each rank writes its
# shard of every checkpoint, and the data cache is built by each node's processes.
#SBATCH --job-name=redone
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail

LAUNCHER=${LAUNCHER:-accelerate}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/multinode.yaml}
DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG:-}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
NNODES=${SLURM_NNODES:-1}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z "${MASTER_ADDR:-}" ]]; then
  if command -v scontrol >/dev/null && [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  else
    MASTER_ADDR=127.0.0.1
  fi
fi
export LAUNCHER ACCELERATE_CONFIG DEEPSPEED_CONFIG GPUS_PER_NODE NNODES MASTER_ADDR MASTER_PORT
# Multi-node NCCL defaults that avoid the usual hangs; override in the environment as your fabric needs.
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# Runs on each node; NODE_RANK comes from that node's Slurm task id.
per_node() {
  local node_rank=${SLURM_PROCID:-0}
  local world=$((NNODES * GPUS_PER_NODE))
  if [[ "$LAUNCHER" == "accelerate" ]]; then
    cmd=(accelerate launch --config_file "$ACCELERATE_CONFIG"
         --num_machines "$NNODES" --num_processes "$world" --machine_rank "$node_rank"
         --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" --rdzv_backend c10d
         -m redone "$@")
  elif [[ "$LAUNCHER" == "torchrun" ]]; then
    if [[ -n "$DEEPSPEED_CONFIG" ]]; then
      # What `accelerate launch` sets for a DeepSpeed config; redone's Accelerator reads it.
      export ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE="$DEEPSPEED_CONFIG"
      if python -c "import json,sys; sys.exit(json.load(open('$DEEPSPEED_CONFIG'))['zero_optimization']['stage'] != 3)"; then
        export ACCELERATE_DEEPSPEED_ZERO3_INIT=true
      fi
    fi
    cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$node_rank"
         --rdzv_id "${SLURM_JOB_ID:-redone}" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
         -m redone "$@")
  else
    echo "launch_slurm: LAUNCHER must be accelerate or torchrun (got $LAUNCHER)" >&2
    return 2
  fi
  echo "[launch_slurm] node $node_rank/$NNODES on $(hostname): $(printf '%q ' "${cmd[@]}")"
  if [[ -n "${DRY_RUN:-}" ]]; then
    return 0
  fi
  "${cmd[@]}"
}
export -f per_node

if [[ $# -eq 0 ]]; then
  echo "usage: sbatch [--nodes N] scripts/launch_slurm.sh train|pipeline ... (redone arguments)" >&2
  exit 2
fi
if [[ -n "${DRY_RUN:-}" || -z "${SLURM_JOB_ID:-}" ]]; then
  per_node "$@"  # outside a Slurm job (or a dry run): this node only
else
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c 'per_node "$@"' _ "$@"
fi
