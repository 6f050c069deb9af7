#!/usr/bin/env bash
# The main job, end to end: set up .venv, validate HAM10000, split it by lesion, train MobileNetV3-Small from
# the local ImageNet weights (252x336 input) with the bundled model's recipe (Shades-of-Gray colour constancy,
# lesion-balanced sampling, best.pt kept by val balanced accuracy + macro AUC; docs/RESULTS.md run L), build the
# model package (FP32 + INT8), evaluate it on the held-out test split and write its model card. 31 min measured on
# a 2-core CPU, 27 of it training (docs/RESULTS.md run M; up to an hour when the VM is slow); every step writes
# under runs/ and prints where its results went. `bash scripts/bundle_model.sh` then copies the package into the wheel.
# The bundled weights came from this training command run on a borrowed GPU (bf16): a rerun, on a GPU or on the
# CPU, is another run of the same recipe (eight GPU seeds: val balanced accuracy 0.752 +- 0.009), not the same
# weights.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SKINSCAN_DATA:-../shared/data/ham10000}"
WEIGHTS="${SKINSCAN_WEIGHTS:-../shared/weights/mobilenet_v3_small_imagenet.pth}"
RUN="${RUN:-runs/mobilenet_v3_small}"
bash scripts/setup.sh train,dev
skinscan() { .venv/bin/skinscan "$@"; }
start=$(date +%s)

skinscan data validate --data "$DATA"
skinscan data split --data "$DATA" --out runs/split.csv --seed 0
# A second run of this script continues (or, when finished, keeps) the training run instead of refusing it.
resume=(); [ -f "$RUN/last.pt" ] && resume=(--resume)
skinscan train --data "$DATA" --split runs/split.csv --out "$RUN" --pretrained "$WEIGHTS" --seed 3 \
    --color-constancy shades-of-gray --lesion-balanced --select balanced-accuracy-plus-auc "${resume[@]}"
# The pooled-sources recipe (issue 23: HAM10000 plus the ISIC 2019 extra images, with the 256-px ISIC 2017-era images
# held out as the external test) is not shipped: its first probe (docs/RESULTS.md run R) found no external melanoma
# AUC gain at its budget. To run it, after the split above:
#   skinscan data split --source ham10000="$DATA" --source isic2019_extra=../shared/data/isic2019_extra \
#       --external isic2019_extra:width=256 --out runs/pooled-split.csv
#   skinscan train --split runs/pooled-split.csv --out runs/pooled-run \
#       --pretrained "$WEIGHTS" --seed 3 --color-constancy shades-of-gray --lesion-balanced \
#       --select balanced-accuracy-plus-auc --source-balance --degrade-prob 0.3 --vignette-prob 0.2
#   skinscan evaluate --checkpoint runs/pooled-run/best.pt --split runs/pooled-split.csv --part external \
#       --out runs/pooled-run/external                       # the external collection, per collection
# (Run R itself used scripts/pooled_split.py, the bridge written before `skinscan data split --source` existed.)
# Measured in run R (126x168, `--epoch-images 6400`, one thread): one epoch of 6,400 sampled images took 73 s on an
# otherwise idle 2-core CPU and 270-580 s while sharing it with other jobs. A full epoch over the 16,669 pooled train
# images at this script's 252x336 is 2.6x the images and ~4x the pixels: ~13 min per epoch at best on one thread,
# ~3 h for the 13 epochs (an extrapolation, not measured); it does not fit the 90-minute aim without a smaller
# input or fewer epochs.
# No `skinscan qat` step: for the bundled model it raised simulated INT8 accuracy on val but lowered the real
# ONNX Runtime INT8 model's (docs/RESULTS.md). It stays available for models whose INT8 loses more than a point.
skinscan export --checkpoint "$RUN/best.pt" --data "$DATA" --split runs/split.csv --out "$RUN/package"
skinscan quantize --model "$RUN/package" --data "$DATA" --split runs/split.csv --part test
skinscan gate --model "$RUN/package" --data "$DATA" --split runs/split.csv --part test
skinscan evaluate --checkpoint "$RUN/best.pt" --data "$DATA" --split runs/split.csv --part test \
    --out "$RUN/evaluation"
skinscan card --model "$RUN/package" --evaluation "$RUN/evaluation" --command "bash scripts/reproduce.sh"
echo "main job done in $(( ($(date +%s) - start) / 60 )) min: package in $RUN/package, report in $RUN/evaluation"
