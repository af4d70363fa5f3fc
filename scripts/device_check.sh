#!/usr/bin/env bash
# The whole GPU check of issue #10 on a lent device machine, in one call: install the carried wheels,
# check the imports and CUDA (fail fast), tests/test_cuda.py, then benchmarks/gpu.sh; a summary table last.
# Worst case 9.5 min (a deadline stops gpu.sh in time for the summary); typically well under that.
#
# 1. Here, in the checkout that the session was started in (costs no device time; ~13 MiB into .whl/):
#        bash scripts/device_wheels.sh
# 2. One device call from that checkout:
#        run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=600)
#    Back in files_at: device_check.log (everything printed), device_check.json (each part's rc and seconds,
#    the test counts, every benchmark's JSON, stderr tails of failed steps) and pytest.xml (JUnit).
# A second call while the machine is warm can run one part: `bash scripts/device_check.sh tests` or `gpu`.
#
# Exit status: 0 all passed; 1 a test or benchmark step failed; 2 install or imports failed; 3 no CUDA.
# Here, without a GPU, it stops at the CUDA check (or earlier: cp312 wheels do not install on another
# Python): PYTHON=/path/to/python WHEELS=/dir/of/matching/wheels bash scripts/device_check.sh. With
# DISTINTERP_TEST_DEVICE=cpu too it goes on: the tests on the CPU (see tests/test_cuda.py), gpu.sh exits 3.
set -uo pipefail
cd "$(dirname "$0")/.."
PART="${1:-all}"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
OUT="${OUT:-/tmp/device_check}"
SITE=/tmp/site
WORK=$(mktemp -d /tmp/device_check.XXXXXX) # gpu.sh's many files stay here; $OUT gets them combined
DEADLINE=570                # seconds after the start by which gpu.sh must have stopped
case "$PART" in all | tests | gpu) ;; *)
    echo "device_check.sh: unknown part '$PART' (all, tests, gpu)" >&2
    exit 2
    ;;
esac
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
TEE=$!
trap 'exec >&- 2>&-; wait "$TEE"' EXIT # the log is whole before the call returns
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

part() { # part NAME RC SECONDS: one row of the summary
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/parts.tsv"
}
summary() {
    "$PYTHON" scripts/device_summary.py --work "$WORK" --out "$OUT/device_check.json"
}
stop() { # stop RC MESSAGE: say why, write the summary so far, exit RC
    echo "device_check.sh: $2" >&2
    summary
    exit "$1"
}

echo "== device_check.sh $PART: $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
# gpu.sh and the benchmarks call `python`: make it this Python (a wrapper keeps a venv's own site-packages)
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PYTHON")" >"$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH="$WORK/bin:$PATH"

t0=$SECONDS
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    part install 2 0
    stop 2 "no wheels in $WHEELS: run 'bash scripts/device_wheels.sh' here and carry .whl"
fi
timeout -k 5 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl
rc=$?
part install "$rc" $((SECONDS - t0))
if [ "$rc" -ne 0 ]; then
    stop 2 "installing the wheels of $WHEELS into $SITE failed (rc $rc): see above"
fi
export PYTHONPATH="$SITE:$PWD/src"

t0=$SECONDS
timeout -k 5 60 "$PYTHON" - <<'EOF'
import importlib, sys
missing = []
for name in ["torch", "transformers", "numpy", "xarray", "zarr", "numcodecs", "datasets", "pydantic",
             "pydantic_settings", "arviz_stats", "devinterp", "devinterp.slt.sampling", "distinterp"]:
    try:
        importlib.import_module(name)
    except Exception as e:  # report every missing module at once, not the first
        missing.append(f"{name}: {type(e).__name__}: {e}")
if missing:
    print("device_check.sh: cannot import:\n  " + "\n  ".join(missing), file=sys.stderr)
    sys.exit(2)
from importlib.metadata import version
names = ["torch", "transformers", "numpy", "pyarrow", "fsspec", "huggingface-hub", "typing-extensions",
         "zarr", "numcodecs", "datasets", "pydantic", "pydantic-settings", "devinterp"]
print("versions: " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
rc=$?
part imports "$rc" $((SECONDS - t0))
if [ "$rc" -ne 0 ]; then
    stop 2 "imports failed (rc $rc); a missing package goes into scripts/device_wheels.sh"
fi
if [ "${DISTINTERP_TEST_DEVICE:-}" != cpu ] &&
    ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    part cuda 3 0
    stop 3 "CUDA is not available here; nothing run (tests/test_cuda.py skips, gpu.sh exits 3)"
fi

status=0
if [ "$PART" != gpu ]; then
    echo "== tests/test_cuda.py (limit 150 s)"
    t0=$SECONDS
    timeout -k 10 150 "$PYTHON" -m pytest -v -p no:cacheprovider -o faulthandler_timeout=100 \
        --junitxml "$OUT/pytest.xml" tests/test_cuda.py
    rc=$?
    part tests "$rc" $((SECONDS - t0))
    [ "$rc" -eq 0 ] || status=1
    summary >/dev/null
fi
if [ "$PART" != tests ]; then
    left=$((DEADLINE - SECONDS))
    echo "== benchmarks/gpu.sh (limit $left s)"
    t0=$SECONDS
    OUT="$WORK/gpu" timeout -k 5 "$left" bash benchmarks/gpu.sh
    rc=$?
    part gpu.sh "$rc" $((SECONDS - t0))
    [ "$rc" -eq 0 ] || status=1
fi
summary
echo "device_check.sh: status $status; files in $OUT"
exit $status
