#!/usr/bin/env bash
# Several nodes: one torchrun per node, started by srun, meeting at a c10d rendezvous on the job's first
# node. Run it from inside an allocation (sbatch or salloc), one task per node:
#
#   srun --nodes=2 --ntasks-per-node=1 launch/srun_multinode.sh run.yaml --set output_path=s3://bucket/run.zarr
#
# Env: PYTHON          interpreter with distinterp installed (default: python3)
#      NPROC_PER_NODE  ranks per node (default: the visible GPUs, else 1)
#      MASTER_ADDR     rendezvous host (default: first node of SLURM_JOB_NODELIST)
#      MASTER_PORT     rendezvous port (default: 29500 + SLURM_JOB_ID % 20000, distinct per array task)
# World size = SLURM_NNODES x NPROC_PER_NODE; inside an array task every rank runs that task's chains.
set -euo pipefail

: "${SLURM_JOB_ID:?run this under srun inside a Slurm allocation}"
PYTHON=${PYTHON:-python3}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # visible_gpus

NPROC_PER_NODE=${NPROC_PER_NODE:-$(visible_gpus)}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 20000))}

echo "node ${SLURM_NODEID:-0}/${NNODES} on $(hostname): ${NPROC_PER_NODE} ranks, rendezvous ${MASTER_ADDR}:${MASTER_PORT}" >&2
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
    --rdzv-id="$SLURM_JOB_ID" \
    --max-restarts=0 \
    -m distinterp sample "$@"
