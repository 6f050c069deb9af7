"""`skinscan train / compare / evaluate / export / qat / quantize / gate / card`: the model factory's verbs.

Each command imports torch (or pandas, scikit-learn) inside itself, so `skinscan --help` and the runtime verbs
work without the `train` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from skinscan import DISCLAIMER
from skinscan.cli.common import UsageError, add_data_arguments, data_source, positive_float, positive_int, probability


def add_factory_verbs(verbs) -> None:
    for add_verb in (add_train, add_evaluate, add_compare, add_export, add_qat, add_quantize, add_gate, add_card):
        add_verb(verbs)


def cmd_train(args) -> int:
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
    tr.add_argument("--source-balance", action="store_true",
                    help="within each class, sample every data source (the split CSV's 'source' column, e.g. from "
                         "scripts/pooled_split.py) equally often, so a source's class mix teaches nothing")
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
    co.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    co.add_argument("--part", default="val", choices=["train", "val", "test"],
                    help="score on this part (default val: choose on val, look at test once)")
    co.add_argument("--tta", action="store_true", help="add rows with the 4 flips of each image averaged")
    co.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    co.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON here")
    co.add_argument("--threads", type=int, default=0)
    co.set_defaults(func=cmd_compare)


def cmd_evaluate(args) -> int:
    from skinscan.factory.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, data_source(args), args.split, args.out, part=args.part,
                                  tta=args.tta, threads=args.threads)
    melanoma = metrics["per_class"].get("mel")
    headline = (f"{args.part}: balanced accuracy {metrics['balanced_accuracy']:.3f}, macro AUC "
                f"{metrics['macro_auc']:.3f}, "
                + (f"melanoma sensitivity {melanoma['sensitivity']:.3f}, " if melanoma else "")
                + f"ECE {metrics['ece']:.3f} (calibrated)")
    print(headline)
    print(f"report: {Path(args.out) / 'report.md'} (metrics.json, plots)")
    print(DISCLAIMER)
    return 0


def add_evaluate(verbs) -> None:
    """The `skinscan evaluate` options."""
    ev = verbs.add_parser("evaluate", help="ISIC-challenge metrics, plots and a report for a checkpoint")
    ev.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(ev)
    ev.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ev.add_argument("--part", default="test", choices=["train", "val", "test"])
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"))
    ev.add_argument("--tta", action="store_true", help="average the 4 flips of each image")
    ev.add_argument("--threads", type=int, default=0)
    ev.set_defaults(func=cmd_evaluate)


def cmd_export(args) -> int:
    from skinscan.factory.export import build_package

    metadata = build_package(args.checkpoint, args.images or args.data, args.split, args.out, threads=args.threads)
    print(f"temperature {metadata['skinscan.temperature']:.3f}, malignant threshold "
          f"{metadata['skinscan.thresholds']['malignant']:.3f} (fitted on val)")
    print(f"model package: {args.out} (skinscan.onnx, skinscan.ort, manifest.json)")
    return 0


def add_export(verbs) -> None:
    """The `skinscan export` options."""
    ex = verbs.add_parser("export", help="checkpoint -> model package (ONNX with calibration, ORT Mobile form)")
    ex.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(ex, metadata=False)
    ex.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ex.add_argument("--out", type=Path, default=Path("runs/package"))
    ex.add_argument("--threads", type=int, default=0)
    ex.set_defaults(func=cmd_export)


def cmd_qat(args) -> int:
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
    qa.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    add_data_arguments(qa, metadata=False)
    qa.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    qa.add_argument("--out", type=Path, default=Path("runs/qat"))
    qa.add_argument("--epochs", type=int, default=2)
    qa.add_argument("--lr", type=float, default=1e-4)
    qa.add_argument("--threads", type=int, default=0)
    qa.set_defaults(func=cmd_qat)


def cmd_quantize(args) -> int:
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
    from skinscan.factory.data import default_data_dir

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
                    help="keep the stem and the first N-1 blocks in float "
                    "(default: 6; see skinscan/factory/quantize.py)")
    qu.add_argument("--seed", type=int, default=0)
    qu.set_defaults(func=cmd_quantize)


def cmd_gate(args) -> int:
    from skinscan.factory.gate_report import format_gate_report, gate_report
    from skinscan.runtime.classifier import ModelPackageError

    try:
        report = gate_report(args.model, args.data, args.split, part=args.part, max_images=args.max_images)
    except (ModelPackageError, ValueError) as error:  # ValueError: a package without the gate
        raise UsageError(str(error)) from None
    print(format_gate_report(report))
    print(f"report: {Path(args.model) / 'gate.json'}")
    return 0


def add_gate(verbs) -> None:
    """The `skinscan gate` options."""
    from skinscan.factory.data import default_data_dir

    ga = verbs.add_parser("gate", help="measure the 'cannot assess' gate: lesions, non-lesion images, degradations")
    ga.add_argument("--model", type=Path, default=Path("runs/package"), help="model package folder")
    ga.add_argument("--data", type=Path, default=default_data_dir())
    ga.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ga.add_argument("--part", default="test", choices=["val", "test"])
    ga.add_argument("--max-images", type=int, default=0, help="only the first N lesions of the part (tests)")
    ga.set_defaults(func=cmd_gate)


def cmd_card(args) -> int:
    from skinscan.factory.model_card import write_model_card

    notes = Path(args.notes).read_text() if args.notes else ""
    path = write_model_card(args.model, args.evaluation, args.command, notes)
    print(f"model card: {path}")
    return 0


def add_card(verbs) -> None:
    """The `skinscan card` options."""
    ca = verbs.add_parser("card", help="write MODEL_CARD.md into a package from the measured numbers")
    ca.add_argument("--model", type=Path, default=Path("runs/package"))
    ca.add_argument("--evaluation", type=Path, default=Path("runs/evaluation"), help="folder with metrics.json")
    ca.add_argument("--command", default="bash scripts/reproduce.sh", help="the command that reproduces the model")
    ca.add_argument("--notes", type=Path, help="markdown file appended to the reproduction section")
    ca.set_defaults(func=cmd_card)
