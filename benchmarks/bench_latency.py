"""Latency of pruned networks against their MACs: does the clock follow the FLOPs? Eager PyTorch and ONNX Runtime.

For each network, policy and rate the model is pruned (FPGM, random init, seed 0), its MACs and params counted at the
benchmark input, and one forward timed in eager PyTorch and in an ONNX Runtime session (all optimisations). Rounds
interleave every variant (round r times each once, after one untimed warm-up round), so a machine that speeds up or
slows down moves them alike; latency is the median over rounds. ideal = MACs(unpruned) / MACs, realised =
latency(unpruned) / latency, and realised / ideal is the share of the FLOPs saving that the clock sees.
Needs the deploy extra (onnx, onnxruntime). A full Severstal strip (1x3x256x1600) is the default input.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import gmlib
from gmlib import export


def parse_size(text):
    n, c, h, w = (int(v) for v in text.lower().split("x"))
    return n, c, h, w


def variants(archs, policies, rates, size, round_to, channels_last):
    """(arch, policy, rate) -> pruned eval model, with (params, MACs) at `size`."""
    out = {}
    for arch in archs:
        for policy in policies:
            for rate in rates:
                if rate == 0 and policy != policies[0]:
                    continue  # one unpruned reference per network
                model = gmlib.models.create(arch, seed=0).eval()
                if rate:
                    gmlib.prune(model, torch.randn(1, 3, 64, 64), rate, policy=policy, round_to=round_to,
                                count_macs=False)
                params, macs = gmlib.count(model, size[1:])
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                out[(arch, "—" if rate == 0 else policy, rate)] = (model, params, macs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=parse_size, default=(1, 3, 256, 1600), help="NxCxHxW (default 1x3x256x1600)")
    ap.add_argument("--archs", nargs="+", default=["fpn_resnest50", "resnet50"])
    ap.add_argument("--policies", nargs="+", default=list(gmlib.surgery.POLICIES))
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--runtimes", nargs="+", default=["eager", "ort"], choices=["eager", "ort", "ort-int8"],
                    help="ort-int8: static int8 copy calibrated on 4 random batches (error vs float in 'int8 err')")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (medians reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    ap.add_argument("--channels-last", action="store_true", help="eager models in channels_last memory format")
    ap.add_argument("--ort-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    args = ap.parse_args()
    gmlib.set_deterministic(0, threads=args.threads)
    x = torch.randn(*args.input)
    xe = x.to(memory_format=torch.channels_last) if args.channels_last else x
    models = variants(args.archs, args.policies, args.rates, args.input, args.round_to, args.channels_last)

    runners, int8_error = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (model, _, _) in models.items():
            if "eager" in args.runtimes:
                runners[key + ("eager",)] = lambda m=model: m(xe)
            if "ort" in args.runtimes or "ort-int8" in args.runtimes:
                path = export.to_onnx(model, Path(tmp) / f"{len(runners)}.onnx", x[:1])
                feed = {"image": x.numpy()}
                if "ort" in args.runtimes:
                    sess = export.session(path, threads=args.threads, optimization=args.ort_optimization)
                    runners[key + ("ort",)] = lambda s=sess, f=feed: s.run(None, f)
                if "ort-int8" in args.runtimes:
                    q = export.quantize_int8(path, path.with_suffix(".int8.onnx"), [torch.randn_like(x) for _ in range(4)])
                    sess = export.session(q, threads=args.threads, optimization=args.ort_optimization)
                    int8_error[key] = export.max_relative_error(model, sess, x)
                    runners[key + ("ort-int8",)] = lambda s=sess, f=feed: s.run(None, f)
        times = {k: [] for k in runners}
        with torch.inference_mode():
            for r in tqdm(range(-1, args.rounds), desc="rounds"):
                for key, run in runners.items():
                    start = time.perf_counter()
                    run()
                    if r >= 0:
                        times[key].append(time.perf_counter() - start)

    rows = []
    for (arch, policy, rate, runtime), t in times.items():
        _, params, macs = models[(arch, policy, rate)]
        _, params0, macs0 = models[(arch, "—", 0.0)]
        latency, latency0 = statistics.median(t), statistics.median(times[(arch, "—", 0.0, runtime)])
        rows.append(dict(network=arch, runtime=runtime, policy=policy, rate=rate, params_M=params / 1e6,
                         GMACs=macs / 1e9, ms=1e3 * latency, ideal=macs0 / macs, realised=latency0 / latency,
                         **({"int8 err": int8_error[(arch, policy, rate)]} if runtime == "ort-int8" else {})))
    df = pd.DataFrame(rows)
    df["realised/ideal"] = df.realised / df.ideal
    fp32 = {k[:3]: statistics.median(v) for k, v in times.items() if k[3] == "ort"}
    if fp32 and "ort-int8" in args.runtimes:  # int8 against float ORT on the same network
        df["vs ort fp32"] = [fp32[(r.network, r.policy, r.rate)] / (r.ms / 1e3) if r.runtime == "ort-int8" else None
                             for r in df.itertuples()]
    print(f"input {'x'.join(map(str, args.input))}, {args.threads} threads, median of {args.rounds} interleaved "
          f"rounds, round_to={args.round_to}, channels_last={args.channels_last}, ORT {args.ort_optimization}")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(df.sort_values(["network", "runtime", "policy", "rate"]).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
