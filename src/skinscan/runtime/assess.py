"""The "cannot assess" rule: the scores a model package computes for every image, judged by its thresholds.

Design note (one definition, two runtimes)
-----------------------------------------
The graph computes the scores (its `assess` output, see `skinscan.factory.gate`); which score means what and where
the lines are is data, the package's `skinscan.assess` metadata, chosen on the validation split at export:

    {"scores": ["lesion_distance", "sharpness", "brightness", "colourfulness"],
     "min_side": 100,
     "checks": [{"score": "brightness", "below": 101.9, "reason": "too_dark"}, ...],
     "messages": {"too_dark": "...", ...}}

A client walks `checks` in order and answers with the first that fails; before the graph runs it refuses
images whose shorter side is below `min_side` ("too_small"). This module is that walk for Python (torch-free,
used by `skinscan.runtime`); `app/app.js` is the same walk for the browser, and a test feeds both the same
scores. Packages without `skinscan.assess` (older exports) simply never answer "cannot assess".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ASSESS = "assess"  # the graph output: float [N, len(scores)]
TOO_SMALL = "too_small"
REASONS = ("too_small", "too_dark", "too_bright", "too_blurry", "not_a_lesion")
MESSAGES = {
    "too_small": "the image is too small to show a lesion's structure; take a closer, higher-resolution photo",
    "too_dark": "the image is too dark; add light (without flash glare) and retake it",
    "too_bright": "the image is overexposed; reduce the light or avoid flash glare and retake it",
    "too_blurry": "the image is too blurry; hold the camera still, focus on the lesion and retake it",
    "not_a_lesion": "this does not look like a dermoscopic photo of a skin lesion; centre one lesion and fill "
                    "the frame with it",
}


SCORES = ("lesion_distance", "sharpness", "brightness", "colourfulness")  # the columns of `assess`
MIN_SIDE = 100  # px, shorter side: HAM10000's images are 600x450 at the source, 200x150 in the developers' copy
# Of validation lesions, all checks together. The goal is <= 2% of new lesions; at n ~ 1,300 a rate's standard
# error is ~0.4 points, so a 2% val budget would miss it half the time (it gave 2.2% on test): aim at 1.5%.
REJECTION_BUDGET = 0.015
QUALITY_TAIL = 0.0025  # each quality check rejects at most this share of validation lesions


class AssessSpecError(ValueError):
    """`skinscan.assess` metadata that cannot be used; the message names what is wrong."""


@dataclass(frozen=True)
class Check:
    score: str
    reason: str
    below: float | None = None
    above: float | None = None

    def fails(self, value: float) -> bool:
        # NaN (e.g. a degenerate image) fails every check: never silently pass what could not be measured.
        if value != value:
            return True
        return (self.below is not None and value < self.below) or (self.above is not None and value > self.above)


@dataclass(frozen=True)
class Verdict:
    """Why an image cannot be assessed (None: it can), with the scores behind the decision."""

    reason: str | None
    message: str | None
    scores: dict[str, float]

    @property
    def assessable(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class AssessSpec:
    scores: tuple[str, ...]
    checks: tuple[Check, ...]
    min_side: int
    messages: dict[str, str]

    @classmethod
    def from_metadata(cls, spec: dict) -> AssessSpec:
        """Parse the `skinscan.assess` metadata value; AssessSpecError names the malformed part."""
        try:
            scores = tuple(str(s) for s in spec["scores"])
            checks = []
            for raw in spec["checks"]:
                below, above = raw.get("below"), raw.get("above")
                if raw["score"] not in scores or (below is None) == (above is None):
                    raise AssessSpecError(f"check {raw!r} must name one of the scores {scores} and exactly one of "
                                          "'below' / 'above'")
                checks.append(Check(str(raw["score"]), str(raw["reason"]), None if below is None else float(below),
                                    None if above is None else float(above)))
            messages = {**MESSAGES, **{str(k): str(v) for k, v in spec.get("messages", {}).items()}}
            return cls(scores, tuple(checks), int(spec.get("min_side", 0)), messages)
        except AssessSpecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise AssessSpecError(f"model metadata skinscan.assess is malformed ({error!r}); re-export the "
                                  "package with `skinscan export`") from None

    def judge(self, row, image_size: tuple[int, int] | None = None) -> Verdict:
        """One image's `assess` row (and its decoded (width, height), when known) -> Verdict."""
        scores = {name: float(value) for name, value in zip(self.scores, row, strict=True)}
        if image_size is not None and min(image_size) < self.min_side:
            return Verdict(TOO_SMALL, self.messages[TOO_SMALL], scores)
        for check in self.checks:
            if check.fails(scores[check.score]):
                return Verdict(check.reason, self.messages.get(check.reason, check.reason), scores)
        return Verdict(None, None, scores)


def choose_thresholds(val_scores: np.ndarray, budget: float = REJECTION_BUDGET, tail: float = QUALITY_TAIL) -> dict:
    """The `skinscan.assess` metadata from validation lesions' scores [N, len(SCORES)].

    Each quality check turns away its `tail` of the validation lesions (the darkest 0.25%, i.e. 3 of 1,278;
    none of a set under 400); the distance threshold then takes whatever is left of the rejection
    `budget`: the lowest threshold with which the whole gate turns away at most `budget` of them.
    """
    column = {name: val_scores[:, i].astype(np.float64) for i, name in enumerate(SCORES)}
    per_check = int(np.floor(tail * len(val_scores)))  # images each quality check may turn away

    def lowest(values):  # a line below which exactly `per_check` images fall (fewer with ties)
        return float(np.sort(values)[per_check])

    def highest(values):
        return float(np.sort(values)[::-1][per_check])

    checks = [
        {"score": "brightness", "below": lowest(column["brightness"]), "reason": "too_dark"},
        {"score": "brightness", "above": highest(column["brightness"]), "reason": "too_bright"},
        {"score": "sharpness", "below": lowest(column["sharpness"]), "reason": "too_blurry"},
        {"score": "colourfulness", "below": lowest(column["colourfulness"]), "reason": "not_a_lesion"},
    ]
    quality_rejected = np.zeros(len(val_scores), dtype=bool)
    for check in checks:
        value = column[check["score"]]
        quality_rejected |= (value < check["below"]) if "below" in check else (value > check["above"])
    distance = column["lesion_distance"]
    allowed = int(np.floor(budget * len(distance))) - int(quality_rejected.sum())
    # Reject the `allowed` largest distances among the images the quality checks kept.
    kept = np.sort(distance[~quality_rejected])[::-1]
    threshold = float(kept[max(allowed, 0)]) if len(kept) > max(allowed, 0) else float(kept.min())
    checks.append({"score": "lesion_distance", "above": threshold, "reason": "not_a_lesion"})
    rejected = quality_rejected | (distance > threshold)
    return {
        "scores": list(SCORES),
        "min_side": MIN_SIDE,
        "checks": checks,
        "messages": dict(MESSAGES),
        "val_rejected": float(rejected.mean()),
        "budget": budget,
        "rule": f"thresholds chosen on the val split: each quality check at its {tail:.2%} tail, the lesion "
                f"distance so that all checks together reject <= {budget:.0%} of val lesions",
    }
