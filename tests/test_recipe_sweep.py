"""scripts/recipe_sweep.py: recipes x seeds side by side, a failing run reported without stopping the sweep,
finished runs reused, the budget respected, and per-recipe means in the report. Tiny real-data runs on the CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the sweep trains: it needs the `train` extra (torch)")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "recipe_sweep.py"


def run_sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def tiny_training(ham10000_dir, split_csv) -> list[str]:
    return ["--", "--data", str(ham10000_dir), "--split", str(split_csv), "--pretrained", "none", "--max-images",
            "70", "--epochs", "1", "--input-size", "84", "112", "--device", "cpu", "--threads", "1"]


def test_sweep_runs_recipes_over_seeds_reports_failures_and_reuses_finished_runs(ham10000_dir, split_csv, tmp_path):
    out = tmp_path / "sweep"
    recipes = ["--recipe", "base=", "--recipe", "ls0=--label-smoothing 0", "--recipe", "broken=--epochs x"]
    first = run_sweep("--out", str(out), "--seeds", "0", "1", "--parallel", "2", *recipes,
                      *tiny_training(ham10000_dir, split_csv))
    assert first.returncode == 1, first.stdout + first.stderr  # the broken recipe failed...
    summary = {(r["recipe"], r["seed"]): r for r in json.loads((out / "summary.json").read_text())}
    for recipe in ("base", "ls0"):  # ...and the others still ran, each seed in its own folder
        for seed in (0, 1):
            run = summary[(recipe, seed)]
            assert run["status"] == "finished" and len(run["epochs"]) == 2  # warm-up + 1 epoch
            assert json.loads((out / f"{recipe}-s{seed}" / "config.json").read_text())["seed"] == seed
    assert summary[("ls0", 0)]["epochs"] and json.loads(
        (out / "ls0-s0" / "config.json").read_text())["label_smoothing"] == 0
    assert summary[("broken", 0)]["status"] == "failed" and "invalid int" in (out / "broken-s0.log").read_text()
    table = first.stdout.splitlines()
    base_row = next(line for line in table if line.startswith("base "))
    assert " 2 " in base_row and "±" in base_row
    assert any(line.startswith("broken") and "broken-s0 failed" in line for line in table)

    again = run_sweep("--out", str(out), "--seeds", "0", "1", "--recipe", "base=", "--budget", "0",
                      *tiny_training(ham10000_dir, split_csv))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("reused base-") == 2 and "started" not in again.stdout


def test_sweep_starts_nothing_past_its_budget_and_refuses_its_own_arguments(ham10000_dir, split_csv, tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep("--out", str(out), "--seeds", "0", "--recipe", "base=", "--budget", "0",
                       *tiny_training(ham10000_dir, split_csv))
    assert result.returncode == 0 and "started" not in result.stdout
    assert json.loads((out / "summary.json").read_text())[0]["status"] == "skipped"

    clash = run_sweep("--out", str(out), "--recipe", "base=--seed 3", *tiny_training(ham10000_dir, split_csv))
    assert clash.returncode == 2 and "--seed is set by the sweep" in clash.stderr
    malformed = run_sweep("--out", str(out), "--recipe", "no-equals-sign")
    assert malformed.returncode == 2 and "expected NAME=ARGS" in malformed.stderr


def test_report_selects_each_runs_epoch_by_its_own_selection_rule(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_sweep", SCRIPT)
    sweep = importlib.util.module_from_spec(spec)
    sys.modules["recipe_sweep"] = sweep  # its dataclass looks its module up there
    spec.loader.exec_module(sweep)
    epochs = [{"epoch": 1, "val_balanced_accuracy": 0.70, "val_macro_auc": 0.95},
              {"epoch": 2, "val_balanced_accuracy": 0.75, "val_macro_auc": 0.88}]
    runs = []
    for name, config in (("old", {}), ("sum", {"select": "balanced_accuracy_plus_auc"})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))  # a run from before --select: no "select" key
        runs.append(sweep.Run(name, 0, folder, status="finished", epochs=epochs))
    assert [sweep.selected_epoch(run)["epoch"] for run in runs] == [2, 1]
    table = sweep.report(runs, {"old": [], "sum": []})
    assert "0.750" in next(line for line in table.splitlines() if line.startswith("old"))
    assert "0.950" in next(line for line in table.splitlines() if line.startswith("sum"))


def test_sweep_over_cross_validation_folds_trains_each_recipe_on_every_fold(ham10000_dir, split_csv, tmp_path):
    from skinscan.factory.data import cross_validation_folds, read_split, write_split

    folds_dir = tmp_path / "folds"
    for k, fold in enumerate(cross_validation_folds(read_split(split_csv), folds=2)):
        write_split(fold, folds_dir / f"fold-{k}.csv")
    out = tmp_path / "cv"
    training = tiny_training(ham10000_dir, split_csv)
    training = training[:training.index("--split")] + training[training.index("--split") + 2:]
    result = run_sweep("--out", str(out), "--folds", str(folds_dir), "--seeds", "0", "--parallel", "2",
                       "--recipe", "base=", *training)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["fold"] for r in summary) == [str(folds_dir / "fold-0.csv"), str(folds_dir / "fold-1.csv")]
    for k in range(2):
        config = json.loads((out / f"base-fold-{k}-s0" / "config.json").read_text())
        assert config["split_csv"] == str(folds_dir / f"fold-{k}.csv")
    assert " 2 " in next(line for line in result.stdout.splitlines() if line.startswith("base "))

    clash = run_sweep("--out", str(out), "--folds", str(folds_dir), "--recipe", "base=",
                      *tiny_training(ham10000_dir, split_csv))
    assert clash.returncode == 2 and "--split is set by the sweep" in clash.stderr
    empty = run_sweep("--out", str(out), "--folds", str(tmp_path), "--recipe", "base=", *training)
    assert empty.returncode == 2 and "no fold-*.csv" in empty.stderr
