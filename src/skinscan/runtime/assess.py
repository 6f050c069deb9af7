"""The "cannot assess" rule: the scores a model package computes for every image, judged by its thresholds.

Design note (one definition, two runtimes)
-----------------------------------------
The graph computes the scores (its `assess` output, see `skinscan.factory.gate`); which score means what and where
the lines are is data, the package's `skinscan.assess` metadata, chosen on the validation split at export:

    {"scores": ["lesion_distance", "sharpness", "brightness", "colourfulness"],
     "min_side": 100,
     "checks": [{"score": "brightness", "below": 101.9, "reason": "too_dark"}, ...],
     "messages": {"too_dark": "...", ...}}

A client evaluates every check (and "too_small": the decoded image's shorter side below `min_side`) and
answers with the failing reason that comes first in `precedence`: what the user must do first. A portrait is
"not a lesion photo" even when it is also darker than dermoscopy: "add light" would send them the wrong way.
The order is data too (`PRECEDENCE`, overridable by an optional `"precedence"` list in the metadata; packages
without one get this default). Reasons a package names but the list does not come last, in check order.
This module is that walk for Python (torch-free, used by `skinscan.runtime`); `app/assess.js` is the same walk
for the browser, and a test feeds both the same scores. Packages without `skinscan.assess` (older exports)
simply never answer "cannot assess".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ASSESS = "assess"  # the graph output: float [N, len(scores)]
TOO_SMALL = "too_small"
# What the user must fix first comes first: the wrong subject before the wrong kind of photo, before its quality.
PRECEDENCE = ("not_a_lesion", "not_dermoscopic", "too_small", "too_blurry", "too_dark", "too_bright")
REASONS = PRECEDENCE
MESSAGES = {
    "too_small": "the image is too small to show a lesion's structure; take a closer, higher-resolution photo",
    "too_dark": "the image is too dark; add light (without flash glare) and retake it",
    "too_bright": "the image is overexposed; reduce the light or avoid flash glare and retake it",
    "too_blurry": "the image is too blurry; hold the camera still, focus on the lesion and retake it",
    "not_a_lesion": "this does not look like a dermoscopic photo of a skin lesion; skinscan reads only images "
                    "taken through a dermatoscope (a magnifying lens with its own light, e.g. a clip-on lens for a "
                    "phone) pressed to the skin, with one lesion in the middle; an ordinary photo will not do",
    "not_dermoscopic": "this looks like an ordinary photo, not a dermoscopic image; the model only reads images "
                       "taken through a dermatoscope (a magnifying lens with its own light, e.g. a clip-on lens for a "
                       "phone) pressed to the skin",
}


SCORES = ("lesion_distance", "sharpness", "brightness", "colourfulness")  # the columns of `assess`
# The optional fifth column (`skinscan regate`): how dermoscopic the image looks (a logit; low = an ordinary photo).
DERMOSCOPY = "dermoscopy"
MIN_SIDE = 100  # px, shorter side: HAM10000's images are 600x450 at the source, 200x150 in the developers' copy
# Of validation lesions, all checks together. The goal is <= 2% of new lesions; at n ~ 1,300 a rate's standard
# error is ~0.4 points, so a 2% val budget would miss it half the time (it gave 2.2% on test): aim at 1.5%.
REJECTION_BUDGET = 0.015
QUALITY_TAIL = 0.0025  # each quality check rejects at most this share of validation lesions
DERMOSCOPY_TAIL = 0.005  # the dermoscopy check rejects at most this share of validation lesions


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
    precedence: tuple[str, ...] = PRECEDENCE

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
            precedence = spec.get("precedence", PRECEDENCE)
            if isinstance(precedence, str) or not all(isinstance(reason, str) for reason in precedence):
                raise AssessSpecError(f"precedence {precedence!r} must be a list of reasons, e.g. {list(PRECEDENCE)}")
            return cls(scores, tuple(checks), int(spec.get("min_side", 0)), messages, tuple(precedence))
        except AssessSpecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise AssessSpecError(f"model metadata skinscan.assess is malformed ({error!r}); re-export the "
                                  "package with `skinscan export`") from None

    def judge(self, row, image_size: tuple[int, int] | None = None) -> Verdict:
        """One image's `assess` row (and its decoded (width, height), when known) -> Verdict."""
        scores = {name: float(value) for name, value in zip(self.scores, row, strict=True)}
        failing = [TOO_SMALL] if image_size is not None and min(image_size) < self.min_side else []
        failing += [check.reason for check in self.checks if check.fails(scores[check.score])]
        if not failing:
            return Verdict(None, None, scores)
        reason = min(failing, key=self.rank)
        return Verdict(reason, self.messages.get(reason, reason), scores)

    def rank(self, reason: str) -> int:
        """A reason's place in `precedence`; reasons it does not list come after all it does (min keeps their
        check order, as it returns the first of equals)."""
        return self.precedence.index(reason) if reason in self.precedence else len(self.precedence)


def tail_value(values, share: float, low: bool = True) -> float:
    """A line past which floor(share * n) of the values fall: below it when `low`, above it otherwise."""
    ordered = np.sort(values) if low else np.sort(values)[::-1]
    return float(ordered[int(np.floor(share * len(values)))])


def choose_thresholds(val_scores: np.ndarray, budget: float = REJECTION_BUDGET, tail: float = QUALITY_TAIL,
                      scores: tuple[str, ...] | list[str] = SCORES, sharp: np.ndarray | None = None,
                      groups: np.ndarray | None = None, dermoscopy_tail: float = DERMOSCOPY_TAIL) -> dict:
    """The `skinscan.assess` metadata from validation lesions' scores [N, len(scores)].

    Each quality check turns away its `tail` of the validation lesions (the darkest 0.25%, i.e. 3 of 1,278;
    none of a set under 400); the dermoscopy check (when the graph has that score) its `dermoscopy_tail`;
    the distance threshold then takes whatever is left of the rejection `budget`: the lowest threshold with
    which the whole gate turns away at most `budget` of them.

    groups: the source of each row (e.g. HAM10000, BCN20000). Every line is then drawn so that it holds for
    each source alone: a quality line at the loosest of the sources' tails, the distance at the lowest
    threshold that keeps every source within the budget. A gate for dermoscopy from any device must not
    be set by the source with the most images.
    sharp: which rows the blur check is fitted on and applies to (default: all). Lesions from a low-resolution
    source (the extra folder's 84-px images, scaled up to the input size) are blurry by construction and
    refused as "too small" before the graph runs; they still teach the other lines what other devices'
    exposure and features look like.
    """
    scores = tuple(scores)
    column = {name: val_scores[:, i].astype(np.float64) for i, name in enumerate(scores)}
    count = len(val_scores)
    sharp = np.ones(count, dtype=bool) if sharp is None else np.asarray(sharp, dtype=bool)
    groups = np.zeros(count, dtype=int) if groups is None else np.asarray(groups)
    members = [groups == group for group in np.unique(groups)]

    def lowest(name, share=tail, rows=None):
        rows = np.ones(count, dtype=bool) if rows is None else rows
        return min(tail_value(column[name][m & rows], share, True) for m in members if (m & rows).any())

    def highest(name):
        return max(tail_value(column[name][m], tail, False) for m in members)

    checks = [
        {"score": "brightness", "below": lowest("brightness"), "reason": "too_dark"},
        {"score": "brightness", "above": highest("brightness"), "reason": "too_bright"},
        {"score": "sharpness", "below": lowest("sharpness", rows=sharp), "reason": "too_blurry"},
        {"score": "colourfulness", "below": lowest("colourfulness"), "reason": "not_a_lesion"},
    ]
    if DERMOSCOPY in column:
        checks.append({"score": DERMOSCOPY, "below": lowest(DERMOSCOPY, dermoscopy_tail),
                       "reason": "not_dermoscopic"})
    quality_rejected = np.zeros(count, dtype=bool)
    for check in checks:
        value = column[check["score"]]
        failed = (value < check["below"]) if "below" in check else (value > check["above"])
        quality_rejected |= failed & (sharp if check["score"] == "sharpness" else True)
    distance = column["lesion_distance"]
    threshold = -np.inf
    for m in members:  # each source: reject its `allowed` largest distances among the images the checks kept
        allowed = int(np.floor(budget * m.sum())) - int(quality_rejected[m].sum())
        kept = np.sort(distance[m & ~quality_rejected])[::-1]
        if len(kept):
            own = float(kept[max(allowed, 0)]) if len(kept) > max(allowed, 0) else float(kept.min())
            threshold = max(threshold, own)
    checks.append({"score": "lesion_distance", "above": threshold, "reason": "not_a_lesion"})
    rejected = quality_rejected | (distance > threshold)
    dermoscopy_rule = f", the dermoscopy score at its {dermoscopy_tail:.2%} tail" if DERMOSCOPY in column else ""
    per_source = " of every source" if len(members) > 1 else ""
    return {
        "scores": list(scores),
        "min_side": MIN_SIDE,
        "checks": checks,
        "messages": dict(MESSAGES),
        "precedence": list(PRECEDENCE),
        "val_rejected": float(rejected.mean()),
        "budget": budget,
        "rule": f"thresholds chosen on validation lesions{per_source}: each quality check at its {tail:.2%} tail"
                f"{dermoscopy_rule}, the lesion distance so that all checks together reject <= {budget:.1%} of "
                f"them",
    }
