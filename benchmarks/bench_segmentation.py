"""Segmentation networks people use, pruned at 30 %: gmlib.prune (verify on) vs Torch-Pruning 1.6.1, side by side.

The list: segmentation_models_pytorch 0.6.0's Unet, FPN, UnetPlusPlus, PSPNet, DeepLabV3, DeepLabV3Plus, Linknet,
MAnet, PAN, UPerNet with a resnet34 encoder (`--encoders` for more) and torchvision's fcn_resnet50,
deeplabv3_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large; random init, 2 classes, float64 and
fingerprinted (gmlib.verify), input (1, 3, 64, 64) (PAN: 128). Each tool prunes a copy of the same original: gmlib
under both policies with its self-check on (the default), Torch-Pruning as gmlib.zoo.torch_pruning_step (MetaPruner,
FPGMImportance, pruning_ratio 0.3, its GroupNorm handling as it is, the 2-class head kept). Every result is judged by
the same by-value check (gmlib.verify.check_exact: does the pruned network compute the original with the removed
channels zeroed?): exact, WRONG, refused (an exception), or timeout (no result within `--timeout` s). Params cut
are shares of the parameters the forward runs, before and after (gmlib.zoo.run_cut: PSPNet never runs its last two
stages, and a pruner may shrink them too).

Rounds interleave the three runs on each network; times are medians over `--repeats` rounds; the ratio per network
is gmlib (or-merge) / Torch-Pruning, and its median over the networks where both gave a result is printed last.
Needs the bench extra (torch-pruning, segmentation-models-pytorch).
"""
import argparse
import copy
import statistics
import time
import warnings

import torch

import gmlib
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL, _time_limit, run_cut, torch_pruning_step

SMP = ["Unet", "FPN", "UnetPlusPlus", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN", "UPerNet"]
TORCHVISION = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
RATE, CLASSES = 0.3, 2


def build(arch, encoder):
    """(label, fingerprinted float64 original in eval mode, example input)."""
    side = 128 if arch == "PAN" else 64
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        if encoder is None:
            from torchvision.models import segmentation
            model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=CLASSES)
            label = f"tv {arch}"
        else:
            import segmentation_models_pytorch as smp
            model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=CLASSES)
            label = f"smp {arch} {encoder}"
    return label, fingerprint(model.double().eval()), x


def run(tool, original, x, timeout):
    """(status, params cut %, seconds) of one tool on a copy of `original`; the cut is a share of the parameters
    the forward runs (gmlib.zoo.run_cut: e.g. PSPNet never runs its last encoder stages)."""
    model = copy.deepcopy(original)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), _time_limit(timeout):
            warnings.simplefilter("ignore")
            if tool == "tp":
                torch_pruning_step(model, x, RATE, num_classes=CLASSES)
            else:
                gmlib.prune(model, x, RATE, policy=tool, count_macs=False)  # verify=True: the default
    except Exception as e:  # noqa: BLE001 - a refusal, a crash or a timeout of either tool is a result here
        seconds = time.perf_counter() - start
        return ("timeout" if type(e).__name__ == "_Timeout" else "refused"), 0.0, seconds
    seconds = time.perf_counter() - start
    try:
        exact = check_exact(original, model, x) <= EXACT_TOL
    except Exception:  # noqa: BLE001 - a pruned network that does not run, or is not a sub-network by value
        exact = False
    return ("exact" if exact else "WRONG"), run_cut(original, model, x), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="resnet34", help="comma-separated smp encoders")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per network (medians reported)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a run counts as a timeout")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching networks")
    args = parser.parse_args()
    gmlib.set_deterministic(0, threads=args.threads)
    nets = [(a, e) for e in args.encoders.split(",") for a in SMP] + [(a, None) for a in TORCHVISION]
    if args.only:
        nets = [(a, e) for a, e in nets if any(s in f"{a} {e}" for s in args.only.split(","))]
    tools = ("or-merge", "coupled", "tp")
    print(f"rate {RATE}, float64, median of {args.repeats} interleaved rounds, {args.threads} thread(s), "
          f"timeout {args.timeout:g} s; Torch-Pruning {_tp_version()}")
    print(f"{'network':44s} {'gmlib or-merge':>22s} {'gmlib coupled':>22s} {'Torch-Pruning':>22s} {'ratio':>6s}")
    ratios, tally, smp_targets = [], {t: {} for t in tools}, []
    for arch, encoder in nets:
        try:
            label, original, x = build(arch, encoder)
        except ValueError as e:  # smp itself refuses some pairs (DenseNet or VGG encoders in dilated mode)
            print(f"{f'smp {arch} {encoder}':44s} smp cannot build it: {e}")
            continue
        first, times = {}, {t: [] for t in tools}
        for r in range(args.repeats):
            for t in tools:
                if first.get(t, ("",))[0] == "timeout":  # no point timing it again
                    continue
                status, cut, seconds = run(t, original, x, args.timeout)
                first.setdefault(t, (status, cut))
                times[t].append(args.timeout if status == "timeout" else seconds)
        cells = []
        for t in tools:
            status, cut = first[t]
            tally[t][status] = tally[t].get(status, 0) + 1
            cells.append(f"{status:>7s} {cut:5.1f}% {statistics.median(times[t]):6.2f}s")
        ratio = statistics.median(times["or-merge"]) / statistics.median(times["tp"]) \
            if first["tp"][0] != "refused" else float("nan")
        if ratio == ratio:
            ratios.append(ratio)
        if encoder is not None:  # issue target: exact, >= 15 % under or-merge and >= 25 % under coupled
            smp_targets.append(first["or-merge"][0] == "exact" and first["or-merge"][1] >= 15
                               and first["coupled"][0] == "exact" and first["coupled"][1] >= 25)
        print(f"{label:44s} {cells[0]:>22s} {cells[1]:>22s} {cells[2]:>22s} {ratio:6.2f}", flush=True)
    print("\ntally: " + "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                                  for t, c in tally.items()))
    if smp_targets:
        print(f"smp networks exact with >= 15 % (or-merge) and >= 25 % (coupled) of their run parameters cut: "
              f"{sum(smp_targets)} of {len(smp_targets)}")
    if ratios:
        print(f"median time ratio gmlib (or-merge, verified) / Torch-Pruning over {len(ratios)} networks: "
              f"{statistics.median(ratios):.3f} (goal < 1)")


def _tp_version():
    from importlib import metadata
    try:
        return metadata.version("torch-pruning")  # its __version__ attribute still says 1.6.0 in 1.6.1
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
