"""Does the clock follow the FLOPs? Networks timed side by side in eager PyTorch, frozen PyTorch and ONNX Runtime.

Every (variant, runtime) runs once per round and rounds interleave them, so a machine that speeds up or slows down
moves all alike; latency is the median over rounds. ideal = MACs(reference) / MACs, realised = t(reference) / t,
and realised / ideal is the share of the FLOPs saving that the clock sees.
"""
import copy
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import export, models
from .complexity import count
from .surgery import prune
from .utils import native_stderr_silenced

__all__ = ["RUNTIMES", "pruned_variants", "runner", "time_rounds", "measure", "add_speedups", "op_times", "by_kind"]

# eager-cl: channels_last memory format; frozen: export.freeze (TorchScript, norms folded, oneDNN weights prepacked);
# ort-<level>: ONNX Runtime at that graph optimisation level (ort = all); ort-int8: export.quantize_int8, level all
RUNTIMES = ("eager", "eager-cl", "frozen", "ort", "ort-extended", "ort-basic", "ort-disable", "ort-int8")


def pruned_variants(arch: str, rates, policies=("or-merge", "coupled"), round_tos=(1,), size=(3, 256, 1600), *,
                    criterion: str = "fpgm", seed: int = 0):
    """`arch` (random init, `seed`) pruned at every rate, policy and round_to, plus the unpruned reference.

    Returns (variants, counts): keys (arch, policy, rate, round_to), the reference as (arch, "—", 0.0, 1);
    variants maps them to eval-mode models, counts to a DataFrame with params_M and GMACs at input `size` (C, H, W).
    """
    variants, rows = {}, []
    for rate in sorted({0.0, *map(float, rates)}):
        for policy in policies if rate else ["—"]:
            for round_to in round_tos if rate else [1]:
                model = models.create(arch, seed=seed).eval()
                if rate:
                    prune(model, torch.randn(1, 3, 64, 64), rate, criterion=criterion, policy=policy,
                          round_to=round_to, count_macs=False, seed=seed)
                key = (arch, policy, rate, round_to)
                params, macs = count(model, tuple(size))
                variants[key] = model
                rows.append(dict(zip(("network", "policy", "rate", "round_to"), key), params_M=params / 1e6,
                                 GMACs=macs / 1e9))
    return variants, pd.DataFrame(rows)


def runner(model, x, runtime, folder, threads, calibration):
    """A no-argument call that runs one forward of `model` on `x` in `runtime`, and its error against eager
    (max relative, NaN where the runtime is eager PyTorch itself). ONNX files are written once per model in `folder`."""
    if runtime == "eager":
        return (lambda: model(x)), float("nan")
    if runtime == "eager-cl":
        cl, xcl = copy.deepcopy(model).to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        return (lambda: cl(xcl)), float("nan")
    if runtime == "frozen":
        frozen = export.freeze(model, x)
        with torch.no_grad():
            reference, out = model(x), frozen(x)
        return (lambda: frozen(x)), float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
    path = Path(folder) / f"{id(model)}.onnx"
    if not path.is_file():
        export.to_onnx(model, path, x)
    if runtime == "ort-int8":
        path = export.quantize_int8(path, path.with_suffix(".int8.onnx"), calibration)
    level = "all" if runtime in ("ort", "ort-int8") else runtime.removeprefix("ort-")
    sess = export.session(path, threads=threads, optimization=level, spinning=False)  # spinning steals eager's cores
    feed = {"image": x.numpy()}
    return (lambda: sess.run(None, feed)), export.max_relative_error(model, sess, x)


@torch.inference_mode()
def time_rounds(runners, rounds, progress):
    """{key: [seconds per round]} of every runner, interleaved round by round after one warm-up round (so a slow
    spell of the machine falls on every variant alike)."""
    times = {key: [] for key in runners}
    for r in tqdm(range(-1, rounds), desc="rounds", disable=not progress):  # round -1 warms every variant up
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            if r >= 0:
                times[key].append(time.perf_counter() - start)
    return times


def measure(variants: dict, x: torch.Tensor, runtimes=("eager", "ort"), *, rounds: int = 5, threads: int | None = None,
            calibration=None, names=("variant",), progress: bool = True) -> pd.DataFrame:
    """Median latency of every model in `variants` (key -> eval-mode nn.Module, CPU) on input `x`, in each runtime.

    Returns one row per (variant, runtime): the key spread over the columns `names` (a tuple key, one name per
    entry), runtime, ms (the median over rounds), ms_min and ms_max (the fastest and slowest round), and error (max
    relative difference of the runtime's output from eager PyTorch's).
    `calibration`: batches for ort-int8 (default four seeded random batches shaped like x); threads: ONNX Runtime's
    intra-op threads (PyTorch's are set by the caller, e.g. gmlib.set_deterministic).
    """
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    if not variants:
        raise ValueError("variants is empty: give at least one model to time")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    bad = [k for k, m in variants.items() if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"variants must map keys to nn.Module; not so for {bad[:3]}")
    for key in variants:
        if len(key if isinstance(key, tuple) else (key,)) != len(names):
            raise ValueError(f"variant key {key!r} does not have one entry per name in {names}")
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = [torch.randn(x.shape, generator=g) for _ in range(4)]
    runners, errors = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for key, model in variants.items():
            model.eval()
            for runtime in runtimes:
                runners[key, runtime], errors[key, runtime] = runner(model, x, runtime, folder, threads,
                                                                      calibration)
        times = time_rounds(runners, rounds, progress)
    rows = []
    for (key, runtime), t in times.items():
        fields = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(names, fields)), "runtime": runtime, "ms": 1e3 * statistics.median(t),
                     "ms_min": 1e3 * min(t), "ms_max": 1e3 * max(t), "error": errors[key, runtime]})
    return pd.DataFrame(rows)


def add_speedups(table: pd.DataFrame, is_reference, by=("network", "runtime"), macs: str = "GMACs") -> pd.DataFrame:
    """Add ideal, realised and realised/ideal to a `measure` table that has a `macs` column: each row against the
    row of its group (`by`) where `is_reference(table)` holds (e.g. lambda t: t.rate == 0)."""
    reference = table[is_reference(table)]
    if reference.duplicated(list(by)).any():
        raise ValueError(f"more than one reference row per {by}")
    ref = table[list(by)].merge(reference[list(by) + ["ms", macs]], on=list(by), how="left", suffixes=("", "_ref"))
    if ref["ms"].isna().any():
        raise ValueError(f"a group of {by} has no reference row")
    out = table.copy()
    out["ideal"] = ref[macs].to_numpy() / out[macs].to_numpy()
    out["realised"] = ref["ms"].to_numpy() / out["ms"].to_numpy()
    out["realised/ideal"] = out["realised"] / out["ideal"]
    return out


@torch.inference_mode()
def op_times(model: nn.Module, x: torch.Tensor, rounds: int = 3) -> pd.Series:
    """Eager self-time per forward (ms) of each aten op, from torch.profiler over `rounds` forwards after a warm-up:
    where the time goes, e.g. convolutions against the upsampling and additions that pruning does not shrink."""
    model.eval()
    model(x)
    with native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            model(x)
    ms = {e.key: e.self_cpu_time_total / rounds / 1e3 for e in prof.key_averages()}
    return pd.Series(ms, name="ms").sort_values(ascending=False)


# what an aten op does, by the first matching substring of its name; the rest is "other"
KINDS = {"conv": "convolution", "norm": "normalisation", "pool": "pooling", "upsample": "upsampling",
         "add": "elementwise", "mul": "elementwise", "clamp": "elementwise", "relu": "elementwise",
         "sigmoid": "elementwise", "softmax": "elementwise", "sum": "elementwise", "div": "elementwise",
         "empty": "memory", "copy": "memory", "fill": "memory", "cat": "memory"}


def by_kind(ops: pd.Series) -> pd.Series:
    """op_times summed by what the ops do (KINDS): convolutions against the norms, pools, upsampling, elementwise
    ops and memory traffic around them."""
    kind = [next((k for sub, k in KINDS.items() if sub in name.lower()), "other") for name in ops.index]
    return ops.groupby(kind).sum().sort_values(ascending=False)
