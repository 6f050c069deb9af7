#!/usr/bin/env bash
# Create .venv (if missing) and install skinscan with the given extras, e.g. `scripts/setup.sh train,dev`.
# torch is pinned to <= 2.14.1 by pyproject.toml; the default install (no extras) has no torch at all.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,dev}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
