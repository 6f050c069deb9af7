"""The `skinscan` command: one verb at a time (data, train, evaluate, ...), each saying where results went.

Heavy modules (torch) are imported inside the verbs that need them, so `skinscan --help` and the
runtime verbs start fast and work without the `train` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skinscan import DISCLAIMER, __version__


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2, no traceback."""


# ------------------------------------------------------------------------------------------------ data
def cmd_data_validate(args) -> int:
    from skinscan.data import validate_dataset

    report = validate_dataset(args.data, check_images=not args.skip_images)
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def cmd_data_split(args) -> int:
    from skinscan.data import lesion_grouped_split, read_metadata, write_split

    split = lesion_grouped_split(read_metadata(args.data), fractions=args.fractions, seed=args.seed)
    path = write_split(split, args.out)
    counts = split.groupby(["dx", "split"]).size().unstack(fill_value=0)
    print(counts.to_string())
    print(f"\n{split.lesion_id.nunique()} lesions, {len(split)} images -> {path}")
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
    from skinscan.train import TrainConfig, train

    config = TrainConfig(
        data_dir=str(args.data), split_csv=str(args.split), out_dir=str(args.out), arch=args.arch,
        pretrained=args.pretrained, input_size=tuple(args.input_size), resize=args.resize,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        sampling_power=args.sampling_power, logit_adjustment=args.logit_adjustment, ema_decay=args.ema_decay,
        augment=AugmentConfig(), seed=args.seed, threads=args.threads, device=args.device,
        max_images=args.max_images,
    )
    best = train(config, resume=args.resume)
    print(f"run folder: {args.out} (config.json, log.txt, metrics.jsonl, last.pt)\nbest model: {best}")
    print(f"next: skinscan evaluate --checkpoint {best} --split {args.split} --data {args.data}")
    return 0


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from skinscan.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, part=args.part,
                                  tta=args.tta, threads=args.threads)
    headline = (f"{args.part}: balanced accuracy {metrics['balanced_accuracy']:.3f}, macro AUC "
                f"{metrics['macro_auc']:.3f}, melanoma sensitivity {metrics['per_class']['mel']['sensitivity']:.3f}, "
                f"ECE {metrics['ece']:.3f} (calibrated)")
    print(headline)
    print(f"report: {Path(args.out) / 'report.md'} (metrics.json, plots)")
    print(DISCLAIMER)
    return 0


# ---------------------------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from skinscan.export import build_package

    metadata = build_package(args.checkpoint, args.data, args.split, args.out, threads=args.threads)
    print(f"temperature {metadata['skinscan.temperature']:.3f}, malignant threshold "
          f"{metadata['skinscan.thresholds']['malignant']:.3f} (fitted on val)")
    print(f"model package: {args.out} (skinscan.onnx, skinscan.ort, manifest.json)")
    return 0


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    from skinscan.data import default_data_dir

    parser = argparse.ArgumentParser(prog="skinscan", description=f"skinscan {__version__}: {DISCLAIMER}")
    parser.add_argument("--version", action="version", version=f"skinscan {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="validate, split or download a HAM10000-style data set")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    validate = data_verbs.add_parser("validate", help="check metadata and images; non-zero exit on problems")
    validate.add_argument("--data", type=Path, default=default_data_dir())
    validate.add_argument("--skip-images", action="store_true", help="do not decode every image")
    validate.add_argument("--limit", type=int, default=5, help="examples shown per problem")
    validate.set_defaults(func=cmd_data_validate)
    split = data_verbs.add_parser("split", help="lesion-grouped, diagnosis-stratified train/val/test CSV")
    split.add_argument("--data", type=Path, default=default_data_dir())
    split.add_argument("--out", type=Path, default=Path("runs/split.csv"))
    split.add_argument("--fractions", type=float, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(func=cmd_data_split)
    download = data_verbs.add_parser("download", help="download the full-resolution HAM10000 (Harvard Dataverse)")
    download.add_argument("--out", type=Path, required=True)
    download.add_argument("--base-url", default="https://dataverse.harvard.edu")
    download.set_defaults(func=cmd_data_download)

    tr = verbs.add_parser("train", help="fine-tune a MobileNet on the train split, select on val balanced accuracy")
    tr.add_argument("--data", type=Path, default=default_data_dir())
    tr.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    tr.add_argument("--out", type=Path, default=Path("runs/train"))
    tr.add_argument("--arch", default="mobilenet_v3_small",
                    choices=["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"])
    tr.add_argument("--pretrained", default="imagenet",
                    help="'imagenet' (torchvision download) or a local state_dict .pth with its .json beside it")
    tr.add_argument("--input-size", type=int, nargs=2, default=(168, 224), metavar=("H", "W"))
    tr.add_argument("--resize", default="center_crop", choices=["center_crop", "stretch"])
    tr.add_argument("--warmup-epochs", type=int, default=1, help="head-only epochs with the backbone frozen")
    tr.add_argument("--epochs", type=int, default=20, help="full fine-tuning epochs")
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--weight-decay", type=float, default=0.05)
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--sampling-power", type=float, default=0.5,
                    help="class-balanced sampling strength: 0 natural, 0.5 square-root, 1 fully balanced")
    tr.add_argument("--logit-adjustment", type=float, default=1.0, help="tau of the logit-adjusted loss (0 = off)")
    tr.add_argument("--ema-decay", type=float, default=0.998)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    tr.add_argument("--max-images", type=int, default=0, help="use only ~N images per split (smoke tests)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    tr.set_defaults(func=cmd_train)

    ev = verbs.add_parser("evaluate", help="ISIC-challenge metrics, plots and a report for a checkpoint")
    ev.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    ev.add_argument("--data", type=Path, default=default_data_dir())
    ev.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ev.add_argument("--part", default="test", choices=["train", "val", "test"])
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"))
    ev.add_argument("--tta", action="store_true", help="average the 4 flips of each image")
    ev.add_argument("--threads", type=int, default=0)
    ev.set_defaults(func=cmd_evaluate)
    ex = verbs.add_parser("export", help="checkpoint -> model package (ONNX with calibration, ORT Mobile form)")
    ex.add_argument("--checkpoint", type=Path, default=Path("runs/train/best.pt"))
    ex.add_argument("--data", type=Path, default=default_data_dir())
    ex.add_argument("--split", type=Path, default=Path("runs/split.csv"))
    ex.add_argument("--out", type=Path, default=Path("runs/package"))
    ex.add_argument("--threads", type=int, default=0)
    ex.set_defaults(func=cmd_export)
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

        if isinstance(error, (DatasetError, ImageError, FileNotFoundError, ValueError)):
            print(f"skinscan: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
