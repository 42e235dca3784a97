"""Exact geometric median vs the distance-sum relaxation on every conv layer of ResNet50 (random init).

Prints, per layer, the time of FPGM's exact criterion (distance to the Weiszfeld median) and of the relaxation
(sums of pairwise distances, as NNI and Torch-Pruning compute it) and their ratio; then the totals, and the solver's
matrix-vector distance shortcut next to the direct distances: time, and how far apart their medians land.
Goal: exact <= 2x the relaxation and < 1 s in total on a 2-core CPU.
"""
import time

import torch
from torch import nn

import gmlib
from gmlib import median


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def shortcut_vs_direct(weights):
    """Geometric medians of every layer with the matrix-vector distances (default) and with the direct ones.

    Returns (best time shortcut, best time direct, max ||y_short - y_direct|| / scale, max relative objective excess
    f(y_short) / f(y_direct) - 1), with scale the mean distance of a layer's filters to y_direct.
    """
    def solve():
        return [gmlib.geometric_median(w) for w in weights]

    def objective(w, y):
        return float(median.median_objective(w.double(), y.double()))

    short, t_short = solve(), best_of(solve)
    threshold, median._FAST = median._FAST, 2 ** 62  # no layer is that large: every distance is computed directly
    try:
        direct, t_direct = solve(), best_of(solve)
    finally:
        median._FAST = threshold
    pairs = list(zip(weights, short, direct))
    shift = max(float((a - b).norm() / (w - b).norm(dim=1).mean()) for w, a, b in pairs)
    excess = max(objective(w, a) / objective(w, b) - 1 for w, a, b in pairs)
    return t_short, t_direct, shift, excess


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

    weights = [w.reshape(w.shape[0], -1) for _, w in convs]  # (C_out, C_in*k*k)
    t_short, t_direct, shift, excess = shortcut_vs_direct(weights)
    print("\ngeometric medians of all layers, distances by matrix-vector shortcut vs direct:")
    print(f"  time              {t_short:.3f} s vs {t_direct:.3f} s")
    print(f"  max |y_short - y_direct| / scale  {shift:.1e}")
    print(f"  max objective excess f(y_short) / f(y_direct) - 1  {excess:.1e}")


if __name__ == "__main__":
    main()
