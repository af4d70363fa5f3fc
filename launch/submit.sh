#!/usr/bin/env bash
# Submit a whole run: the sampling array (sample_array.sbatch, NUM_TASKS tasks) and the aggregate job
# (aggregate.sbatch), which starts only once every array task has succeeded (--dependency=afterok).
#
#   launch/submit.sh run.yaml 16 [key=value ...]        # key=value: settings overrides (--set)
#
# Env: PYTHON, NPROC_PER_NODE        passed on to the jobs (see sample_array.sbatch)
#      SBATCH_ARGS                   extra sbatch options for both jobs, e.g. "--partition=gpu --account=lab"
#      SAMPLE_SBATCH_ARGS, AGGREGATE_SBATCH_ARGS   extra options for one of them, e.g. "--gpus-per-node=8"
#      AGGREGATE_OUTPUT              where the aggregate job writes the LLC (.zarr or .nc); default: none
# Prints the job ids; the store URL is the config's output_path (after overrides and DISTINTERP_* env).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG.yaml NUM_TASKS [key=value ...]" >&2
    exit 2
fi
CONFIG=$1
TASKS=$2
shift 2

export LAUNCH_DIR=${LAUNCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
export PYTHON=${PYTHON:-python3}

sets=()
for kv in "$@"; do
    sets+=(--set "$kv")
done

# The store URL as the jobs will see it; this also validates the config before anything is queued.
STORE=$("$PYTHON" -c '
import sys
from distinterp.jobs.settings import load_settings
print(load_settings(sys.argv[1], sys.argv[2:]).output_path)
' "$CONFIG" "$@")

# shellcheck disable=SC2086  # *_SBATCH_ARGS are lists of words
array_job=$(sbatch --parsable --array="0-$((TASKS - 1))" ${SBATCH_ARGS:-} ${SAMPLE_SBATCH_ARGS:-} \
    "$LAUNCH_DIR/sample_array.sbatch" "$CONFIG" "${sets[@]}")
array_job=${array_job%%;*}

# shellcheck disable=SC2086
aggregate_job=$(sbatch --parsable --dependency="afterok:${array_job}" --kill-on-invalid-dep=yes \
    ${SBATCH_ARGS:-} ${AGGREGATE_SBATCH_ARGS:-} \
    "$LAUNCH_DIR/aggregate.sbatch" "$STORE" ${AGGREGATE_OUTPUT:+"$AGGREGATE_OUTPUT"})
aggregate_job=${aggregate_job%%;*}

echo "store          $STORE"
echo "sample array   $array_job ($TASKS tasks)"
echo "aggregate      $aggregate_job (after every array task succeeds)"
