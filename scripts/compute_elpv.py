"""Compute the real-data arm's records (gmlib.book.elpv) into the store, most informative first; resumable.

Each point is stored as soon as it is done and skipped when stored, so a killed run, started again, goes on at the
first missing point. Run it on one thread beside other work:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compute_elpv.py            # every stage in order
    .venv/bin/python scripts/compute_elpv.py --dry-run                     # what is missing, per stage
    .venv/bin/python scripts/compute_elpv.py --only baselines lr           # some stages
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gmlib.book.elpv import DESIGN, ElpvStudy, chosen_lr, chosen_setup, planned_points  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=str(ROOT / "data" / "store"))
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic"), help="the segmentation stages' strips")
    parser.add_argument("--only", nargs="+", choices=list(DESIGN["stages"]), help="stages to run (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="list the missing points per stage and exit")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    study = ElpvStudy(args.store, progress=not args.dry_run, seg_data_dir=args.data, results_dir=ROOT / "results")
    for stage in args.only or DESIGN["stages"]:
        if stage not in ("choices", "baselines", "seg_baselines", "seg_grid") and study.baseline_missing():
            print(f"{stage}: waits for the pretrained baseline")
            continue
        points = planned_points(study, stage)
        missing = [p for p in points if not study.stored(p)]
        print(f"{stage}: {len(points) - len(missing)} of {len(points)} stored", flush=True)
        if args.dry_run:
            continue
        for point in tqdm(missing, desc=stage, mininterval=30):
            start = time.perf_counter()
            study.run(point)
            tqdm.write(f"{stage} {point} {time.perf_counter() - start:.0f} s")
        if stage == "lr":
            print(f"lr chosen on validation: {chosen_lr(study)}", flush=True)
        if stage == "choices" and not args.dry_run:
            setup = chosen_setup(study)
            if setup != {"head": study.recipe.head, "size": study.recipe.size}:
                print(f"validation chooses {setup}, not the recipe's head {study.recipe.head!r} at "
                      f"{study.recipe.size} px: change ElpvRecipe's defaults before the rest is computed", flush=True)
                return 1
            print(f"validation chooses {setup}, the recipe's defaults", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
