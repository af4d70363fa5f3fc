#!/usr/bin/env bash
# Downloads, here, the wheels the lent GPU machine lacks, so scripts/device_check.sh can install them there
# (it has no network). One version each: the ones this project is tested with on CPU.
#
#   bash scripts/device_wheels.sh                         # cp312 manylinux x86_64 wheels into .whl/
#   PYVER=3.11 DEST=/tmp/w bash scripts/device_wheels.sh  # the same set for another Python (a dry run here)
#
# The device image (/work/.library/device/KINDS.md) already has torch, transformers, numpy, xarray, pandas,
# pyarrow, fsspec, huggingface-hub, pyyaml, tqdm, xxhash, filelock, packaging, scipy, matplotlib, pytest and
# hypothesis. Missing there: zarr (+ numcodecs, donfig, google-crc32c), datasets (+ dill, multiprocess),
# pydantic (+ pydantic-core, annotated-types, typing-inspection), pydantic-settings (+ python-dotenv),
# arviz-stats (diagnose) and devinterp 2.0.1 (gpu.sh's devinterp target; its other needs are all there).
# typing-extensions travels too: pydantic 2.13 needs >= 4.14.1 and the image's version is not on record.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"
WHEELS=(
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.16.0 pydantic-settings==2.14.1 python-dotenv==1.2.2
    arviz-stats==0.8.0 devinterp==2.0.1
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl # one version of each: a stale second version stops the whole install there
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DEST" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
n=$(ls "$DEST"/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
    echo "device_wheels.sh: expected ${#WHEELS[@]} wheels in $DEST, found $n" >&2
    exit 1
fi
echo "device_wheels.sh: $n wheels, $(du -sh "$DEST" | cut -f1) in $DEST (python $PYVER)"
