"""The paper profile's data pipeline on full-resolution strips, measured: training crops (256 x 512) per second that
the loader delivers with 0, 1 and 2 worker processes, and the memory of Study("paper") at two set sizes, after set-up,
at its peak through one pass of the training loader with 2 workers, and at its peak while the post-processing is
tuned over the validation strips (a 1x1-conv stand-in network: the tuning's memory does not depend on the network).

Usage: python benchmarks/bench_pipeline.py [--sizes 2000 12568] [--root /tmp/gmlib-bench-strips] [--gen-workers 2]
Memory is the proportional set size (PSS) of the process and its loader workers together (pages shared between
them counted once). The strips are generated once under --root (12,568 take ~13 min on one core) and kept.
"""
import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gmlib  # noqa: E402

GIB = 2 ** 30


def pss() -> float:
    """GiB used by this process and its children (PSS: shared pages split between them)."""
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / GIB


class Peak:
    """The largest pss() seen while the block runs (sampled every 0.2 s)."""

    def __enter__(self):
        self.value, self._stop = pss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.2):
            self.value = max(self.value, pss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.value = max(self.value, pss())


def study(root, n, workers):
    return gmlib.Study("paper", root, tempfile.mkdtemp(), store_dir=tempfile.mkdtemp(), device="cpu",
                       progress=False, workers=workers, n_images=n)


def crops_per_second(root, n, workers, batches):
    s = study(root, n, workers)
    loader = iter(s.train_loader(seed=0, n_batches=batches + 2))
    next(loader), next(loader)  # workers started, first batches out
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * s.config.batch_size / (time.perf_counter() - start)


def memory(root, n):
    after_setup = pss()
    s = study(root, n, workers=2)
    set_up = pss() - after_setup
    with Peak() as epoch:
        for _ in s.train_loader(seed=0):
            pass
    stand_in = nn.Conv2d(3, 4, 1)
    base = pss()
    with Peak() as tuning:
        s.tune_postprocess(stand_in)
    return {"strips": n, "set-up GiB": set_up, "epoch peak GiB": epoch.value, "val strips": len(s.val_set),
            "tuning adds GiB": tuning.value - base}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 12568])
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "gmlib-bench-strips"))
    ap.add_argument("--gen-workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=30, help="timed loader batches (of 16 crops) per worker count")
    args = ap.parse_args()
    gmlib.set_deterministic(0, threads=1)
    roots = {}
    for n in args.sizes:
        roots[n] = Path(args.root) / f"n{n}"
        start = time.perf_counter()
        gmlib.data.ensure_synthetic(roots[n], n, 0, workers=args.gen_workers)
        print(f"{n} strips ready in {time.perf_counter() - start:.0f} s ({roots[n]})", flush=True)
    small = roots[min(args.sizes)]
    rates = {w: crops_per_second(small, min(args.sizes), w, args.batches) for w in (0, 1, 2)}
    print("\nloader, 256 x 512 training crops from full-resolution JPEG strips (defect oversampling, seeded draws):")
    for w, r in rates.items():
        print(f"  {w} worker(s): {r:6.1f} crops/s   ({r / rates[1]:.2f} x one worker)")
    print("\nmemory (PSS of the process and its 2 loader workers):")
    for n in args.sizes:
        m = memory(roots[n], n)
        print(f"  {m['strips']:6d} strips: set-up {m['set-up GiB']:.2f} GiB, epoch peak {m['epoch peak GiB']:.2f} GiB; "
              f"tuning over {m['val strips']} validation strips adds {m['tuning adds GiB']:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
