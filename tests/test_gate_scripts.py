"""scripts/gate_tradeoff.py and scripts/gate_fitside.py: the lines they move are the lines the runtime judges
with, and the fit-side comparison runs on a cache of the shape `skinscan regate --cache` writes."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from skinscan.runtime.assess import DERMOSCOPY, SCORES, AssessSpec

pytest.importorskip("sklearn", reason="the fit needs the `report` extra")


def load(name):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tradeoff_moves_only_the_two_lines():
    tradeoff = load("gate_tradeoff")
    spec = AssessSpec.from_metadata({"scores": [*SCORES, DERMOSCOPY], "min_side": 100, "checks": [
        {"score": "brightness", "below": 60.0, "reason": "too_dark"},
        {"score": DERMOSCOPY, "below": 0.0, "reason": "not_dermoscopic"},
        {"score": "lesion_distance", "above": 10.0, "reason": "not_a_lesion"}]})
    moved = tradeoff.with_lines(spec, dermoscopy=-2.0, distance=50.0)
    rows = np.array([[20.0, 5.0, 150.0, 30.0, -1.0],   # refused before (both lines), kept after
                     [20.0, 5.0, 40.0, 30.0, -1.0],    # too dark either way
                     [60.0, 5.0, 150.0, 30.0, 1.0]])   # beyond the new distance line too
    assert tradeoff.refused(spec, rows, [None] * 3) == 1.0
    assert tradeoff.refused(moved, rows, [None] * 3) == pytest.approx(2 / 3)
    assert moved.checks[0] == spec.checks[0]  # the quality line is untouched
    assert tradeoff.refused(moved, rows[:1], [(50, 50)]) == 1.0  # the size check still applies


def test_fitside_runs_on_a_regate_cache(tmp_path, capsys):
    from skinscan.factory.regate import EXTRA, HAM10000, FitScores, GateScores

    rng = np.random.default_rng(0)

    def scores(n, shift, pooled_shift):
        statistics = {block: rng.normal(shift, 1.0, (n, 6)) for block in (4, 5)}
        assess = np.column_stack([np.zeros(n), np.full(n, 10.0), np.full(n, 150.0), np.full(n, 30.0)])
        return GateScores(statistics, assess, list(SCORES), rng.normal(pooled_shift, 1.0, (n, 12)))

    sets = {"lesions": scores(400, 0.0, 0.0), "val": scores(200, 0.0, 0.0), "val_low_resolution": scores(200, 0.3, 0.3),
            "ordinary": scores(100, -3.0, -3.0), "generic": scores(200, -3.0, -3.0),
            "generic_held_out": scores(100, -3.0, -3.0)}
    FitScores(sets, np.r_[np.full(200, HAM10000), np.full(200, EXTRA)]).save(tmp_path / "fit.npz")
    load("gate_fitside").main(str(tmp_path / "fit.npz"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "candidate 4" in lines[2]
    assert "generic held-out photos refused by the score alone 100.0%" in lines[2]  # far apart: all refused


def test_imagenet_fitside_compares_both_feature_sets():
    pytest.importorskip("torchvision", reason="the script loads the ImageNet backbone (`train` extra)")
    from skinscan.factory.regate import EXTRA, HAM10000, FitScores, GateScores

    rng = np.random.default_rng(1)
    names = ("lesions", "val", "val_low_resolution", "ordinary", "generic", "generic_held_out")
    shift = {"lesions": 0.0, "val": 0.0, "val_low_resolution": 0.0, "ordinary": -3.0, "generic": -3.0,
             "generic_held_out": -3.0}
    count = {"lesions": 400}
    sets, imagenet = {}, {}
    for name in names:
        n = count.get(name, 200)
        sets[name] = GateScores({}, np.zeros((n, 4)), list(SCORES), rng.normal(shift[name], 1.0, (n, 8)))
        imagenet[name] = rng.normal(shift[name], 1.0, (n, 5))
    source = np.r_[np.full(200, HAM10000), np.full(200, EXTRA)]
    lines = load("gate_imagenet_fitside").compare(FitScores(sets, source), imagenet, source)
    assert len(lines) == 6 and lines[0].startswith("classifier C=0.002") and lines[-1].startswith("imagenet C=0.05")
    assert all("generic held-out refused 100.0%" in line for line in lines)  # far apart in both feature sets
