"""The CPU quick profile's training speed at two versions of the code, side by side: seconds per training step
(drawing the batch, forward, backward, AdamW) of Study("quick") at this checkout and at --base, in interleaved
rounds, each round a fresh process per version, the ratio HEAD / base per round and its median.

The default base is the commit before the paper profile's pipeline (seeded draws, crop before float, uint8 masks,
bf16 autocast on CUDA, one host sync an epoch) came in: the change must not slow the CPU quick profile down.
Both versions read the same synthetic strips (made by this checkout if missing; the generator is the same).

Usage: python benchmarks/bench_train_speed.py [--base REV] [--steps 30] [--rounds 3] [--threads 2]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "8b2fd03"  # the commit that brought the paper profile's data pipeline

# one timed run in a fresh interpreter; argv: tree, data_dir, steps, threads
CHILD = """
import json, sys, tempfile, time
tree, data_dir, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
import torch
import gmlib
from gmlib import models, train
assert gmlib.__file__.startswith(tree), gmlib.__file__
torch.set_num_threads(threads)
s = gmlib.Study("quick", data_dir, tempfile.mkdtemp(), store_dir=tempfile.mkdtemp(), device="cpu", progress=False)
model = models.create(s.config.arch, seed=s.config.seed)
def run(seed, n):
    train.fit(model, s.train_loader(seed=seed, n_batches=n), None, epochs=1, lr=s.config.lr, device="cpu",
              loss_fn=s.loss_fn, progress=False)
run(1, 3)  # warm-up: allocator, caches, the crops' first decode
start = time.perf_counter()
run(0, steps)
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps}))
"""


def export_tree(rev: str, into: Path) -> Path:
    """The files of commit `rev` under `into` (git archive: no worktree left registered in the repo)."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def seconds_per_step(tree: Path, data_dir: Path, steps: int, threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(data_dir), str(steps), str(threads)],
                         check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=f"{PIPELINE}^", help="the commit to compare with (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (base and HEAD, the order alternating)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "synthetic")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import gmlib  # noqa: E402  (this checkout's, to make the strips if missing)
    cfg = gmlib.book.study.PROFILES["quick"][0]
    gmlib.data.ensure_data(args.data_dir, cfg.n_images, cfg.data_seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = export_tree(args.base, Path(tmp))
        print(f"quick profile, {args.steps} steps a run, {args.threads} threads; base = {args.base}")
        print(f"{'round':>5} {'base s/step':>12} {'HEAD s/step':>12} {'HEAD / base':>12}")
        ratios = []
        for r in range(args.rounds):
            order = [("base", base), ("head", ROOT)][:: 1 if r % 2 == 0 else -1]  # who goes first alternates
            times = {name: seconds_per_step(tree, args.data_dir, args.steps, args.threads) for name, tree in order}
            old, new = times["base"], times["head"]
            ratios.append(new / old)
            print(f"{r + 1:>5} {old:>12.3f} {new:>12.3f} {new / old:>12.3f}")
        print(f"median HEAD / base: {statistics.median(ratios):.3f} (below 1: HEAD trains faster)")


if __name__ == "__main__":
    main()
