"""Scoring + selection + surgery of ResNet50 at 40 %: gmlib.prune vs Torch-Pruning 1.6.1, timed side by side.

Both prune every conv's filters by FPGM at 40 % (gmlib: its default, the exact geometric median; classifier
kept), from the same random-init ResNet50 (4 classes), on the same example input (1, 3, 64, 64); model construction
is not timed. The ratio compares like with like: gmlib.prune(count_macs=False) (params still counted), since
Torch-Pruning's step counts nothing; gmlib's default, which also counts MACs before and after with torch's
FlopCounterMode (two extra forward passes), is printed next to it. Torch-Pruning is used as its README shows: BasePruner +
FPGMImportance, ignored_layers=[fc]. Also prints the Table-3 figures (params / MACs reduction at input [3, 64, 64])
for both of gmlib's residual policies next to the paper's -48.43 % / -48.81 % (NNI 2.x).
Timed side by side in the same rounds: verify=False (goal: at most 0.25 of Torch-Pruning's time) and verify=True, the
default (goal: under Torch-Pruning's time), and gmlib.plan with its params and MACs after (what prune would do, the
model untouched; goal: at most prune's default time).
`--base REV` instead times this checkout against commit REV, side by side: rounds alternate a fresh interpreter on
each tree (which goes first alternates too), each timing gmlib.prune (verify=False, the default, MACs counted) and
gmlib.plan once after a warm-up; the ratio is this checkout / REV per round, and its median.
Needs the bench extra: pip install -e '.[bench]'.
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

import gmlib

PAPER = {"params": -48.43, "macs": -48.81}  # He et al. FPGM on ResNet50 at 40 %, as quoted by Hao et al. 2022
ROOT = Path(__file__).resolve().parents[1]

# one round in a fresh interpreter on one tree; argv: tree, threads, seed. Prints {method: seconds}.
CHILD = """
import json, sys, time, torch
tree, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, tree)
import gmlib
assert gmlib.__file__.startswith(tree), gmlib.__file__
gmlib.set_deterministic(0, threads=threads)
x = torch.randn(1, 3, 64, 64)
fns = {"prune, verify=False": lambda m: gmlib.prune(m, x, 0.4, count_macs=False, verify=False),
       "prune, verify=True": lambda m: gmlib.prune(m, x, 0.4, count_macs=False),
       "prune, defaults": lambda m: gmlib.prune(m, x, 0.4),
       "plan, defaults": lambda m: gmlib.plan(m, x, 0.4)}
times = {}
for timed in (False, True):
    for name, fn in fns.items():
        model = gmlib.models.create("resnet50", seed=seed).eval()
        start = time.perf_counter()
        fn(model)
        if timed:
            times[name] = time.perf_counter() - start
print(json.dumps(times))
"""


def time_rounds(fns, repeats, against="tp", network="resnet50"):
    """Median seconds per method, and per method the median of its per-round ratios to method `against`.

    Rounds interleave the methods (round r prunes a fresh `network` of seed r with each of them), after one untimed
    warm-up round, so a machine that speeds up or slows down mid-run moves every method alike.
    """
    times = {name: [] for name in fns}
    for r in range(-1, repeats):
        for name, fn in fns.items():
            model = gmlib.models.create(network, seed=max(r, 0)).eval()
            start = time.perf_counter()
            fn(model)
            if r >= 0:
                times[name].append(time.perf_counter() - start)
    ratios = {name: statistics.median(a / b for a, b in zip(t, times[against])) for name, t in times.items()}
    return {name: statistics.median(t) for name, t in times.items()}, ratios


def gmlib_prune(x, criterion="fpgm", count_macs=False, verify=False):
    return lambda model: gmlib.prune(model, x, 0.4, criterion=criterion, count_macs=count_macs, verify=verify)


def torch_pruning_prune(x):
    import torch_pruning as tp

    def run(model):
        pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.FPGMImportance(), pruning_ratio=0.4,
                                      ignored_layers=[model.fc])
        pruner.step()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared machine)")
    parser.add_argument("--base", help="time this checkout against this commit instead (ratios this / base)")
    parser.add_argument("--segmentation", action="store_true",
                        help="only plan against prune on FPN-ResNeSt50 at 1x3x256x1600 (minutes per round on a CPU)")
    args = parser.parse_args()
    if args.base:
        return against_base(args.base, args.repeats, args.threads)
    gmlib.set_deterministic(0, threads=args.threads)
    if args.segmentation:
        return plan_on_fpn(args.repeats, args.threads)
    x = torch.randn(1, 3, 64, 64)

    fns = {"gmlib": gmlib_prune(x), "tp": torch_pruning_prune(x), "l2": gmlib_prune(x, "l2"),
           "verified": gmlib_prune(x, verify=True), "full": gmlib_prune(x, count_macs=True, verify=True),
           "plan": lambda model: gmlib.plan(model, x, 0.4)}
    t, ratio = time_rounds(fns, args.repeats)
    print(f"ResNet50, 40 % FPGM, scoring + selection + surgery (median of {args.repeats} interleaved rounds, "
          f"{args.threads} threads; ratio: median of the per-round ratios to Torch-Pruning)")
    print(f"  {'':34s}{'seconds':>9s}{'/ TP':>8s}")
    for name, label, goal in (("gmlib", "gmlib.prune, verify=False", "goal <= 0.25"),
                              ("verified", "gmlib.prune, verify=True (default)", "goal < 1"),
                              ("tp", "Torch-Pruning " + _tp_version(), ""),
                              ("l2", "gmlib, l2 scores, verify=False", "no geometric-median solve"),
                              ("full", "gmlib, verified + MACs counted", "prune's defaults"),
                              ("plan", "gmlib.plan, MACs before and after", "goal <= prune's defaults")):
        print(f"  {label:34s}{t[name]:9.3f}{ratio[name]:8.3f}   {goal}")

    base = gmlib.count(gmlib.models.create("resnet50"), (3, 64, 64))
    print("\nTable 3 check, ResNet50 at 40 %, input [3, 64, 64], 4-class head (reduction in %):")
    print(f"  {'':28s}{'params':>10s}{'MACs':>10s}")
    print(f"  {'paper (NNI 2.x, FPGM)':28s}{PAPER['params']:10.2f}{PAPER['macs']:10.2f}")
    for policy in ("or-merge", "coupled"):
        report = gmlib.prune(gmlib.models.create("resnet50", seed=0), x, 0.4, policy=policy)
        print(f"  {'gmlib ' + policy:28s}{-report.params_reduction:10.2f}{-report.macs_reduction:10.2f}")
    pruned_tp = gmlib.models.create("resnet50", seed=0).eval()
    torch_pruning_prune(x)(pruned_tp)
    params, macs = gmlib.count(pruned_tp, (3, 64, 64))
    print(f"  {'Torch-Pruning (grouped)':28s}{100 * (params / base[0] - 1):10.2f}{100 * (macs / base[1] - 1):10.2f}")
    candidate_macs(x, args.repeats)


def against_base(rev, repeats, threads):
    """Median seconds per method at this checkout and at commit `rev`, and the median of the per-round ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", f"{tmp}/tree.tar", rev, "gmlib"], check=True)
        with tarfile.open(f"{tmp}/tree.tar") as tar:
            tar.extractall(f"{tmp}/base", filter="data")
        trees = {"this": str(ROOT), "base": f"{tmp}/base"}
        rounds = []
        for r in range(repeats):
            order = ("this", "base") if r % 2 == 0 else ("base", "this")
            rounds.append({name: _child(trees[name], threads, r) for name in order})
    print(f"ResNet50, 40 % FPGM: this checkout against {rev} (median of {repeats} alternating rounds, each a fresh "
          f"interpreter per tree, {threads} threads)")
    print(f"  {'':24s}{'this s':>9s}{'base s':>9s}{'this/base':>11s}")
    for method in rounds[0]["this"]:
        this, base = ([r[t][method] for r in rounds] for t in ("this", "base"))
        ratio = statistics.median(a / b for a, b in zip(this, base))
        print(f"  {method:24s}{statistics.median(this):9.3f}{statistics.median(base):9.3f}{ratio:11.3f}")


def _child(tree, threads, seed):
    out = subprocess.run([sys.executable, "-c", CHILD, tree, str(threads), str(seed)], check=True,
                         capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def plan_on_fpn(repeats, threads):
    """gmlib.plan against gmlib.prune (both with their defaults: MACs counted, prune verifying its result) on the
    paper's segmentation network at a full strip, FPGM at 40 % (goal: plan at most prune's time)."""
    x = torch.randn(1, 3, 256, 1600)
    fns = {"prune": lambda model: gmlib.prune(model, x, 0.4), "plan": lambda model: gmlib.plan(model, x, 0.4)}
    t, ratio = time_rounds(fns, repeats, against="prune", network="fpn_resnest50")
    print(f"FPN-ResNeSt50, 1x3x256x1600, 40 % FPGM (median of {repeats} interleaved rounds, {threads} threads)")
    print(f"  gmlib.prune (defaults)  {t['prune']:8.2f} s\n  gmlib.plan (defaults)   {t['plan']:8.2f} s   "
          f"plan / prune {ratio['plan']:.2f} (goal <= 1)")


def candidate_macs(x, repeats):
    """MACs of a candidate plan: scaled per-module counts (gmlib.planning.estimate_macs) against pruning a copy
    and counting it, side by side on the same plan (goal: at least 20x faster, and the same number)."""
    model = gmlib.models.create("resnet50", seed=0).eval()
    plan = gmlib.plan(model, x, 0.4, sizes_after=False)
    estimate, copied = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fast = gmlib.planning.estimate_macs(plan)
        estimate.append(time.perf_counter() - start)
        start = time.perf_counter()
        twin = copy.deepcopy(model)
        gmlib.apply(twin, plan, verify=False)
        slow = gmlib.count(twin, (3, 64, 64))[1]
        copied.append(time.perf_counter() - start)
    e, c = statistics.median(estimate), statistics.median(copied)
    print(f"\nMACs of a candidate plan (ResNet50 at 40 %): scaled counts {e * 1e3:.3f} ms, a pruned copy counted "
          f"{c * 1e3:.1f} ms: {c / e:.0f}x faster (goal >= 20x); same MACs: {fast == slow}")


def _tp_version():
    from importlib import metadata
    return metadata.version("torch-pruning")  # its __version__ attribute still says 1.6.0 in 1.6.1


if __name__ == "__main__":
    main()
