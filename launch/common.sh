#!/usr/bin/env bash
# Shared by torchrun.sh and srun_multinode.sh (sourced, not run).

# The GPUs this node's job may use (CUDA_VISIBLE_DEVICES, else nvidia-smi); 1 when there are none, so a
# CPU node runs one rank.
visible_gpus() {
    local n=0
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        n=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
    elif command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    echo $((n > 0 ? n : 1))
}
