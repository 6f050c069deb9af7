"""`skinscan data ...`: validate, split, fold and download data sets (the model factory's first step)."""

from __future__ import annotations

from pathlib import Path

from skinscan.cli.common import UsageError, add_data_arguments, data_source, require_extra


def add_data(verbs) -> None:
    """The `skinscan data` verb and its actions."""
    data = verbs.add_parser("data", help="validate, split or download a HAM10000-style data set")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    for add_action in (add_data_validate, add_data_split, add_data_folds, add_data_download):
        add_action(data_verbs)


def cmd_data_validate(args) -> int:
    require_extra("report")
    from skinscan.factory.data import validate_dataset
    from skinscan.labels import load_label_set

    if args.source:
        return _validate_sources(args)

    report = validate_dataset(data_source(args), check_images=not args.skip_images, labels=load_label_set(args.labels))
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def _validate_sources(args) -> int:
    """`skinscan data validate --source NAME=FOLDER ...`: the row-by-row checks `data split --source` makes."""
    from skinscan.factory.data import DatasetError
    from skinscan.factory.sources import checked_metadata, parse_source
    from skinscan.labels import load_label_set

    labels, failed = load_label_set(args.labels), 0
    for named in map(parse_source, args.source):
        try:
            metadata = checked_metadata(named, labels, check_images=not args.skip_images)
        except DatasetError as error:
            print(error)
            failed += 1
            continue
        print(f"source {named.name}: {named.source.metadata}: {len(metadata)} rows, images in "
              f"{named.source.image_dir}\n  OK")
    return 1 if failed else 0


def add_data_validate(data_verbs) -> None:
    """The `skinscan data validate` options."""
    validate = data_verbs.add_parser("validate", help="check metadata and images; non-zero exit on problems")
    add_data_arguments(validate, labels=True)
    validate.add_argument("--skip-images", action="store_true", help="do not decode every image")
    validate.add_argument("--limit", type=int, default=5, help="examples shown per problem")
    validate.add_argument("--source", action="append", default=[], metavar="NAME=FOLDER[,metadata=CSV,...]",
                          help="check these sources (repeatable) as `data split --source` does, row by row with "
                               "CSV line numbers, instead of --data")
    validate.set_defaults(func=cmd_data_validate)


def cmd_data_split(args) -> int:
    require_extra("report")
    from skinscan.factory.data import lesion_grouped_split, read_metadata, require_known_labels, write_split
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
    from skinscan.factory.data import write_split
    from skinscan.factory.sources import ExternalRule, multi_source_split, parse_source, split_counts
    from skinscan.labels import load_label_set

    sources = [parse_source(text) for text in args.source]
    rules = [ExternalRule.parse(text) for text in args.external]
    split = multi_source_split(sources, load_label_set(args.labels), fractions=args.fractions, seed=args.seed,
                               external=rules, check_images=not args.skip_image_check, threads=args.threads)
    path = write_split(split, args.out, sources=sources)
    print(split_counts(split).to_string())
    print(f"\n{split.lesion_id.nunique()} lesions, {len(split)} images from {len(sources)} source(s) -> {path} "
          f"(image folders: {path.with_name(path.stem + '.sources.json')})")
    return 0


def add_data_split(data_verbs) -> None:
    """The `skinscan data split` options."""
    split = data_verbs.add_parser("split", help="lesion-grouped, diagnosis-stratified train/val/test CSV")
    add_data_arguments(split, labels=True)
    split.add_argument("--out", type=Path, default=Path("runs/split.csv"),
                       help="where the split CSV goes (default: %(default)s)")
    split.add_argument("--fractions", type=float, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                       help="share of each diagnosis' lesions in train, val and test; sums to 1 (default: %(default)s)")
    split.add_argument("--seed", type=int, default=0, help="random seed: the same seed and data give the same split")
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


def cmd_data_folds(args) -> int:
    require_extra("report")
    from skinscan.factory.data import cross_validation_folds, read_split, write_split

    split = read_split(args.split)
    folds = cross_validation_folds(split, folds=args.folds, seed=args.seed)
    sources = None
    if "source" in split.columns:  # each fold file carries the sidecar saying where the sources' images are
        from skinscan.factory.sources import read_sources

        sources = list(read_sources(args.split).values())
    for k, fold in enumerate(folds):
        val = fold[fold.split == "val"]
        path = write_split(fold, args.out / f"fold-{k}.csv", sources=sources)
        print(f"{path}: val {len(val)} images of {val.lesion_id.nunique()} lesions "
              f"({', '.join(f'{dx} {n}' for dx, n in val.dx.value_counts().sort_index().items())})")
    print(f"test part unchanged from {args.split}; train each fold with `skinscan train --split FOLD.csv`")
    return 0


def add_data_folds(data_verbs) -> None:
    """The `skinscan data folds` options."""
    folds = data_verbs.add_parser("folds", help="K cross-validation train/val splits of a split's train+val part "
                                  "(its test part unchanged), to compare recipes on more than one val set")
    folds.add_argument("--split", type=Path, default=Path("runs/split.csv"),
                       help="the split CSV from `skinscan data split` whose train+val part is folded")
    folds.add_argument("--folds", type=int, default=5, help="number of folds K (at least 2)")
    folds.add_argument("--seed", type=int, default=0, help="random seed: the same seed and split give the same folds")
    folds.add_argument("--out", type=Path, default=Path("runs/folds"), help="folder for fold-0.csv ... fold-K-1.csv")
    folds.set_defaults(func=cmd_data_folds)


def cmd_data_download(args) -> int:
    from skinscan.factory.download import DownloadError, download_ham10000
    from skinscan.factory.download_isic2019 import download_isic2019

    try:
        if args.dataset == "isic2019":
            out, summary = download_isic2019(args.out, **({"base_url": args.base_url} if args.base_url else {}),
                                             drop_collections=tuple(args.drop_collection))
        else:
            if args.drop_collection:
                raise UsageError("--drop-collection applies to --dataset isic2019")
            out = download_ham10000(args.out, **({"base_url": args.base_url} if args.base_url else {}))
    except DownloadError as error:
        raise UsageError(str(error)) from None
    if args.dataset == "ham10000":
        print(f"HAM10000 is in {out}; check it with `skinscan data validate --data {out}`")
        return 0
    collections = ", ".join(f"{name} {n}" for name, n in summary["per_collection"].items())
    dropped = "".join(f"; left out {n} {name} images (--drop-collection)"
                      for name, n in summary["dropped_collections"].items())
    print(f"ISIC 2019 is in {out}: {summary['images']} images ({collections}); dropped {summary['dropped_unknown']} "
          f"labelled UNK{dropped}. AK and SCC are both akiec (dx_isic2019 keeps the original label).")
    print(f"use it as a source: skinscan data split --source isic2019={out} [--source ham10000=HAM_FOLDER] ...")
    return 0


def add_data_download(data_verbs) -> None:
    """The `skinscan data download` options."""
    download = data_verbs.add_parser("download", help="download a full-resolution data set: HAM10000 (Harvard "
                                     "Dataverse, the default) or the ISIC 2019 training data (docs/TRAINING.md)")
    download.add_argument("--dataset", default="ham10000", choices=["ham10000", "isic2019"],
                          help="which data set (default: %(default)s)")
    download.add_argument("--out", type=Path, required=True,
                          help="folder to create the data set in (images/ and its metadata CSV)")
    download.add_argument("--base-url", default=None,
                          help="server to download from (default: https://dataverse.harvard.edu for ham10000, "
                               "https://isic-challenge-data.s3.amazonaws.com/2019 for isic2019)")
    download.add_argument("--drop-collection", action="append", default=[], metavar="NAME",
                          help="isic2019: leave a collection out of metadata.csv, e.g. ham10000 when HAM10000 is "
                               "another source of the same split (repeatable)")
    download.set_defaults(func=cmd_data_download)
