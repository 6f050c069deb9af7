#!/usr/bin/env bash
# Copy a model package built by scripts/reproduce.sh into src/skinscan/models/ (shipped inside the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="${1:-runs/mobilenet_v3_small/package}"
rm -rf src/skinscan/models && mkdir -p src/skinscan/models
for f in skinscan.onnx skinscan-int8.onnx skinscan-int8.ort skinscan-int8.required_operators.config \
         quantization.json gate.json MODEL_CARD.md; do
    cp "$PACKAGE/$f" src/skinscan/models/
done
.venv/bin/python -c "from skinscan.runtime.manifest import write_manifest; print(write_manifest('src/skinscan/models'))"
