"""Latency of pruned networks against their MACs: does the clock follow the FLOPs? Every lever side by side.

Each network is pruned (FPGM, random init, seed 0) for every policy, rate and `round_to`; MACs and params are counted
at the benchmark input, and one forward is timed in every runtime of gmlib.latency (eager PyTorch, eager in
channels_last, frozen TorchScript, ONNX Runtime at each graph optimisation level, ORT int8), all interleaved in one run.
ideal = MACs(unpruned) / MACs, realised = latency(unpruned) / latency in the same runtime; realised / ideal is the
share of the FLOPs saving that the clock sees. Needs the deploy extra. A full Severstal strip (1x3x256x1600) is the
default input; --ops adds torch.profiler's per-op eager times of the unpruned and the most pruned variant.
"""
import argparse

import pandas as pd
import torch

import gmlib
from gmlib import latency


def parse_size(text):
    n, c, h, w = (int(v) for v in text.lower().split("x"))
    return n, c, h, w


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=parse_size, default=(1, 3, 256, 1600), help="NxCxHxW (default 1x3x256x1600)")
    ap.add_argument("--archs", nargs="+", default=["fpn_resnest50", "resnet50"])
    ap.add_argument("--policies", nargs="+", default=list(gmlib.surgery.POLICIES))
    ap.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                    help="the unpruned reference is always added")
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 16], help="channel multiples to compare")
    ap.add_argument("--runtimes", nargs="+", default=["eager", "frozen", "ort"], choices=latency.RUNTIMES)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (medians reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ops", action="store_true", help="also print per-op eager times (torch.profiler)")
    args = ap.parse_args()
    gmlib.set_deterministic(0, threads=args.threads)
    x = torch.randn(*args.input)
    models, counts = {}, []
    for arch in args.archs:
        variants, sizes = latency.pruned_variants(arch, args.rates, args.policies, args.round_to, args.input[1:])
        models.update(variants)
        counts.append(sizes)
    names = ["network", "policy", "rate", "round_to"]
    table = latency.measure(models, x, args.runtimes, rounds=args.rounds, threads=args.threads, names=names)
    table = latency.add_speedups(table.merge(pd.concat(counts), on=names), lambda t: t.rate == 0)
    table = table.drop(columns=[c for c in ["error"] if not table[c].notna().any()])
    print(f"input {'x'.join(map(str, args.input))}, {args.threads} threads, median of {args.rounds} interleaved "
          f"rounds; error = max relative difference from eager PyTorch")
    with pd.option_context("display.width", 220, "display.max_rows", 1000):
        print(table.sort_values(["network", "runtime", "policy", "round_to", "rate"]).round(3).to_string(index=False))
        if args.ops:
            for arch in args.archs:
                top = max(args.rates)
                ops = {k: latency.op_times(m, x) for k, m in models.items() if k[0] == arch and k[2] in (0, top)}
                frame = pd.DataFrame({f"{p} r={r:g} rt={rt}": latency.by_kind(s) for (_, p, r, rt), s in ops.items()})
                print(f"\n{arch}: eager self-time per forward (ms) by kind of op, unpruned and rate {top:g}")
                print(frame.fillna(0).round(1).to_string())


if __name__ == "__main__":
    main()
