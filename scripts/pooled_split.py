"""One training set from HAM10000 and the ISIC 2019 extra images, with the 256-px ISIC 2017-era images held out.

A bridge until `skinscan data` makes multi-source splits natively (issue 23, point 1): today's `skinscan train`
reads one image folder and one split CSV, so this script writes

- `OUT/images/<image_id>.jpg`: symlinks into both read-only image folders (image ids never collide: the
  extra folder's README says none is a HAM10000 image; a collision is an error here all the same);
- `OUT/split.csv`: HAM10000's rows exactly as `skinscan data split` wrote them (its train/val/test), plus the
  extra images that are *not* external, split by `lesion_id` into train/val (default 85/15); columns
  `image_id, lesion_id, dx, split, source, collection` (`source` is `ham10000` or `isic2019_extra`);
- `OUT/external.csv`: the external collection (metadata `width == 256`: the 2,745 ISIC 2017-era images of
  collections `msk` and `isic_archive`), every row in part `test`, for scoring only
  (`skinscan evaluate --images OUT/images --split OUT/external.csv --part test`).

The external images are in no part of `split.csv`, so no model trained on it sees them. Lesions that have
images on both sides of the resolution line stay whole on the external side (none do today; the check keeps
it so if the metadata changes).

    python scripts/pooled_split.py --ham-split runs/split.csv --out runs/pooled
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from skinscan.factory.data import METADATA_FILE, DataSource
from skinscan.factory.sources import NamedSource, write_sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXTERNAL_WIDTH = 256  # the ISIC 2017-era images; the rest of the extra folder is 84 px


def extra_parts(metadata: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows split by lesion into train/val, external rows in part test) of the extra metadata."""
    external_lesions = set(metadata.lesion_id[metadata.width.astype(int) == EXTERNAL_WIDTH])
    is_external = metadata.lesion_id.isin(external_lesions)
    pool, external = metadata[~is_external], metadata[is_external]
    lesions = np.array(sorted(pool.lesion_id.unique()))
    rng = np.random.default_rng(seed)
    val_lesions = set(rng.choice(lesions, size=round(len(lesions) * val_fraction), replace=False))
    pool = pool.assign(split=np.where(pool.lesion_id.isin(val_lesions), "val", "train"))
    return pool, external.assign(split="test")


def pooled_split(ham_split: pd.DataFrame, extra_metadata: pd.DataFrame, val_fraction: float = 0.15,
                 seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the pooled training split, the external test split), both with `source` and `collection` columns."""
    columns = ["image_id", "lesion_id", "dx", "split", "source", "collection"]
    shared_ids = set(ham_split.image_id) & set(extra_metadata.image_id)
    if shared_ids:
        raise ValueError(f"{len(shared_ids)} image ids are in both sources (e.g. {sorted(shared_ids)[:3]}): "
                         "one symlink folder cannot hold both; drop the duplicates from one source first")
    shared_lesions = set(ham_split.lesion_id) & set(extra_metadata.lesion_id)
    if shared_lesions:
        raise ValueError(f"lesion ids {sorted(shared_lesions)[:3]} are in both sources: a lesion-disjoint split "
                         "cannot tell them apart; rename them in one source first")
    ham = ham_split.assign(source="ham10000", collection="ham10000")
    pool, external = extra_parts(extra_metadata, val_fraction, seed)
    pool, external = (frame.assign(source="isic2019_extra") for frame in (pool, external))
    return pd.concat([ham[columns], pool[columns]], ignore_index=True), external[columns].reset_index(drop=True)


def link_images(image_ids: list[str], folders: list[Path], out: Path) -> int:
    """Symlink `<id>.jpg` from the first folder that has it into `out`; returns how many links were made."""
    out.mkdir(parents=True, exist_ok=True)
    made = 0
    for image_id in image_ids:
        source = next((folder / f"{image_id}.jpg" for folder in folders if (folder / f"{image_id}.jpg").is_file()),
                      None)
        if source is None:
            raise FileNotFoundError(f"{image_id}.jpg is in none of {', '.join(map(str, folders))}")
        link = out / f"{image_id}.jpg"
        if link.is_symlink() or link.exists():
            if link.resolve() == source.resolve():
                continue
            link.unlink()
        os.symlink(source.resolve(), link)
        made += 1
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham-split", type=Path, default=Path("runs/split.csv"),
                        help="HAM10000's split from `skinscan data split --seed 0` (default: %(default)s)")
    parser.add_argument("--ham-images", type=Path, default=SHARED / "ham10000" / "images")
    parser.add_argument("--extra", type=Path, default=SHARED / "isic2019_extra",
                        help="the ISIC 2019 extra folder (images/ and metadata.csv)")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="share of the extra folder's non-external lesions put in val (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/pooled"))
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    for path in (args.ham_split, args.extra / "metadata.csv"):
        if not path.is_file():
            parser.error(f"no file at {path}" + (" (make it with `skinscan data split --seed 0 --out "
                                                 f"{path}`)" if path == args.ham_split else ""))
    ham_split = pd.read_csv(args.ham_split, dtype=str)
    extra = pd.read_csv(args.extra / "metadata.csv", dtype={"lesion_id": str, "image_id": str})
    try:
        split, external = pooled_split(ham_split, extra, args.val_fraction, args.seed)
        made = link_images([*split.image_id, *external.image_id], [args.ham_images, args.extra / "images"],
                           args.out / "images")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split.to_csv(args.out / "split.csv", index=False)
    external.to_csv(args.out / "external.csv", index=False)
    # A split with a `source` column says where each source's images are (`skinscan.factory.sources`'s sidecar).
    sources = [NamedSource("ham10000", DataSource(image_dir=args.ham_images.resolve(),
                                                  metadata=(args.ham_images.parent / METADATA_FILE).resolve())),
               NamedSource("isic2019_extra", DataSource(image_dir=(args.extra / "images").resolve(),
                                                        metadata=(args.extra / "metadata.csv").resolve()))]
    for csv in ("split.csv", "external.csv"):
        write_sources(sources, args.out / csv)
    print(split.groupby(["source", "split"]).size().to_string())
    collections = ", ".join(f"{name} {count}" for name, count in external.collection.value_counts().items())
    print(f"external: {len(external)} images ({collections}) -> {args.out / 'external.csv'}; "
          f"{made} new links in {args.out / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
