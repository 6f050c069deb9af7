"""Compare training recipes over several seeds: `skinscan train` runs side by side within a time budget.

    python scripts/recipe_sweep.py --out runs/sweep --seeds 0 1 2 3 4 --parallel 4 --budget 480 \\
        --recipe base= --recipe long30="--epochs 30" --recipe power1="--sampling-power 1.0" \\
        -- --data DATA --split runs/split.csv --pretrained WEIGHTS --threads 4

Everything after `--` goes to every run; each `--recipe NAME=ARGS` adds its own arguments. Why a sweep: val
balanced accuracy moves with the seed, so a recipe is judged by its mean and spread over seeds, not by one run
(docs/RESULTS.md, run F: five seeds of the default recipe gave 0.726-0.736). On a GPU a run of the default
recipe takes about a minute and several share the GPU well; on a 2-core CPU one run takes ~50 min.

Seeds average out training noise but not the val split's: every seed is scored on the same ~1,300 val images
(run L: +2 points over eight seeds on val, none on test). `--folds DIR` (from `skinscan data folds --out DIR`)
runs every recipe and seed on each cross-validation fold instead of the common `--split`, so each recipe is
scored on K different val sets (the test part is the same in every fold and never read):

    skinscan data folds --split runs/split.csv --folds 5 --out runs/folds
    python scripts/recipe_sweep.py --out runs/cv --folds runs/folds --seeds 0 --parallel 4 \
        --recipe base= --recipe sog-lb="--color-constancy shades-of-gray --lesion-balanced" \
        -- --data DATA --pretrained WEIGHTS --threads 4

Runs go round-robin over the seeds, so every recipe gets about as many seeds whatever the budget allows. A run
whose expected time (its recipe's finished runs, else the longest finished run) would pass the budget is not
started; runs still going when the budget is spent are stopped and reported as such. A run folder that already
holds a finished run (metrics.jsonl has every epoch its config.json asks for) is reused, not retrained, and one
that a stopped sweep left half done continues with `skinscan train --resume`, so a sweep can be resumed after
an interruption or extended with more seeds. Writes OUT/summary.json (every run's
per-epoch val metrics) and prints, per recipe, the mean and standard deviation over its finished runs of the
selected epoch's (the epoch `skinscan train` kept as best.pt by the run's `--select` rule) and the last epoch's metrics.
Val only: the test split is never read.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from skinscan.factory.train import selection_score


@dataclass
class Run:
    recipe: str
    seed: int
    folder: Path
    fold: Path | None = None  # a cross-validation split CSV (`skinscan data folds`) instead of the common --split
    status: str = "queued"  # queued, running, finished, reused, failed, stopped, skipped
    seconds: float = 0.0
    epochs: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return run_name(self.recipe, self.seed, self.fold)


def run_name(recipe: str, seed: int, fold: Path | None = None) -> str:
    """A run's folder name in the sweep: recipe, fold (if any) and seed."""
    return f"{recipe}-{fold.stem}-s{seed}" if fold else f"{recipe}-s{seed}"


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, sep, args = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--recipe {text!r}: expected NAME=ARGS (ARGS may be empty: base=)")
    return name, shlex.split(args)


def epoch_rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def selection_rule(folder: Path) -> str:
    """The run's `--select` rule (runs from before the option: balanced accuracy, what they used)."""
    config = folder / "config.json"
    settings = json.loads(config.read_text()) if config.is_file() else {}
    return settings.get("select", "balanced_accuracy")


def selected_epoch(run: Run) -> dict:
    """The epoch whose checkpoint the run kept as best.pt, by its own selection rule."""
    rule = selection_rule(run.folder)
    return max(run.epochs, key=lambda row: selection_score(row, rule))


def is_finished(folder: Path) -> bool:
    """A complete earlier run: as many epoch rows as its config asks for, and its best checkpoint."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / "best.pt").is_file():
        return False
    settings = json.loads(config.read_text())
    return len(epoch_rows(folder)) == settings["warmup_epochs"] + settings["epochs"]


def train_command(run: Run, recipe_args: list[str], common: list[str]) -> list[str]:
    """The run's `skinscan train`; with --resume where a stopped earlier attempt left its last.pt (resume is exact)."""
    resume = ["--resume"] if (run.folder / "last.pt").is_file() else []
    fold = ["--split", str(run.fold)] if run.fold else []
    return [sys.executable, "-m", "skinscan.cli", "train", *common, *recipe_args, *fold,
            "--seed", str(run.seed), "--out", str(run.folder), *resume]


def expected_seconds(run: Run, runs: list[Run]) -> float:
    timed = [r.seconds for r in runs if r.status == "finished"]
    same = [r.seconds for r in runs if r.status == "finished" and r.recipe == run.recipe]
    return max(same) if same else (max(timed) if timed else 0.0)


def sweep(recipes: dict[str, list[str]], seeds: list[int], common: list[str], out: Path, parallel: int,
          budget: float, folds: list[Path] | None = None) -> list[Run]:
    out.mkdir(parents=True, exist_ok=True)
    runs = [Run(recipe, seed, out / run_name(recipe, seed, fold), fold)
            for seed in seeds for fold in (folds or [None]) for recipe in recipes]
    for run in runs:
        if is_finished(run.folder):
            run.status, run.epochs = "reused", epoch_rows(run.folder)
            print(f"reused {run.name}: finished earlier in {run.folder}", flush=True)
    queue = [run for run in runs if run.status == "queued"]
    running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    start = time.time()
    try:
        while queue or running:
            for name, (run, process, began) in list(running.items()):
                if process.poll() is not None:
                    run.seconds = time.time() - began
                    run.status = "finished" if process.returncode == 0 else "failed"
                    del running[name]
                    print(f"[{time.time() - start:6.0f}s] {run.status} {run.name} in {run.seconds:.0f}s"
                          + ("" if run.status == "finished" else f" (exit {process.returncode}; see "
                                                                 f"{run.folder}.log)"), flush=True)
            elapsed = time.time() - start
            if elapsed >= budget:
                break
            while queue and len(running) < parallel:
                run = queue.pop(0)
                if elapsed + expected_seconds(run, runs) > budget:
                    run.status = "skipped"
                    print(f"skipped {run.name}: ~{expected_seconds(run, runs):.0f}s would pass the budget", flush=True)
                    continue
                run.folder.parent.mkdir(parents=True, exist_ok=True)
                with open(f"{run.folder}.log", "a") as log:  # the child keeps its own copy of the descriptor
                    process = subprocess.Popen(train_command(run, recipes[run.recipe], common), stdout=log,
                                               stderr=subprocess.STDOUT)
                run.status = "running"
                running[run.name] = (run, process, time.time())
                print(f"[{elapsed:6.0f}s] started {run.name}", flush=True)
            time.sleep(1)
    finally:  # the budget, Ctrl-C or an error: stop what still runs, keep what finished
        for run, process, began in running.values():
            process.terminate()
            process.wait()
            run.status, run.seconds = "stopped", time.time() - began
            print(f"stopped {run.name} after {run.seconds:.0f}s", flush=True)
        for run in runs:
            if run.status == "queued":
                run.status = "skipped"
            if run.status != "reused":
                run.epochs = epoch_rows(run.folder)
        write_summary(runs, out / "summary.json")
    return runs


def write_summary(runs: list[Run], path: Path) -> None:
    keys = ("epoch", "val_balanced_accuracy", "val_macro_auc", "train_loss", "seconds")
    path.write_text(json.dumps([{"recipe": r.recipe, "seed": r.seed, "status": r.status,
                                 "seconds": round(r.seconds, 1), "folder": str(r.folder),
                                 "fold": str(r.fold) if r.fold else None,
                                 "selected_epoch": selected_epoch(r)["epoch"] if r.epochs else None,
                                 "epochs": [{k: row.get(k) for k in keys} for row in r.epochs]} for r in runs],
                               indent=1))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def report(runs: list[Run], recipes: dict[str, list[str]]) -> str:
    lines = [f"{'recipe':<16} {'runs':>4}  {'selected bal.acc':>16}  {'selected AUC':>15}  {'last bal.acc':>15}  "
             f"{'last AUC':>15}  not finished"]
    for recipe in recipes:
        done = [r for r in runs if r.recipe == recipe and r.status in ("finished", "reused") and r.epochs]
        selected = [selected_epoch(r) for r in done]
        last = [r.epochs[-1] for r in done]
        others = ", ".join(f"{r.name} {r.status}" for r in runs if r.recipe == recipe and r not in done)
        lines.append(f"{recipe:<16} {len(done):>4}  "
                     f"{mean_sd([e['val_balanced_accuracy'] for e in selected]):>16}  "
                     f"{mean_sd([e['val_macro_auc'] for e in selected]):>15}  "
                     f"{mean_sd([e['val_balanced_accuracy'] for e in last]):>15}  "
                     f"{mean_sd([e['val_macro_auc'] for e in last]):>15}  {others or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, common = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s --out DIR --recipe NAME=ARGS [...] -- TRAIN ARGS")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder: one run folder per recipe and seed")
    parser.add_argument("--recipe", type=parse_recipe, action="append", required=True, metavar="NAME=ARGS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (a GPU takes several)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds for the whole sweep")
    parser.add_argument("--folds", type=Path, default=None, metavar="DIR",
                        help="run every recipe and seed on each fold-K.csv in DIR (`skinscan data folds`), so "
                             "recipes are compared on several val sets, not one")
    args = parser.parse_args(own)
    recipes = dict(args.recipe)
    if len(recipes) != len(args.recipe):
        parser.error("each --recipe needs its own NAME")
    folds = sorted(args.folds.glob("fold-*.csv")) if args.folds else None
    if args.folds and not folds:
        parser.error(f"--folds {args.folds}: no fold-*.csv there; make them with `skinscan data folds --out DIR`")
    for reserved in ("--seed", "--out") + (("--split",) if folds else ()):
        if reserved in common or any(reserved in a for a in recipes.values()):
            parser.error(f"{reserved} is set by the sweep; leave it out of the training arguments")
    runs = sweep(recipes, args.seeds, common, args.out, args.parallel, args.budget, folds)
    print(report(runs, recipes))
    print(f"per-epoch metrics of every run: {args.out / 'summary.json'}")
    return 1 if any(r.status == "failed" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
