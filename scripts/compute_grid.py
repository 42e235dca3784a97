"""Compute chapter 07's points into the results store in parallel processes, before (or instead of) running the
chapter: a full recompute of the study's grid takes hours on a CPU, and one process per core does it in a fraction.

Usage: python scripts/compute_grid.py [--workers 2] [--shard I/N] [--params FILE] [-p NAME VALUE ...] [--dry-run]
The grid is the one the chapter will ask for: its parameters cell's defaults, changed by a JSON file of parameters
(--params, e.g. scripts/grids/07_full.json: the full grid of issue 16) and then by -p as for papermill
(`gmlib.book.sweeps.design_of_notebook`). Each worker runs on one thread and takes whole work units (the points that share
a pruned record), so no record is computed twice; stored points are skipped, so a killed run resumes. The baseline
is trained first, on all workers' threads, when it is missing. --shard I/N takes only every N-th unit from the I-th
(to split the work between machines or separate runs sharing one store).
"""
import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gmlib  # noqa: E402
from gmlib.book import sweeps  # noqa: E402
from scripts.reproduce import parse_value  # noqa: E402

_studies = {}  # a worker's Study per baseline seed


def make_study(args, threads):
    gmlib.set_deterministic(0, threads=threads)
    return gmlib.Study(args.profile, args.data, ROOT / "results", store_dir=args.store, progress=False)


def owner(study, seed):
    """The Study of baseline `seed` (made once per process)."""
    if seed not in _studies:
        _studies[seed] = study if seed == study.config.seed else study.reseeded(seed)
    return _studies[seed]


def _start(args):
    study = make_study(args, threads=1)
    _studies[study.config.seed] = study
    _studies["main"] = study


def _run(unit):
    start = time.perf_counter()
    for p in unit:
        args = {k: v for k, v in p.items() if k not in ("kind", "baseline_seed")}
        study = owner(_studies["main"], p["baseline_seed"])
        study.scratch_point(**args) if p["kind"] == "scratch" else study.point(**args)
    return unit, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default=str(ROOT / "notebooks" / "07_pruning_rates.ipynb"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic"))
    parser.add_argument("--store", default=str(ROOT / "data" / "store"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard", default="0/1", help="I/N: every N-th work unit, from the I-th")
    parser.add_argument("--params", help="JSON file of {NAME: value} parameters, applied before -p")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--dry-run", action="store_true", help="list the missing points and stop")
    args = parser.parse_args(argv)
    index, count = (int(v) for v in args.shard.split("/"))
    if not 0 <= index < count or args.workers < 1:
        parser.error(f"--shard {args.shard} / --workers {args.workers}: need 0 <= I < N and at least one worker")

    study = make_study(args, threads=args.workers)
    overrides = json.loads(Path(args.params).read_text()) if args.params else {}
    overrides.update({name: parse_value(value) for name, value in args.p})
    design = sweeps.design_of_notebook(args.notebook, study.epoch_steps, **overrides)
    units = sweeps.work_units(design)[index::count]
    seeds = sorted({p["baseline_seed"] for unit in units for p in unit})
    untrained = [seed for seed in seeds
                 if owner(study, seed).store.get("baseline", owner(study, seed).baseline_config()) is None]
    if not args.dry_run:
        for seed in untrained:  # trained here, on every thread, when missing: never twice in the workers
            owner(study, seed).baseline()
    missing = [u for u in units  # a baseline still to train (dry run) has none of its points
               if not all(p["baseline_seed"] not in untrained and owner(study, p["baseline_seed"]).is_stored(p)
                          for p in u)]
    print(f"{sum(map(len, units))} points in {len(units)} units, {len(missing)} units to compute", flush=True)
    if args.dry_run:
        if untrained:
            print(f"baseline seeds to train first: {untrained}")
        for unit in missing:
            print(unit[0]["kind"], unit[0]["baseline_seed"], unit[0]["criterion"], unit[0]["rate"],
                  unit[0]["policy"], len(unit), "points")
        return 0
    with mp.get_context("spawn").Pool(args.workers, initializer=_start, initargs=(args,)) as pool:
        for done, (unit, seconds) in enumerate(pool.imap_unordered(_run, missing), 1):
            p = unit[0]
            print(f"[{done}/{len(missing)}] {p['kind']} {p['criterion']} {p['rate']:g} {p['policy']} "
                  f"({len(unit)} points) {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
