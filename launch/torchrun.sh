#!/usr/bin/env bash
# One node: `distinterp COMMAND CONFIG [ARGS...]` on NPROC_PER_NODE ranks (torchrun, standalone rendezvous).
#
#   launch/torchrun.sh run.yaml --set output_path=s3://bucket/run.zarr
#   COMMAND=sweep launch/torchrun.sh launch/sweep.yaml
#
# Env: PYTHON          interpreter with distinterp installed (default: python3)
#      NPROC_PER_NODE  ranks on this node (default: the visible GPUs, else 1); 1 runs without torchrun
#      COMMAND         the job: sample (default), trajectory, calibrate or sweep
# Chains are sharded over the ranks; every rank writes its own chains straight into the one store.
set -euo pipefail

PYTHON=${PYTHON:-python3}
COMMAND=${COMMAND:-sample}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # visible_gpus

NPROC_PER_NODE=${NPROC_PER_NODE:-$(visible_gpus)}
(( NPROC_PER_NODE >= 1 )) || NPROC_PER_NODE=1
[[ $# -ge 1 ]] || { echo "usage: $0 CONFIG.yaml [--set key=value ...]" >&2; exit 2; }

if (( NPROC_PER_NODE == 1 )); then
    exec "$PYTHON" -m distinterp "$COMMAND" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC_PER_NODE" \
    -m distinterp "$COMMAND" "$@"
