"""Command line: write (or keep, if already there) a synthetic Severstal set.

python -m gmlib.data --root data/synthetic --n-images 2000 --seed 0 [--force] [--workers 4]
"""
import argparse
import sys

from .dataset import SeverstalDataset
from .synthetic import ensure_synthetic, make_synthetic_severstal

__all__ = ["main"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gmlib.data", description="Write a synthetic Severstal set.")
    ap.add_argument("--root", default="data/synthetic", help="output folder (Kaggle layout)")
    ap.add_argument("--n-images", type=int, default=2000, help="number of 256x1600 strips")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same bytes)")
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder already matches")
    ap.add_argument("--workers", type=int, default=1, help="processes rendering strips (same bytes as one)")
    args = ap.parse_args(argv)
    try:
        make = make_synthetic_severstal if args.force else ensure_synthetic
        root = make(args.root, args.n_images, args.seed, workers=args.workers)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{root}: {args.n_images} images, seed {args.seed}")
    print(SeverstalDataset(root).class_stats().round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
