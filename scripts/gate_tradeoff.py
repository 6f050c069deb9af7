"""The gate's trade-off, for a team decision: one re-gated package's `assess` scores on every measuring set, judged
at several dermoscopy and distance lines (the package's other lines unchanged).

    python scripts/gate_tradeoff.py runs/c5/pkg --split runs/split.csv --external ../shared/data/isic2019_extra \
        --fresh /usr/share/doc/opencv-doc/examples/data

Not a candidate and not a fit: every set here is a measuring set (HAM10000 test, the external collection, the
non-lesion corpus, the fresh OpenCV set, the held-out portrait's crops), so an operating point picked from this
table is tuned on them and must be judged on fresh data (docs/RESULTS.md, "The trade-off").
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from skinscan.factory.data import image_paths, read_split, split_image_paths
from skinscan.factory.nonlesion import ORDINARY_SKIN_HELD_OUT, folder_corpus, non_lesion_corpus, ordinary_skin_photos
from skinscan.factory.regate import external_rows
from skinscan.paths import default_data_dir
from skinscan.runtime.assess import DERMOSCOPY, AssessSpec
from skinscan.runtime.classifier import Classifier
from skinscan.runtime.preprocess import load_image

DERMOSCOPY_LINES = (-1.55, -1.04, -0.42, 0.0, 0.71, 1.05)
DISTANCE_LINES = (71.9, 30.0, 15.9)


def scores(classifier: Classifier, images: list) -> tuple[np.ndarray, list]:
    decoded = [classifier.decode(image) for image in images]
    rows = [classifier.run_arrays(np.stack([d[0] for d in decoded[i:i + 32]]))["assess"]
            for i in range(0, len(decoded), 32)]
    return np.concatenate(rows), [d[1] for d in decoded]


def refused(spec: AssessSpec, rows: np.ndarray, sizes: list) -> float:
    return float(np.mean([not spec.judge(row, size).assessable for row, size in zip(rows, sizes, strict=True)]))


def with_lines(spec: AssessSpec, dermoscopy: float, distance: float) -> AssessSpec:
    checks = tuple(replace(c, below=dermoscopy) if c.score == DERMOSCOPY else
                   replace(c, above=distance) if c.score == "lesion_distance" else c for c in spec.checks)
    return replace(spec, checks=checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--external", type=Path, required=True)
    parser.add_argument("--fresh", type=Path, required=True)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    classifier = Classifier.load(args.package, precision=args.precision)
    split = read_split(args.split)
    test = split[split.split == "test"]
    external = external_rows(args.external)
    sets = {
        "HAM10000 test": [load_image(p) for p in split_image_paths(args.data, args.split, test)],
        "external": [load_image(p) for p in image_paths(args.external / "images", external.image_id.tolist())],
        "non-lesion corpus": [item.image for item in non_lesion_corpus()],
        "fresh non-lesions": [item.image for item in folder_corpus(args.fresh)],
        "held-out portrait": [item.image for item in ordinary_skin_photos(ORDINARY_SKIN_HELD_OUT, 100, seed=1)],
    }
    measured = {name: scores(classifier, images) for name, images in sets.items()}
    spec = classifier.assess_spec
    print("| distance line | dermoscopy line | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for distance in DISTANCE_LINES:
        for dermoscopy in DERMOSCOPY_LINES:
            judged = with_lines(spec, dermoscopy, distance)
            shares = [f"{refused(judged, *measured[name]):.1%}" for name in sets]
            print(f"| {distance:g} | {dermoscopy:g} | " + " | ".join(shares) + " |")


if __name__ == "__main__":
    main()
