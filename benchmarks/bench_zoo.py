"""Prune time on a few of the zoo's families: gmlib.prune vs Torch-Pruning 1.6.1, timed side by side in one run.

Both prune every conv by FPGM at 30 % from the same random-init float32 model and example input (1, 3, 64, 64),
classifier kept; model construction is not timed. gmlib runs with count_macs=False (Torch-Pruning counts nothing).
Rounds interleave the two tools after an untimed warm-up; the ratio is the median of the per-round ratios. Only
families that both tools prune exactly (notebook 09) are timed. Needs the bench extra: pip install -e '.[bench]'.
"""
import argparse
import statistics
import time
import warnings

import torch

import gmlib
from gmlib import zoo

FAMILIES = ["ResNet", "SE-ResNet", "EfficientNet", "MobileNetV2", "MobileNetV3", "DenseNet", "HRNet", "VoVNet",
            "Inception"]


def gmlib_step(model, x, rate):
    gmlib.prune(model, x, rate, count_macs=False)


def time_family(family, rate, repeats):
    """{tool: median seconds}, median per-round ratio gmlib / Torch-Pruning."""
    side = zoo.FAMILIES[family][2]
    x = torch.randn(1, 3, side, side)
    steps = {"gmlib": gmlib_step, "tp": zoo.torch_pruning_step}
    times = {name: [] for name in steps}
    for r in range(-1, repeats):
        for name, step in steps.items():
            model = zoo.create(family, dtype=torch.float32)
            start = time.perf_counter()
            step(model, x, rate)
            if r >= 0:
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(times["gmlib"], times["tp"]))
    return {name: statistics.median(t) for name, t in times.items()}, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per family (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rate", type=float, default=0.3)
    args = parser.parse_args()
    gmlib.set_deterministic(0, threads=args.threads)
    warnings.simplefilter("ignore")
    print(f"FPGM at {args.rate:.0%}, scoring + selection + surgery, median of {args.repeats} interleaved rounds, "
          f"{args.threads} thread(s)")
    print(f"{'family':14s}{'model':24s}{'gmlib s':>10s}{'TP s':>10s}{'gmlib/TP':>10s}")
    ratios = []
    for family in FAMILIES:
        t, ratio = time_family(family, args.rate, args.repeats)
        ratios.append(ratio)
        print(f"{family:14s}{zoo.FAMILIES[family][1]:24s}{t['gmlib']:10.3f}{t['tp']:10.3f}{ratio:10.3f}")
    print(f"{'median ratio':38s}{'':20s}{statistics.median(ratios):10.3f}")


if __name__ == "__main__":
    main()
