#!/usr/bin/env bash
# Every device benchmark of issue #10 on one GPU, unattended, in under 8 minutes; one table per target,
# JSON per script and steps.tsv (step, rc, seconds) under $OUT (default benchmarks/results/gpu-<time>).
#
#   bash benchmarks/gpu.sh            # needs CUDA; scripts/device_check.sh runs it after tests/test_cuda.py
#
# Steps, each under its own time limit (the sum is 7 min, 8 with each limit's 10 s kill grace; cut so
# that scripts/device_check.sh, tests and install included, fits one 10-minute device call):
#   equal      chains_per_batch=3 against one at a time on the GPU: the per-chain CUDA generators must give
#              the serial engine's stream (max |diff| of the recorded losses, float rounding only)
#   batched    K=8 batched against the same 8 chains one at a time (GPT-2 2x256, ctx 128)
#   options    compile=True and autocast_dtype="bfloat16" gains at K=8
#   devinterp  devinterp 2.0.1 against distinterp's best options (Pythia-14m-sized, random init)
#   roofline   token BIF against the GPU's float32 matmul of the same FLOPs, and its float64 accuracy
#   profile    where one sample() call's time goes, part by part (small, K=1 and K=8)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%S)}"
if ! python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: CUDA is not available here; nothing run (the CPU benchmarks: bench_sampling.py, bench_analyses.py)" >&2
    exit 3
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>"$OUT/$name.stderr" | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "[$name] rc=$rc in $((SECONDS - t0)) s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/steps.tsv"
    [ "$rc" -eq 0 ] || status=1
}
step equal 45 python benchmarks/bench_sampling.py --device cuda --targets equal --json "$OUT/equal.json"
step batched 75 python benchmarks/bench_sampling.py --device cuda --targets batched --draws 150 --json "$OUT/batched.json"
step options 150 python benchmarks/bench_sampling.py --device cuda --targets options --draws 150 --json "$OUT/options.json"
step devinterp 75 python benchmarks/bench_sampling.py --device cuda --targets devinterp --draws 100 --json "$OUT/devinterp.json"
step roofline 45 python benchmarks/bench_analyses.py --device cuda --targets roofline --json "$OUT/roofline.json"
step profile 30 python benchmarks/bench_sampling.py --device cuda --targets profile --draws 50 --json "$OUT/profile.json"
echo "gpu.sh: results in $OUT (status $status)"
exit $status
