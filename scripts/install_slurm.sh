#!/usr/bin/env bash
# Install a one-node Slurm (Debian/Ubuntu packages) for the tests' `slurm_cluster` fixture.
# Idempotent: does nothing when slurmctld, slurmd, sbatch and munged are already on PATH.
# Usage: scripts/install_slurm.sh   (as root, or with sudo available; CI-friendly, non-interactive)
# Never fails the caller: where it cannot install, it says so and the Slurm tests skip.
set -uo pipefail

skip() {
    echo "install_slurm: $1; the Slurm tests will be skipped" >&2
    exit 0
}

PACKAGES=(slurmctld slurmd slurm-client munge)

have_all() {
    local bin
    for bin in slurmctld slurmd sbatch squeue scontrol munged; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] || return 1
    done
}

if have_all; then
    echo "install_slurm: slurm and munge already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    skip "apt-get not found (install ${PACKAGES[*]} with your package manager)"
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        skip "needs root (or sudo) to install ${PACKAGES[*]}"
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q || skip "apt-get update failed"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" || skip "apt-get install failed"
echo "install_slurm: installed ${PACKAGES[*]}"
