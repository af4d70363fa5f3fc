#!/usr/bin/env bash
# The static checks CI runs before the tests: ruff (lint + format), mypy (strict on src/, config in
# pyproject.toml) and the import graph (no circles, nothing imported upward).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
mypy
python scripts/import_graph.py --lazy
