"""Fit-side comparison of dermoscopy-score designs on the cached fitting scores of `skinscan regate --cache`
(written with --negatives), never on the test split, the external collection or the non-lesion corpus: the
table that chose gate candidate 4 (docs/RESULTS.md, "Candidate 4, declared").

    python scripts/gate_fitside.py runs/c4/fit.npz

For each design: the share of the held-out generic photos below the score's line (the line at the 0.5% tail
of each source's plain val lesions), and, leave-one-source-out, the share of a source's plain val lesions below
the line of a score fitted without that source (what an unseen device would meet).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from skinscan.factory import regate
from skinscan.runtime.assess import tail_value

TAIL = 0.005
DESIGNS = (  # name, features, with the generic photos (each at its input's C, `regate.REGULARISATION`)
    ("block-4/5 statistics, portrait only (candidates 1-3)", "block-statistics", False),
    ("block-4/5 statistics, + generic photos", "block-statistics", True),
    ("pooled features, + generic photos (candidate 4)", "pooled", True),
)


def score(weight, bias, scores: regate.GateScores) -> np.ndarray:
    return regate.dermoscopy_score(weight, bias, scores.statistics, scores.pooled)


def main(cache: str) -> None:
    fit = regate.FitScores.load(Path(cache))
    lesions = fit.sets["lesions"]
    for name, features, with_generic in DESIGNS:
        generic = fit.sets["generic"] if with_generic else None
        weight, bias = regate.fit_dermoscopy_score(lesions, fit.sets["ordinary"], generic, features)
        line = min(tail_value(score(weight, bias, fit.sets[n]), TAIL) for n in regate.VAL_SOURCE)
        held_out = np.mean(score(weight, bias, fit.sets["generic_held_out"]) < line)
        unseen = {}
        for val_name, source in regate.VAL_SOURCE.items():
            other = next(n for n, s in regate.VAL_SOURCE.items() if s != source)
            w, b = regate.fit_dermoscopy_score(lesions.subset(fit.lesion_source != source), fit.sets["ordinary"],
                                               generic, features)
            unseen[regate.SOURCE_NAMES[source]] = np.mean(score(w, b, fit.sets[val_name])
                                                          < tail_value(score(w, b, fit.sets[other]), TAIL))
        print(f"{name}: generic held-out photos refused by the score alone {held_out:.1%}; unseen source refused "
              + ", ".join(f"{k} {v:.1%}" for k, v in unseen.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
