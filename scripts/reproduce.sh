#!/usr/bin/env bash
# The main job, end to end: set up .venv, validate HAM10000, split it by lesion, train MobileNetV3-Small from
# the local ImageNet weights, evaluate on the held-out test split, and build the model package.
# ~45 minutes on a 2-core CPU. Every step writes under runs/ and prints where its results went.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SKINSCAN_DATA:-../shared/data/ham10000}"
WEIGHTS="${SKINSCAN_WEIGHTS:-../shared/weights/mobilenet_v3_small_imagenet.pth}"
RUN="${RUN:-runs/mobilenet_v3_small}"
bash scripts/setup.sh train,dev
skinscan() { .venv/bin/skinscan "$@"; }

skinscan data validate --data "$DATA"
skinscan data split --data "$DATA" --out runs/split.csv --seed 0
skinscan train --data "$DATA" --split runs/split.csv --out "$RUN" --pretrained "$WEIGHTS" --epochs 24 --seed 0
skinscan evaluate --checkpoint "$RUN/best.pt" --data "$DATA" --split runs/split.csv --part test --out "$RUN/evaluation"
skinscan export --checkpoint "$RUN/best.pt" --data "$DATA" --split runs/split.csv --out "$RUN/package"
