"""The `skinscan` command: one verb at a time (data, train, evaluate, ...), each saying where results went.

Heavy modules (torch) are imported inside the verbs that need them, so `skinscan --help` and the
runtime verbs start fast and work without the `train` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from skinscan import DISCLAIMER, __version__


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2, no traceback."""


# ------------------------------------------------------------------------------------------------ data
def data_source(args):
    """The DataSource the data options name: --data's layout, with --images, --metadata and columns overriding."""
    from skinscan.data import DataSource, as_source

    folder = as_source(args.data)
    return DataSource(image_dir=args.images or folder.image_dir, metadata=getattr(args, "metadata", None) or
                      folder.metadata, id_column=getattr(args, "id_column", "image_id"),
                      group_column=getattr(args, "group_column", "lesion_id"),
                      label_column=getattr(args, "label_column", "dx"))


def cmd_data_validate(args) -> int:
    from skinscan.data import validate_dataset
    from skinscan.labels import load_label_set

    report = validate_dataset(data_source(args), check_images=not args.skip_images, labels=load_label_set(args.labels))
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def cmd_data_split(args) -> int:
    from skinscan.data import lesion_grouped_split, read_metadata, require_known_labels, write_split
    from skinscan.labels import load_label_set

    if args.source:
        return _multi_source_split(args)
    if args.external:
        raise UsageError("--external sets lesions of a named source apart: use it with --source NAME=FOLDER")
    source = data_source(args)
    metadata = read_metadata(source)
    require_known_labels(metadata.dx, load_label_set(args.labels), str(source.metadata))
    split = lesion_grouped_split(metadata, fractions=args.fractions, seed=args.seed)
    path = write_split(split, args.out)
    counts = split.groupby(["dx", "split"]).size().unstack(fill_value=0)
    print(counts.to_string())
    print(f"\n{split.lesion_id.nunique()} lesions, {len(split)} images -> {path}")
    return 0


def _multi_source_split(args) -> int:
    """`skinscan data split --source NAME=FOLDER ...`: several sources, each checked and split by lesion."""
    from skinscan.data import write_split
    from skinscan.labels import load_label_set
    from skinscan.sources import ExternalRule, multi_source_split, parse_source, split_counts

    sources = [parse_source(text) for text in args.source]
    rules = [ExternalRule.parse(text) for text in args.external]
    split = multi_source_split(sources, load_label_set(args.labels), fractions=args.fractions, seed=args.seed,
                               external=rules, check_images=not args.skip_image_check, threads=args.threads)
    path = write_split(split, args.out, sources=sources)
    print(split_counts(split).to_string())
    print(f"\n{split.lesion_id.nunique()} lesions, {len(split)} images from {len(sources)} source(s) -> {path} "
          f"(image folders: {path.with_name(path.stem + '.sources.json')})")
    return 0


def cmd_data_folds(args) -> int:
    from skinscan.data import cross_validation_folds, read_split, write_split

    split = read_split(args.split)
    folds = cross_validation_folds(split, folds=args.folds, seed=args.seed)
    sources = None
    if "source" in split.columns:  # each fold file carries the sidecar saying where the sources' images are
        from skinscan.sources import read_sources

        sources = list(read_sources(args.split).values())
    for k, fold in enumerate(folds):
        val = fold[fold.split == "val"]
        path = write_split(fold, args.out / f"fold-{k}.csv", sources=sources)
        print(f"{path}: val {len(val)} images of {val.lesion_id.nunique()} lesions "
              f"({', '.join(f'{dx} {n}' for dx, n in val.dx.value_counts().sort_index().items())})")
    print(f"test part unchanged from {args.split}; train each fold with `skinscan train --split FOLD.csv`")
    return 0


def cmd_data_download(args) -> int:
    from skinscan.download import DownloadError, download_ham10000

    try:
        out = download_ham10000(args.out, base_url=args.base_url)
    except DownloadError as error:
        raise UsageError(str(error)) from None
    print(f"HAM10000 is in {out}; check it with `skinscan data validate --data {out}`")
    return 0


# ----------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from skinscan.augment import AugmentConfig
    from skinscan.labels import load_label_set
    from skinscan.train import TrainConfig, train

    config = TrainConfig(
        data_dir=str(args.images or args.data), split_csv=str(args.split), out_dir=str(args.out), arch=args.arch,
        pretrained=None if args.pretrained.lower() == "none" else args.pretrained,
        input_size=tuple(args.input_size), resize=args.resize,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        sampling_power=args.sampling_power, logit_adjustment=args.logit_adjustment, ema_decay=args.ema_decay,
        augment=AugmentConfig(zoom=tuple(args.zoom)), seed=args.seed, threads=args.threads, device=args.device,
        max_images=args.max_images, label_set=load_label_set(args.labels).to_json(), compile=args.compile,
        teachers=[str(t) for t in args.teacher], distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, mixup_alpha=args.mixup,
        color_constancy=args.color_constancy.replace("-", "_"), lesion_balanced=args.lesion_balanced,
        histo_weight=args.histo_weight, select=args.select.replace("-", "_"),
    )
    best = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"run folder: {args.out} (config.json, log.txt, metrics.jsonl, last.pt)\nbest model: {best}")
    print(f"next: skinscan evaluate --checkpoint {best} --split {args.split} --data {args.images or args.data}")
    return 0


# --------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from skinscan.compare import compare_checkpoints, format_comparison, write_comparison

    comparison = compare_checkpoints(args.checkpoint, data_source(args), args.split, part=args.part, tta=args.tta,
                                     n_bootstrap=args.bootstrap, threads=args.threads)
    print(format_comparison(comparison))
    if args.out:
        write_comparison(comparison, args.out)
        print(f"written: {args.out}")
    return 0


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    if args.model is not None:
        return _evaluate_package(args)
    from skinscan.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, data_source(args), args.split, args.out, part=args.part,
                                  tta=args.tta, threads=args.threads)
    _print_per_collection(metrics)
    melanoma = metrics["per_class"].get("mel")
    headline = (f"{args.part}: balanced accuracy {metrics['balanced_accuracy']:.3f}, macro AUC "
                f"{metrics['macro_auc']:.3f}, "
                + (f"melanoma sensitivity {melanoma['sensitivity']:.3f}, " if melanoma else "")
                + f"ECE {metrics['ece']:.3f} (calibrated)")
    print(headline)
    print(f"report: {Path(args.out) / 'report.md'} (metrics.json, plots)")
    print(DISCLAIMER)
    return 0


def _evaluate_package(args) -> int:
    """`skinscan evaluate --model PKG`: score a model package (ONNX Runtime, torch-free) on one split part."""
    from skinscan.manifest import IntegrityError
    from skinscan.package_evaluation import evaluate_package
    from skinscan.runtime import ModelPackageError

    if args.tta:
        raise UsageError("--tta needs a checkpoint; a package is scored as `skinscan predict` runs it")
    model = None if str(args.model) == "bundled" else args.model
    try:
        metrics = evaluate_package(model, args.split, args.out, part=args.part, precision=args.precision,
                                   data=data_source(args), threads=args.threads or None,
                                   max_images=args.max_images)
    except (ModelPackageError, IntegrityError) as error:
        raise UsageError(str(error)) from None
    _print_per_collection(metrics)
    gate = metrics["gate"]
    print(f"{args.part} ({metrics['package']['precision']}): balanced accuracy {metrics['balanced_accuracy']:.3f}"
          f" (over the classes present), melanoma AUC {_number(metrics['per_class'].get('mel', {}).get('auc'))}"
          + (f"; gate turned away {gate['turned_away']} of {gate['n']}" if gate else ""))
    print(f"report: {Path(args.out) / 'report.md'} (metrics.json, predictions.csv, plots)")
    print(DISCLAIMER)
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_per_collection(metrics: dict) -> None:
    for name, row in (metrics.get("per_collection") or {}).items():
        away = row.get("turned_away")
        print(f"  {name}: n {row['n']}, classes {'/'.join(row['classes_present'])}, balanced accuracy "
              f"{_number(row['balanced_accuracy'])}, melanoma AUC {_number(row['melanoma_auc'])}, sensitivity at 80% "
              f"specificity {_number(row['melanoma_sensitivity_at_80_specificity'])}, ECE {_number(row['ece'])}"
              + ("" if away is None else f", turned away {away:.1%}"))


# ---------------------------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from skinscan.export import build_package

    metadata = build_package(args.checkpoint, args.images or args.data, args.split, args.out, threads=args.threads)
    print(f"temperature {metadata['skinscan.temperature']:.3f}, malignant threshold "
          f"{metadata['skinscan.thresholds']['malignant']:.3f} (fitted on val)")
    print(f"model package: {args.out} (skinscan.onnx, skinscan.ort, manifest.json)")
    return 0


# --------------------------------------------------------------------------------------------- predict
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def cmd_predict(args) -> int:
    # Torch-free on purpose: only the runtime, numpy and tqdm (a test runs this verb with torch blocked).
    import numpy as np
    from tqdm import tqdm

    from skinscan.manifest import IntegrityError
    from skinscan.preprocess import ImageError
    from skinscan.runtime import IMAGE_SUFFIXES, Classifier, ModelPackageError, find_images

    images, failures = find_images(args.paths)
    if not images:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in failures)
        raise UsageError(f"no images found ({reasons}); pass image files ({' '.join(IMAGE_SUFFIXES)}), "
                         "folders or glob patterns")
    try:
        classifier = Classifier.load(args.model, precision=args.precision, threads=args.threads)
    except (ModelPackageError, IntegrityError) as error:
        raise UsageError(str(error)) from None
    if args.explain is not None and not classifier.has_cam:
        raise UsageError(f"this model package ({classifier.path}) has no explanation output (`cam`), so --explain "
                         "cannot draw one; re-export it with `skinscan export` (then `skinscan quantize`)")

    predictions, overlays, taken = [], 0, set()
    with tqdm(total=len(images), unit="image", desc="classifying", file=sys.stderr, disable=len(images) < 2) as bar:
        for start in range(0, len(images), args.batch_size):
            chunk, arrays, sources, sizes = images[start:start + args.batch_size], [], [], []
            for path in chunk:
                try:
                    array, size = classifier.decode(path)
                except (ImageError, OSError) as error:
                    failures.append((str(path), str(error)))
                    continue
                arrays.append(array)
                sources.append(str(path))
                sizes.append(size)
            if arrays:
                batch = classifier.classify_arrays(np.stack(arrays), sources, sizes)
                predictions += batch
                if args.explain is not None:
                    from skinscan.explain import overlay_path, save_overlay  # loads matplotlib, only for --explain

                    for array, prediction in zip(arrays, batch, strict=True):
                        save_overlay(array, prediction, overlay_path(args.explain, prediction.source, taken))
                        overlays += 1
            bar.update(len(chunk))

    if args.json:
        _print_predictions_json(classifier, predictions, failures)
    elif args.csv:
        _print_predictions_csv(classifier, predictions)
    else:
        _print_predictions_table(classifier, predictions)
    if failures:
        print(f"\n{len(failures)} input(s) could not be classified:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
    if args.explain is not None:
        print(f"{overlays} explanation overlay(s) (Grad-CAM of the top diagnosis) written to {args.explain}",
              file=sys.stderr if args.json or args.csv else sys.stdout)
    print(DISCLAIMER, file=sys.stderr if args.json or args.csv else sys.stdout)
    return 1 if failures else 0


def _print_predictions_json(classifier, predictions, failures) -> None:
    import json

    document = {
        "model": {"path": str(classifier.path), "precision": classifier.precision, "version": classifier.version,
                  "malignant_threshold": classifier.threshold},
        "predictions": [prediction.to_dict() for prediction in predictions],
        "failures": [{"source": path, "error": reason} for path, reason in failures],
        "disclaimer": DISCLAIMER,
    }
    print(json.dumps(document, indent=2))


def _print_predictions_csv(classifier, predictions) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["file", "label", "name", "probability", *classifier.labels, "malignant_probability", "malignant",
                     "cannot_assess"])
    for p in predictions:
        writer.writerow([p.source, p.label, p.name, f"{p.probability:.6f}",
                         *(f"{p.probabilities[code]:.6f}" for code in classifier.labels),
                         f"{p.malignant_probability:.6f}", "true" if p.malignant else "false", p.cannot_assess or ""])


def _print_predictions_table(classifier, predictions) -> None:
    if not predictions:
        print("no image could be classified")
        return
    rows = [("FILE", "DIAGNOSIS", "2ND", "3RD", "P(MALIGNANT)", "MALIGNANCY")]
    for p in predictions:
        (code, name, probability), *others = p.top
        if not p.assessable:  # the network's guess is not a result: say why and what to do instead
            rows.append((p.source or "-", f"CANNOT ASSESS ({p.cannot_assess.replace('_', ' ')})", "-", "-", "-",
                         p.cannot_assess_message or ""))
            continue
        rows.append((p.source or "-", f"{name} ({code}) {probability:.1%}",
                     *(f"{c} {q:.1%}" for c, _, q in others), f"{p.malignant_probability:.1%}",
                     "SUSPICIOUS: see a dermatologist" if p.malignant else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    shown = {c for p in predictions if p.assessable for c, _, _ in p.top[1:]}
    if shown:
        print("codes: " + "; ".join(f"{c} = {classifier.label_names[c]}" for c in classifier.labels if c in shown))
    flagged = sum(p.malignant for p in predictions if p.assessable)
    unassessable = sum(not p.assessable for p in predictions)
    malignant = "+".join(f"P({code})" for code in classifier.malignant_codes)
    print(f"\n{len(predictions)} image(s) classified with {classifier.path} ({classifier.precision}); {flagged} "
          f"flagged SUSPICIOUS ({malignant} >= {classifier.threshold:.2f}); {unassessable} could not be assessed")


# ------------------------------------------------------------------------------------------- benchmark
def cmd_qat(args) -> int:
    from skinscan.qat import quantization_aware_finetune

    best = quantization_aware_finetune(args.checkpoint, args.out, args.images or args.data, args.split,
                                       epochs=args.epochs,
                                       lr=args.lr, threads=args.threads)
    print(f"quantization-aware checkpoint: {best} (history: {Path(args.out) / 'qat_history.json'})")
    print(f"next: skinscan export --checkpoint {best} --out PACKAGE && skinscan quantize --model PACKAGE")
    return 0


def cmd_quantize(args) -> int:
    from skinscan.quantize import quantize_package

    report = quantize_package(args.model, args.data, args.split, part=args.part,
                              calibration_count=args.calibration_images, calibrate_method=args.method,
                              graph_edits=not args.no_graph_edits, seed=args.seed, float_blocks=args.float_blocks)
    latency = report["latency"]
    print(f"{args.part}: balanced accuracy FP32 {report['fp32']['balanced_accuracy']:.3f} -> INT8 "
          f"{report['int8']['balanced_accuracy']:.3f} ({report['balanced_accuracy_drop_points']:+.1f} points lost); "
          f"top-1 agreement {report['top1_agreement']:.3f}")
    print(f"latency (1 thread, batch 1): FP32 {latency['fp32']['median_ms']:.2f} ms, INT8 "
          f"{latency['int8']['median_ms']:.2f} ms -> {latency['int8_vs_fp32']:.2f}x; size "
          f"{report['fp32']['megabytes']:.1f} MB -> {report['int8']['megabytes']:.1f} MB")
    print(f"INT8 model: {Path(args.model) / 'skinscan-int8.onnx'}; report: {Path(args.model) / 'quantization.json'}")
    return 0


def cmd_gate(args) -> int:
    from skinscan.gate_report import format_gate_report, gate_report
    from skinscan.runtime import ModelPackageError

    try:
        report = gate_report(args.model, args.data, args.split, part=args.part, max_images=args.max_images)
    except (ModelPackageError, ValueError) as error:  # ValueError: a package without the gate
        raise UsageError(str(error)) from None
    print(format_gate_report(report))
    print(f"report: {Path(args.model) / 'gate.json'}")
    return 0


def cmd_card(args) -> int:
    from skinscan.model_card import write_model_card

    notes = Path(args.notes).read_text() if args.notes else ""
    path = write_model_card(args.model, args.evaluation, args.command, notes, external_dir=args.external_evaluation)
    print(f"model card: {path}")
    return 0


def cmd_benchmark(args) -> int:
    # Torch-free unless --checkpoint asks for the PyTorch eager engine.
    from skinscan.benchmark import format_table, run_benchmark, stderr_progress, write_json
    from skinscan.manifest import IntegrityError

    try:
        report = run_benchmark(args.model, args.checkpoint, threads=args.threads, batches=args.batch,
                               iterations=args.iterations, warmup=args.warmup, rounds=args.rounds,
                               progress=stderr_progress)
    except IntegrityError as error:
        raise UsageError(str(error)) from None
    print(format_table(report))
    print(f"results: {write_json(report, args.json)}")
    return 0


def cmd_app(args) -> int:
    # Torch-free: the stdlib HTTP server; the browser does the screening (onnxruntime-web).
    from skinscan.app_server import serve
    from skinscan.manifest import IntegrityError
    from skinscan.runtime import ModelPackageError

    try:
        return serve(args.host, args.port, args.model)
    except (ModelPackageError, IntegrityError, OSError) as error:
        raise UsageError(str(error)) from None


# ------------------------------------------------------------------------------------------------ main
def add_data_arguments(parser: argparse.ArgumentParser, metadata: bool = True, labels: bool = False) -> None:
    """Where the data set is: HAM10000's layout by default, any image folder + CSV with --images/--metadata."""
    from skinscan.data import default_data_dir

    group = parser.add_argument_group("data set", "HAM10000's layout by default; any folder of images plus a CSV "
                                      "with one row per image (ISIC 2019/2020 exports) via --images and --metadata")
    group.add_argument("--data", type=Path, default=default_data_dir(),
                       help="HAM10000-style folder: DATA/images/ and DATA/HAM10000_metadata.csv (default: %(default)s)")
    group.add_argument("--images", type=Path, default=None,
                       help="the folder of images, named <image id>.jpg/.png (default: DATA/images)")
    if metadata:
        group.add_argument("--metadata", type=Path, default=None,
                           help="CSV with one row per image (default: DATA/HAM10000_metadata.csv)")
        group.add_argument("--id-column", default="image_id", help="CSV column with the image id (file name stem)")
        group.add_argument("--group-column", default="lesion_id",
                           help="CSV column with the lesion (group) id: a split never divides a group")
        group.add_argument("--label-column", default="dx", help="CSV column with the diagnosis code")
    if labels:
        group.add_argument("--labels", default=None, metavar="FILE",
                           help="label set: a JSON list of {code, name, malignant} in output order, or a built-in "
                                "set (ham10000, isic2019); default: HAM10000's 7 diagnoses")


def build_parser() -> argparse.ArgumentParser:
    from skinscan.data import default_data_dir

    parser = argparse.ArgumentParser(prog="skinscan", description=f"skinscan {__version__}: {DISCLAIMER}")
    parser.add_argument("--version", action="version", version=f"skinscan {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="validate, split or download a HAM10000-style data set")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    validate = data_verbs.add_parser("validate", help="check metadata and images; non-zero exit on problems")
    add_data_arguments(validate, labels=True)
    validate.add_argument("--skip-images", action="store_true", help="do not decode every image")
    validate.add_argument("--limit", type=int, default=5, help="examples shown per problem")
    validate.set_defaults(func=cmd_data_validate)
    split = data_verbs.add_parser("split", help="lesion-grouped, diagnosis-stratified train/val/test CSV")
    add_data_arguments(split, labels=True)
    split.add_argument("--out", type=Path, default=Path("runs/split.csv"))
    split.add_argument("--fractions", type=float, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--source", action="append", default=[], metavar="NAME=FOLDER[,metadata=CSV,...]",
                       help="a source of a multi-source split (repeat it; replaces --data/--images/--metadata): "
                            "FOLDER has images/ (or is the image folder) and HAM10000_metadata.csv or metadata.csv; "
                            "options metadata=, images=, id_column=, group_column=, label_column=. Each source is "
                            "checked row by row and split by lesion on its own; the split gains source and "
                            "collection columns and a SPLIT.sources.json beside it that later steps read")
    split.add_argument("--external", action="append", default=[], metavar="SOURCE:COLUMN=VALUE",
                       help="put the lesions of SOURCE with an image whose metadata COLUMN is VALUE in the "
                            "'external' part, which no model trains, selects or calibrates on, e.g. "
                            "isic2019_extra:width=256 (the ISIC 2017-era images); repeatable")
    split.add_argument("--skip-image-check", action="store_true",
                       help="with --source: check that each image exists but do not decode it")
    split.add_argument("--threads", type=int, default=2, help="threads decoding images to check them")
    split.set_defaults(func=cmd_data_split)
    folds = data_verbs.add_parser("folds", help="K cross-validation train/val splits of a split's train+val part "
                                  "(its test part unchanged), to compare recipes on more than one val set")
    folds.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    folds.add_argument("--folds", type=int, default=5)
    folds.add_argument("--seed", type=int, default=0)
    folds.add_argument("--out", type=Path, default=Path("runs/folds"), help="folder for fold-0.csv ... fold-K-1.csv")
    folds.set_defaults(func=cmd_data_folds)
    download = data_verbs.add_parser("download", help="download the full-resolution HAM10000 (Harvard Dataverse)")
    download.add_argument("--out", type=Path, required=True)
    download.add_argument("--base-url", default="https://dataverse.harvard.edu")
    download.set_defaults(func=cmd_data_download)

    tr = verbs.add_parser("train", help="fine-tune a MobileNet on the train split, select on val balanced accuracy")
    add_data_arguments(tr, metadata=False, labels=True)
    tr.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split` (it carries the image ids, groups and labels)")
    tr.add_argument("--out", type=Path, default=Path("runs/train"))
    tr.add_argument("--arch", default="mobilenet_v3_small",
                    choices=["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"])
    tr.add_argument("--pretrained", default="imagenet",
                    help="'imagenet' (torchvision download), a local state_dict .pth with its .json beside it, "
                         "or 'none' (random initialisation)")
    tr.add_argument("--input-size", type=int, nargs=2, default=(252, 336), metavar=("H", "W"),
                    help="network input (height, width); the default is 1.68x HAM10000's 150x200 source")
    tr.add_argument("--resize", default="center_crop", choices=["center_crop", "stretch"])
    tr.add_argument("--warmup-epochs", type=int, default=1, help="head-only epochs with the backbone frozen")
    tr.add_argument("--epochs", type=int, default=12, help="full fine-tuning epochs")
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--weight-decay", type=float, default=0.05)
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--sampling-power", type=float, default=0.5,
                    help="class-balanced sampling strength: 0 natural, 0.5 square-root, 1 fully balanced")
    tr.add_argument("--logit-adjustment", type=float, default=1.0, help="tau of the logit-adjusted loss (0 = off)")
    tr.add_argument("--ema-decay", type=float, default=0.995,
                    help="cap of the weight average's decay; its ramp (1+n)/(10+n) reaches 0.995 only after 1,790 "
                         "steps, more than the default run on HAM10000 takes (the log says when it has no effect)")
    tr.add_argument("--zoom", type=float, nargs=2, default=(0.85, 1.35), metavar=("MIN", "MAX"),
                    help="random zoom range of the augmentation (>1 zooms in)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    tr.add_argument("--max-images", type=int, default=0, help="use only ~N images per split (smoke tests)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    tr.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                    help="torch.compile the training steps (default backend: inductor). Off by default: compiling "
                         "takes minutes, worth it on long GPU runs (README: Training at scale)")
    tr.add_argument("--teacher", type=Path, action="append", default=[], metavar="CKPT",
                    help="distil from this trained checkpoint (repeat for an ensemble; same labels and input size)")
    tr.add_argument("--distill-weight", type=float, default=0.7,
                    help="share of the distillation term in the loss when --teacher is given")
    tr.add_argument("--distill-temperature", type=float, default=2.0)
    tr.add_argument("--color-constancy", default="none", choices=["none", "shades-of-gray"],
                    help="shades-of-gray: divide out each image's illuminant estimate (Minkowski p=6) inside the "
                         "model, so export and the runtime apply it too (docs/RESULTS.md run J)")
    tr.add_argument("--select", default="balanced-accuracy",
                    choices=["balanced-accuracy", "balanced-accuracy-plus-auc"],
                    help="which epoch best.pt keeps: the best val balanced accuracy, or the best sum of val balanced "
                         "accuracy and macro AUC (late epochs can gain the one while losing the other)")
    tr.add_argument("--lesion-balanced", action="store_true",
                    help="within each class, sample every lesion equally often instead of every image (repeat "
                         "views of one lesion then share its turn; the class balance is unchanged)")
    tr.add_argument("--histo-weight", type=positive_float, default=1.0, metavar="W",
                    help="within each class, sample histopathology-confirmed images (metadata dx_type 'histo') W "
                         "times as often as the others, e.g. 3 for more of the hard, excised nevi; the class "
                         "balance is unchanged (default 1: no preference)")
    tr.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                    help="mixup with lambda ~ Beta(ALPHA, ALPHA), e.g. 0.2 (0 = off, the default recipe)")
    tr.set_defaults(func=cmd_train)

    ev = verbs.add_parser("evaluate", help="ISIC-challenge metrics, plots and a report for a checkpoint")
    ev.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(ev)
    ev.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ev.add_argument("--part", default="test", choices=["train", "val", "test", "external"],
                    help="split part to score; 'external' is the collection set apart by `data split --external`")
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"))
    ev.add_argument("--tta", action="store_true", help="average the 4 flips of each image")
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--model", type=Path, default=None, metavar="PACKAGE",
                    help="score a model package instead of --checkpoint, with ONNX Runtime as `skinscan predict` "
                         "runs it (its own temperature and gate; no torch); 'bundled' for the bundled package")
    ev.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"],
                    help="with --model: which ONNX file of the package (auto = int8 when present)")
    ev.add_argument("--max-images", type=int, default=0, help="with --model: only the first N images (smoke tests)")
    ev.set_defaults(func=cmd_evaluate)
    co = verbs.add_parser("compare", help="several checkpoints (seeds, recipes) and their ensemble on one split, "
                                          "with paired bootstrap intervals against the first")
    co.add_argument("--checkpoint", type=Path, action="append", required=True,
                    help="a training checkpoint; repeat for each model (the first is the reference)")
    add_data_arguments(co)
    co.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    co.add_argument("--part", default="val", choices=["train", "val", "test"],
                    help="score on this part (default val: choose on val, look at test once)")
    co.add_argument("--tta", action="store_true", help="add rows with the 4 flips of each image averaged")
    co.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    co.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON here")
    co.add_argument("--threads", type=int, default=0)
    co.set_defaults(func=cmd_compare)
    ex = verbs.add_parser("export", help="checkpoint -> model package (ONNX with calibration, ORT Mobile form)")
    ex.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(ex, metadata=False)
    ex.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ex.add_argument("--out", type=Path, default=Path("runs/package"))
    ex.add_argument("--threads", type=int, default=0)
    ex.set_defaults(func=cmd_export)

    qa = verbs.add_parser("qat", help="quantization-aware fine-tuning of a checkpoint (INT8 simulated)")
    qa.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(qa, metadata=False)
    qa.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    qa.add_argument("--out", type=Path, default=Path("runs/qat"))
    qa.add_argument("--epochs", type=int, default=2)
    qa.add_argument("--lr", type=float, default=1e-4)
    qa.add_argument("--threads", type=int, default=0)
    qa.set_defaults(func=cmd_qat)

    qu = verbs.add_parser("quantize", help="add a static INT8 model to a package; accuracy/latency report")
    qu.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    qu.add_argument("--data", type=Path, default=default_data_dir())
    qu.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    qu.add_argument("--part", default="test", choices=["val", "test"], help="split part the report scores")
    qu.add_argument("--calibration-images", type=int, default=256, help="training images used to calibrate")
    qu.add_argument("--method", default="MinMax", choices=["MinMax", "Percentile", "Entropy"],
                    help="activation calibration (MinMax measured most accurate on our model)")
    qu.add_argument("--no-graph-edits", action="store_true", help="plain quantize_static output (slower)")
    qu.add_argument("--float-blocks", type=int, default=None, metavar="N",
                    help="keep the stem and the first N-1 blocks in float (default: 6, see skinscan/quantize.py)")
    qu.add_argument("--seed", type=int, default=0)
    qu.set_defaults(func=cmd_quantize)

    ga = verbs.add_parser("gate", help="measure the 'cannot assess' gate: lesions, non-lesion images, degradations")
    ga.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    ga.add_argument("--data", type=Path, default=default_data_dir())
    ga.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ga.add_argument("--part", default="test", choices=["val", "test"])
    ga.add_argument("--max-images", type=int, default=0, help="only the first N lesions of the part (tests)")
    ga.set_defaults(func=cmd_gate)

    ca = verbs.add_parser("card", help="write MODEL_CARD.md into a package from the measured numbers")
    ca.add_argument("--model", type=Path, default=Path("runs/package"))
    ca.add_argument("--evaluation", type=Path, default=Path("runs/evaluation"), help="folder with metrics.json")
    ca.add_argument("--command", default="bash scripts/reproduce.sh", help="the command that reproduces the model")
    ca.add_argument("--notes", type=Path, help="markdown file appended to the reproduction section")
    ca.add_argument("--external-evaluation", type=Path, default=None, metavar="DIR",
                    help="folder with the metrics.json of `skinscan evaluate --part external`: its per-collection "
                         "table becomes the card's external-validation section")
    ca.set_defaults(func=cmd_card)

    pr = verbs.add_parser("predict", help="classify images with a model package (ONNX Runtime, no torch)")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    pr.add_argument("--model", type=Path, default=None,
                    help="model package folder or an .onnx file in one (default: the bundled package)")
    pr.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"],
                    help="which ONNX file of the package; auto = int8 when the package has it")
    output = pr.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON document on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout: one row per image, every probability")
    pr.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads (default: all cores)")
    pr.add_argument("--batch-size", type=positive_int, default=16)
    pr.add_argument("--explain", type=Path, metavar="OUT_DIR", default=None,
                    help="also write one PNG per image into OUT_DIR: the image under a Grad-CAM heatmap of where "
                         "the model looked for its top diagnosis (needs a package exported with the `cam` output)")
    pr.set_defaults(func=cmd_predict)

    be = verbs.add_parser("benchmark", help="latency and throughput: PyTorch eager vs ONNX FP32 vs INT8, sizes")
    be.add_argument("--model", type=Path, default=None, help="model package folder (default: the bundled package)")
    be.add_argument("--checkpoint", type=Path, default=None,
                    help="training checkpoint: adds the PyTorch eager engine (needs torch)")
    be.add_argument("--threads", type=positive_int, nargs="+", default=None,
                    help="thread counts to measure (default: 1 and all cores)")
    be.add_argument("--batch", type=positive_int, nargs="+", default=[1], help="batch sizes to measure")
    be.add_argument("--iterations", type=positive_int, default=200, help="timed calls per engine and setting")
    be.add_argument("--warmup", type=int, default=20, help="untimed calls per engine and setting first")
    be.add_argument("--rounds", type=positive_int, default=5,
                    help="interleaved rounds the iterations are split into (the best round's median is kept)")
    be.add_argument("--json", type=Path, default=Path("runs/benchmark.json"), help="where the JSON results go")
    be.set_defaults(func=cmd_benchmark)

    ap = verbs.add_parser("app", help="serve the offline camera web app (screening runs in the browser)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; anything but loopback makes the page reachable from the network")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", type=Path, default=None, help="model package folder (default: the bundled package)")
    ap.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"skinscan: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinscan: interrupted; a training run continues with `skinscan train --resume --out RUN`",
              file=sys.stderr)
        return 130
    except Exception as error:
        # Our own errors (DatasetError, ImageError, ...) carry a message that says what to do.
        from skinscan.data import DatasetError
        from skinscan.preprocess import ImageError

        if isinstance(error, (DatasetError, ImageError, FileNotFoundError, FileExistsError, ValueError)):
            print(f"skinscan: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
