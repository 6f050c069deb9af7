"""`skinscan train / compare / evaluate / export / qat / quantize / gate / regate / card`: the model factory's verbs.

Each command imports torch (or pandas, scikit-learn) inside itself, so `skinscan --help` and the runtime verbs
work without the extras, and first checks that its extra is installed (`require_extra`: `train` for torch or
onnx, `report` for the reports), so a user without it reads what to install, not an ImportError.
"""

from __future__ import annotations

import os
from pathlib import Path

from skinscan import DISCLAIMER
from skinscan.cli.common import (
    UsageError,
    add_data_arguments,
    data_source,
    positive_float,
    positive_int,
    probability,
    require_extra,
)
from skinscan.paths import default_data_dir


def add_factory_verbs(verbs) -> None:
    for add_verb in (add_train, add_evaluate, add_compare, add_export, add_qat, add_quantize, add_gate, add_regate,
                     add_card):
        add_verb(verbs)


def cmd_train(args) -> int:
    require_extra("train")
    from skinscan.factory.augment import AugmentConfig
    from skinscan.factory.train import TrainConfig, train
    from skinscan.labels import load_label_set

    config = TrainConfig(
        data_dir=str(args.images or args.data), split_csv=str(args.split), out_dir=str(args.out), arch=args.arch,
        pretrained=None if args.pretrained.lower() == "none" else args.pretrained,
        input_size=tuple(args.input_size), resize=args.resize,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        sampling_power=args.sampling_power, logit_adjustment=args.logit_adjustment, ema_decay=args.ema_decay,
        augment=AugmentConfig(zoom=tuple(args.zoom), degrade_prob=args.degrade_prob,
                              degrade_size=args.degrade_size, vignette_prob=args.vignette_prob),
        seed=args.seed, threads=args.threads, device=args.device,
        max_images=args.max_images, label_set=load_label_set(args.labels).to_json(), compile=args.compile,
        teachers=[str(t) for t in args.teacher], distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, mixup_alpha=args.mixup,
        color_constancy=args.color_constancy.replace("-", "_"), lesion_balanced=args.lesion_balanced,
        histo_weight=args.histo_weight, select=args.select.replace("-", "_"),
        source_balanced=args.source_balance, epoch_images=args.epoch_images,
    )
    best = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"run folder: {args.out} (config.json, log.txt, metrics.jsonl, last.pt)\nbest model: {best}")
    print(f"next: skinscan evaluate --checkpoint {best} --split {args.split} --data {args.images or args.data}")
    return 0


def add_train(verbs) -> None:
    """The `skinscan train` options."""
    tr = verbs.add_parser("train", help="fine-tune a MobileNet on the train split, select on val balanced accuracy")
    add_data_arguments(tr, metadata=False, labels=True)
    tr.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split` (it carries the image ids, groups and labels)")
    tr.add_argument("--out", type=Path, default=Path("runs/train"),
                    help="run folder: config, log, metrics, checkpoints (default: %(default)s)")
    tr.add_argument("--arch", default="mobilenet_v3_small",
                    choices=["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"], help="network architecture")
    tr.add_argument("--pretrained", default="imagenet",
                    help="'imagenet' (torchvision download), a local state_dict .pth with its .json beside it, "
                         "or 'none' (random initialisation)")
    tr.add_argument("--input-size", type=int, nargs=2, default=(252, 336), metavar=("H", "W"),
                    help="network input (height, width); the default is 1.68x HAM10000's 150x200 source")
    tr.add_argument("--resize", default="center_crop", choices=["center_crop", "stretch"],
                    help="how images reach the input size: crop to its aspect ratio first, or stretch")
    tr.add_argument("--warmup-epochs", type=int, default=1, help="head-only epochs with the backbone frozen")
    tr.add_argument("--epochs", type=int, default=12, help="full fine-tuning epochs")
    tr.add_argument("--batch-size", type=int, default=64, help="images per training step")
    tr.add_argument("--lr", type=float, default=1e-3,
                    help="peak learning rate of the head (AdamW; the backbone's is lower)")
    tr.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    tr.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the loss")
    tr.add_argument("--sampling-power", type=float, default=0.5,
                    help="class-balanced sampling strength: 0 natural, 0.5 square-root, 1 fully balanced")
    tr.add_argument("--logit-adjustment", type=float, default=1.0, help="tau of the logit-adjusted loss (0 = off)")
    tr.add_argument("--ema-decay", type=float, default=0.995,
                    help="cap of the weight average's decay; its ramp (1+n)/(10+n) reaches 0.995 only after 1,790 "
                         "steps, more than the default run on HAM10000 takes (the log says when it has no effect)")
    tr.add_argument("--zoom", type=float, nargs=2, default=(0.85, 1.35), metavar=("MIN", "MAX"),
                    help="random zoom range of the augmentation (>1 zooms in)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (initialisation, sampling, augmentation)")
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
    tr.add_argument("--distill-temperature", type=float, default=2.0,
                    help="softmax temperature of the distillation term")
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
    tr.add_argument("--source-balance", action="store_true",
                    help="within each class, sample every data source (the split CSV's 'source' column, as "
                         "`skinscan data split --source NAME=FOLDER ...` writes it) equally often, so a source's "
                         "class mix teaches nothing")
    tr.add_argument("--degrade-prob", type=probability, default=0.0, metavar="P",
                    help="with probability P, shrink a training image that is not already low-resolution to "
                         "--degrade-size px (shorter side) and back, so blur does not identify a source "
                         "(e.g. 0.3 when pooling with 84-px images; default 0: off)")
    tr.add_argument("--degrade-size", type=positive_int, default=84, metavar="PX",
                    help="shorter side of the degraded copy (default: %(default)s, the ISIC 2019 extra images')")
    tr.add_argument("--vignette-prob", type=probability, default=0.0, metavar="P",
                    help="with probability P, black out the corners of a training image outside a random circle, "
                         "as many dermatoscopes do (e.g. 0.2; default 0: off)")
    tr.add_argument("--epoch-images", type=positive_int, default=0, metavar="N",
                    help="images sampled per epoch (default 0: as many as the train part holds); gives runs on "
                         "train sets of different sizes the same step budget")
    tr.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                    help="mixup with lambda ~ Beta(ALPHA, ALPHA), e.g. 0.2 (0 = off, the default recipe)")
    tr.set_defaults(func=cmd_train)


def cmd_compare(args) -> int:
    require_extra("train")
    from skinscan.factory.compare import compare_checkpoints, format_comparison, write_comparison

    comparison = compare_checkpoints(args.checkpoint, data_source(args), args.split, part=args.part, tta=args.tta,
                                     n_bootstrap=args.bootstrap, threads=args.threads)
    print(format_comparison(comparison))
    if args.out:
        write_comparison(comparison, args.out)
        print(f"written: {args.out}")
    return 0


def add_compare(verbs) -> None:
    """The `skinscan compare` options."""
    co = verbs.add_parser("compare", help="several checkpoints (seeds, recipes) and their ensemble on one split, "
                                          "with paired bootstrap intervals against the first")
    co.add_argument("--checkpoint", type=Path, action="append", required=True,
                    help="a training checkpoint; repeat for each model (the first is the reference)")
    add_data_arguments(co)
    co.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split`")
    co.add_argument("--part", default="val", choices=["train", "val", "test", "external"],
                    help="score on this part (default val: choose on val, look at test once)")
    co.add_argument("--tta", action="store_true", help="add rows with the 4 flips of each image averaged")
    co.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    co.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON here")
    co.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    co.set_defaults(func=cmd_compare)


def cmd_evaluate(args) -> int:
    if args.model is not None:
        require_extra("report")
        return _evaluate_package(args)
    require_extra("train")
    from skinscan.factory.evaluate import evaluate_checkpoint

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
    from skinscan.factory.package_evaluation import evaluate_package
    from skinscan.runtime.classifier import ModelPackageError
    from skinscan.runtime.manifest import IntegrityError

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


def add_evaluate(verbs) -> None:
    """The `skinscan evaluate` options."""
    ev = verbs.add_parser("evaluate", help="ISIC-challenge metrics, plots and a report for a checkpoint")
    ev.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"), help="training checkpoint")
    add_data_arguments(ev)
    ev.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split`")
    ev.add_argument("--part", default="test", choices=["train", "val", "test", "external"],
                    help="split part to score; 'external' is the collection set apart by `data split --external`")
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"),
                    help="folder for report.md, metrics.json and the plots")
    ev.add_argument("--tta", action="store_true", help="average the 4 flips of each image")
    ev.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ev.add_argument("--model", type=Path, default=None, metavar="PACKAGE",
                    help="score a model package instead of --checkpoint, with ONNX Runtime as `skinscan predict` "
                         "runs it (its own temperature and gate; no torch); 'bundled' for the bundled package")
    ev.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"],
                    help="with --model: which ONNX file of the package (auto = int8 when present)")
    ev.add_argument("--max-images", type=int, default=0, help="with --model: only the first N images (smoke tests)")
    ev.set_defaults(func=cmd_evaluate)


def cmd_export(args) -> int:
    require_extra("train")
    from skinscan.factory.export import build_package

    metadata = build_package(args.checkpoint, args.images or args.data, args.split, args.out, threads=args.threads,
                             regate=args.regate or args.extra is not None, extra_dir=args.extra)
    print(f"temperature {metadata['skinscan.temperature']:.3f}, malignant threshold "
          f"{metadata['skinscan.thresholds']['malignant']:.3f} (fitted on val)")
    print(f"model package: {args.out} (skinscan.onnx, skinscan.ort, manifest.json)")
    return 0


def add_export(verbs) -> None:
    """The `skinscan export` options."""
    ex = verbs.add_parser("export", help="checkpoint -> model package (ONNX with calibration, ORT Mobile form)")
    ex.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"), help="training checkpoint")
    add_data_arguments(ex, metadata=False)
    ex.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV; its val part fits the calibration and thresholds")
    ex.add_argument("--out", type=Path, default=Path("runs/package"), help="model package folder to write")
    ex.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ex.add_argument("--regate", action="store_true",
                    help="fit the 'cannot assess' gate as `skinscan regate` does (pooled sources, device views, a "
                         "dermoscopy score) instead of the bundled package's design; none of the re-fitted designs "
                         "has met its rule yet (docs/RESULTS.md, 'Gate across devices')")
    ex.add_argument("--extra", type=Path, default=None,
                    help="with --regate (implied): the ISIC 2019 extra folder, whose images other than the 256-px "
                         "external collection join the gate's fit")
    ex.set_defaults(func=cmd_export)


def cmd_qat(args) -> int:
    require_extra("train")
    from skinscan.factory.qat import quantization_aware_finetune

    best = quantization_aware_finetune(args.checkpoint, args.out, args.images or args.data, args.split,
                                       epochs=args.epochs,
                                       lr=args.lr, threads=args.threads)
    print(f"quantization-aware checkpoint: {best} (history: {Path(args.out) / 'qat_history.json'})")
    print(f"next: skinscan export --checkpoint {best} --out PACKAGE && skinscan quantize --model PACKAGE")
    return 0


def add_qat(verbs) -> None:
    """The `skinscan qat` options."""
    qa = verbs.add_parser("qat", help="quantization-aware fine-tuning of a checkpoint (INT8 simulated)")
    qa.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"),
                    help="training checkpoint to fine-tune")
    add_data_arguments(qa, metadata=False)
    qa.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split`")
    qa.add_argument("--out", type=Path, default=Path("runs/qat"), help="run folder for the checkpoint and its history")
    qa.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    qa.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    qa.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    qa.set_defaults(func=cmd_qat)


def cmd_quantize(args) -> int:
    require_extra("train")
    from skinscan.factory.quantize import quantize_package

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


def add_quantize(verbs) -> None:
    """The `skinscan quantize` options."""
    qu = verbs.add_parser("quantize", help="add a static INT8 model to a package; accuracy/latency report")
    qu.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    qu.add_argument("--data", type=Path, default=default_data_dir(),
                    help="HAM10000-style data folder the split's images are in (default: %(default)s)")
    qu.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split`")
    qu.add_argument("--part", default="test", choices=["val", "test"], help="split part the report scores")
    qu.add_argument("--calibration-images", type=int, default=256, help="training images used to calibrate")
    qu.add_argument("--method", default="MinMax", choices=["MinMax", "Percentile", "Entropy"],
                    help="activation calibration (MinMax measured most accurate on our model)")
    qu.add_argument("--no-graph-edits", action="store_true", help="plain quantize_static output (slower)")
    qu.add_argument("--float-blocks", type=int, default=None, metavar="N",
                    help="keep the stem and the first N-1 blocks in float "
                    "(default: 6; see skinscan/factory/quantize.py)")
    qu.add_argument("--seed", type=int, default=0, help="random seed of the calibration images' sample")
    qu.set_defaults(func=cmd_quantize)


def cmd_gate(args) -> int:
    require_extra("report")
    from skinscan.factory.gate_report import format_gate_report, gate_report
    from skinscan.runtime.classifier import ModelPackageError

    try:
        report = gate_report(args.model, args.data, args.split, part=args.part, max_images=args.max_images,
                             external=args.external, degraded=args.degraded, fresh_non_lesions=args.fresh_non_lesions)
    except (ModelPackageError, ValueError, FileNotFoundError) as error:  # ValueError: a package without the gate
        raise UsageError(str(error)) from None
    print(format_gate_report(report))
    print(f"report: {Path(args.model) / 'gate.json'}")
    return 0


def add_gate(verbs) -> None:
    """The `skinscan gate` options."""
    ga = verbs.add_parser("gate", help="measure the 'cannot assess' gate: lesions, non-lesion images, degradations")
    ga.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    ga.add_argument("--data", type=Path, default=default_data_dir(),
                    help="HAM10000-style data folder the split's images are in (default: %(default)s)")
    ga.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="the split CSV from `skinscan data split`")
    ga.add_argument("--part", default="test", choices=["val", "test", "external"],
                    help="split part whose lesions are measured (external: what `data split --external` set apart)")
    ga.add_argument("--max-images", type=int, default=0, help="only the first N lesions of the part (tests)")
    ga.add_argument("--external", type=Path, default=None,
                    help="the ISIC 2019 extra folder: also measure its external collection (the 256-px images)")
    ga.add_argument("--degraded", type=int, default=0, metavar="N",
                    help="degrade only N lesions of each set, spread evenly (default: all)")
    ga.add_argument("--fresh-non-lesions", type=Path, default=None, metavar="DIR",
                    help="a folder of images that are not lesions, measured as a second non-lesion set (whole and "
                         "as quadrant crops), e.g. OpenCV's sample images")
    ga.set_defaults(func=cmd_gate)


def cmd_regate(args) -> int:
    require_extra("train")  # onnx and scikit-learn (torch itself is not needed)
    if args.messages_only:
        from skinscan.factory.regate import GateGraphError, refresh_messages
        from skinscan.runtime.manifest import IntegrityError

        try:
            messages = refresh_messages(args.model)
        except (IntegrityError, GateGraphError, FileNotFoundError) as error:
            raise UsageError(str(error)) from None
        print(f"{args.model}: the messages of {', '.join(messages)} rewritten; nothing else changed")
        return 0
    from skinscan.factory.negatives import INDEX_FILE, NegativesError, fetch
    from skinscan.factory.regate import FitData, GateGraphError, regate_package
    from skinscan.runtime.manifest import IntegrityError

    for folder, option in ((args.data, "--data"), (args.extra, "--extra"), (args.ordinary_photos, "--ordinary-photos")):
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"{option} {folder} is not a folder")
    if not Path(args.split).is_file():
        raise UsageError(f"--split {args.split} not found; write it with `skinscan data split --seed 0`")
    if args.negatives is not None and not (args.negatives / INDEX_FILE).is_file():
        print(f"fetching the generic photos into {args.negatives} (apt-get download; once)")
        try:
            fetch(args.negatives)
        except NegativesError as error:
            raise UsageError(str(error)) from None
    data = FitData(args.data, args.split, args.extra, per_source=args.per_source, ordinary=args.ordinary,
                   negatives=args.negatives, generic=args.generic, ordinary_photos=args.ordinary_photos,
                   seed=args.seed, threads=args.threads)
    try:
        report = regate_package(args.model, data, cache=args.cache, line=args.line, features=args.features)
    except (IntegrityError, GateGraphError, FileNotFoundError, ValueError, NegativesError) as error:
        raise UsageError(str(error)) from None
    for precision in ("fp32", "int8"):
        if precision in report:
            checks = ", ".join(f"{c['reason']} {c['score']} {'<' if 'below' in c else '>'} "
                               f"{c.get('below', c.get('above')):.3g}" for c in report[precision]["checks"])
            print(f"{precision}: {report[precision]['val_rejected']:.1%} of validation lesions turned away; {checks}")
    if "unseen_source" in report:
        unseen = report["unseen_source"]
        ratios = ", ".join(f"{name} unseen x{ratio:.2f}" for name, ratio in unseen["ratio_when_unseen"].items())
        print(f"distance line for an unseen source: {unseen['line']:.3g} ({unseen['in_source_quantile']:.3g} x the "
              f"largest of {ratios})")
        moved = unseen["dermoscopy"]
        shifts = ", ".join(f"{name} unseen -{shift:.2f}" for name, shift in moved["shift_when_unseen"].items())
        print(f"dermoscopy line for an unseen source: {moved['line']:.3g} ({moved['in_source_line']:.3g}, {shifts})")
    for name, held in report["held_out"].items():
        print(f"{name.replace('_', ' ')}: {held['rejected_share']:.1%} of {held['images']} turned away "
              f"{held['reasons']}")
    print(f"fitted on {report['fit']}; measure it with `skinscan gate --model {args.model}`")
    return 0


def add_regate(verbs) -> None:
    """The `skinscan regate` options."""
    rg = verbs.add_parser("regate", help="re-fit a package's 'cannot assess' gate on all training sources "
                          "(no checkpoint needed; the classifier's outputs stay identical)")
    rg.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder (edited in place)")
    rg.add_argument("--data", type=Path, default=default_data_dir(), help="HAM10000 folder")
    rg.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                    help="its split (train: fit; val: thresholds)")
    rg.add_argument("--extra", type=Path, default=None,
                    help="the ISIC 2019 extra folder: its images other than the 256-px external collection join "
                         "the fit")
    rg.add_argument("--per-source", type=int, default=1500, help="lesions drawn from each source's fitting part")
    rg.add_argument("--ordinary", type=int, default=300, help="ordinary photos of skin for the dermoscopy score")
    rg.add_argument("--negatives", type=Path, default=None,
                    help="folder of generic non-lesion photos for the dermoscopy score (Debian's wallpapers and "
                         "backgrounds; fetched into it with apt-get download if it has no index.json)")
    rg.add_argument("--generic", type=int, default=1500, help="crops of the generic photos the fit draws")
    rg.add_argument("--ordinary-photos", type=Path, default=None, metavar="DIR",
                    help="a folder of your own ordinary photos of skin or of lesions taken without a dermatoscope "
                         "(licence yours to check): a hash-chosen 80%% join the dermoscopy score's negatives, the "
                         "rest are reported as held out")
    rg.add_argument("--features", choices=["pooled", "block-statistics"], default="pooled",
                    help="what the dermoscopy score reads: the classifier's pooled features (candidate 4 in "
                         "docs/RESULTS.md) or the distance's block-4/5 statistics (candidates 1-3)")
    rg.add_argument("--cache", type=Path, default=None, help=".npz of the fitting sets' scores (reused if present)")
    rg.add_argument("--line", choices=["in-source", "unseen-source", "keep"], default="in-source",
                    help="draw the distance and dermoscopy lines on the fitted sources' validation lesions "
                         "(in-source) or for a source the fit did not see (unseen-source: leave-one-source-out; "
                         "needs --extra), or keep the package's distance and lines and only add the dermoscopy "
                         "check (keep)")
    rg.add_argument("--messages-only", action="store_true",
                    help="only rewrite the reasons' messages from this version of skinscan (no fit, no data read)")
    rg.add_argument("--seed", type=int, default=0, help="seed of the samples and the device views drawn for the fit")
    rg.add_argument("--threads", type=int, default=2, help="threads decoding images and running the graph")
    rg.set_defaults(func=cmd_regate)


def cmd_card(args) -> int:
    require_extra("report")
    from skinscan.factory.model_card import write_model_card

    notes = Path(args.notes).read_text() if args.notes else ""
    path = write_model_card(args.model, args.evaluation, args.command, notes, external_dir=args.external_evaluation)
    print(f"model card: {path}")
    return 0


def add_card(verbs) -> None:
    """The `skinscan card` options."""
    ca = verbs.add_parser("card", help="write MODEL_CARD.md into a package from the measured numbers")
    ca.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    ca.add_argument("--evaluation", type=Path, default=Path("runs/evaluation"), help="folder with metrics.json")
    ca.add_argument("--command", default="bash scripts/reproduce.sh", help="the command that reproduces the model")
    ca.add_argument("--notes", type=Path, help="markdown file appended to the reproduction section")
    ca.add_argument("--external-evaluation", type=Path, default=None, metavar="DIR",
                    help="folder with the metrics.json of `skinscan evaluate --part external`: its per-collection "
                         "table becomes the card's external-validation section")
    ca.set_defaults(func=cmd_card)
