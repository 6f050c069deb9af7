#!/usr/bin/env bash
# Create .venv (if missing) and install skinscan with the given extras, e.g. `scripts/setup.sh train,dev`
# (what the tests need, the default). `scripts/setup.sh ""` installs the runtime only (predict, benchmark, app:
# onnxruntime, numpy, Pillow, tqdm); `report` adds data sets, evaluation and reports; `train` adds torch (pinned
# to <= 2.14.1 by pyproject.toml), torchvision and onnx, and pulls `report`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1-train,dev}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras:+[${extras}]}"
