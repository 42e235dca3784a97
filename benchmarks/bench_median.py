"""Exact geometric median vs the distance-sum relaxation on every conv layer of ResNet50 (random init).

Prints, per layer, the time of FPGM's exact criterion (distance to the Weiszfeld median) and of the relaxation
(sums of pairwise distances, as NNI and Torch-Pruning compute it) and their ratio; then the totals.
Goal: exact <= 2x the relaxation and < 1 s in total on a 2-core CPU.
"""
import time

import torch
from torch import nn

import gmlib


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(threads=2):
    gmlib.set_deterministic(0, threads=threads)
    model = gmlib.models.create("resnet50")
    convs = [(name, m.weight.detach()) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    filter_scores = gmlib.filter_scores
    for _, w in convs[:3]:  # warm-up
        filter_scores(w, "fpgm"), filter_scores(w, "fpgm-sum")
    print(f"{'layer':28s} {'filters':>7s} {'dim':>5s} {'exact ms':>9s} {'sum ms':>8s} {'ratio':>6s}")
    total_exact = total_sum = 0.0
    for name, w in convs:
        t_exact = best_of(lambda: filter_scores(w, "fpgm"))
        t_sum = best_of(lambda: filter_scores(w, "fpgm-sum"))
        total_exact += t_exact
        total_sum += t_sum
        print(f"{name:28s} {w.shape[0]:7d} {w[0].numel():5d} {1e3 * t_exact:9.2f} {1e3 * t_sum:8.2f} "
              f"{t_exact / t_sum:6.2f}")
    print(f"\n{len(convs)} conv layers, torch {torch.__version__}, {threads} threads")
    print(f"total exact GM    {total_exact:.3f} s")
    print(f"total distance-sum {total_sum:.3f} s")
    print(f"ratio exact/sum   {total_exact / total_sum:.2f}  (goal <= 2, exact < 1 s)")


if __name__ == "__main__":
    main()
