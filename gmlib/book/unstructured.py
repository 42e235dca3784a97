"""Structured against unstructured pruning, measured: the argument of Hao et al.'s Section 3.1 (Figures 1-2).

Unstructured (magnitude) pruning zeroes the smallest weights of every conv and linear layer (torch.nn.utils.prune,
L1 per layer, the masks then made permanent): the network keeps its dense shapes, so it stores every entry and runs
every multiply-accumulate. Filter pruning (gmlib.prune) removes whole channels. At a matched share of parameters
(nonzeros of the one = parameters of the other) `structured_table` counts both and times them side by side with
gmlib.latency's runners (eager PyTorch, ONNX Runtime; interleaved rounds), and `csr_table` times one layer as a
matrix product, dense against torch.sparse CSR, the format that could skip the zeros on a CPU.

A verdict pairs each round of a variant with the unpruned network's round in the same runtime: the speedup per
round (reference time / variant time), and the study's decision rule (gmlib.verdicts.decide) around a speedup of 1
with a margin of SPEED_MARGIN: "equivalent" when the 95 % interval over rounds lies inside 1 ± margin, "faster" /
"slower" when the t test, Holm-corrected over the table's comparisons, gives p < 0.05 and the mean speedup is off 1
by more than the margin, "not separated" otherwise.
"""
import copy
import statistics
import tempfile
import time
import warnings

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .. import models
from ..complexity import count
from ..latency import runner, time_rounds
from ..planning import plan
from ..store import Store
from ..surgery import prune
from ..verdicts import decide, summarise

__all__ = ["magnitude_prune", "nonzero_params", "nonzero_macs", "filter_rate_for", "structured_table", "csr_table",
           "SPEED_MARGIN", "speed_calls", "speed_call", "claim_verdict", "claim_markdown", "side_by_side", "COUNTS",
           "csr_view", "csr_markdown"]

PRUNABLE = (nn.Conv2d, nn.Linear)
# the smallest change of speed a deployment would act on: 5 % of the unpruned network's time, fixed before timing
SPEED_MARGIN = 0.05
# gmlib.verdicts' calls in words for a speedup
# side_by_side's counts (the rest of its columns are the times): chapter 03 shows the two as two tables
COUNTS = ["params stored (M)", "nonzero params (M)", "GMACs executed", "GMACs on nonzero weights"]
SPEED_WORDS = {"ahead": "faster", "behind": "slower", "equivalent": "equivalent", "not separated": "not separated"}


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` share of smallest-|w| entries of every Conv2d and Linear weight, in place, layer by layer
    (torch.nn.utils.prune.l1_unstructured), then make the masks permanent (prune.remove): dense shapes, zeros in
    them."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    for module in model.modules():
        if isinstance(module, PRUNABLE):
            torch_prune.l1_unstructured(module, "weight", amount=float(sparsity))
            torch_prune.remove(module, "weight")
    return model


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not zero (what a sparse format would have to store)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@torch.no_grad()
def nonzero_macs(model: nn.Module, input_size) -> int:
    """Multiply-accumulates of conv and linear layers whose weight entry is not zero, on a zero input of shape
    (1, *input_size): conv nnz(W) * H_out * W_out, linear nnz(W) per row of its input. What a kernel that skips zero
    weights would run; a dense kernel runs them all (gmlib.count)."""
    total, hooks = [0], []

    def hook(module, inputs, output):
        nnz = int(torch.count_nonzero(module.weight))
        total[0] += nnz * (output.shape[2] * output.shape[3] if output.dim() == 4 else output[..., 0].numel())

    for module in model.modules():
        if isinstance(module, PRUNABLE):
            hooks.append(module.register_forward_hook(hook))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total[0]


def filter_rate_for(model: nn.Module, params_target: int, *, policy: str = "coupled", criterion: str = "fpgm",
                    tol: float = 1e-3, trace_size=(3, 64, 64)) -> float:
    """The filter-pruning rate whose pruned network has `params_target` parameters (bisection on gmlib.plan, to
    `tol` in rate; the model is untouched). The parameters move in steps with the rate (a coupling set loses whole
    channels, a GroupNorm whole groups), so the match is as close as the step it falls in."""
    x = torch.zeros(1, *trace_size)
    lo, hi = 0.0, 0.95
    while hi - lo > tol:
        mid = (lo + hi) / 2
        after = plan(model, x, mid, policy=policy, criterion=criterion, count_macs=False).params_after
        lo, hi = (mid, hi) if after > params_target else (lo, mid)
    return round((lo + hi) / 2, 4)


def structured_table(store: Store, networks: dict, sparsities, *, runtimes=("eager", "ort"), rounds: int = 5,
                     threads: int = 1, policy: str = "coupled", criterion: str = "fpgm", seed: int = 0,
                     progress: bool = True) -> pd.DataFrame:
    """One row per (network, method, sparsity, runtime): method "dense" (unpruned), "dense copy" (a copy of it, timed
    as a variant: the control), "unstructured" (magnitude pruning at `sparsity` of every conv and linear weight) or
    "filter" (gmlib.prune at the rate whose parameters equal the unstructured network's nonzeros). Columns: params
    (stored: dense entries), nonzero params, GMACs executed (torch.utils.flop_counter), GMACs on nonzero weights,
    rate (filter pruning's), runtime, ms, ms_min, ms_max (median, fastest and slowest of `rounds` interleaved rounds,
    `threads` threads in both runtimes, timed by gmlib.latency's runners: every variant and runtime once per round)
    and rounds_ms (every round).

    `networks`: {gmlib.models name: input size (C, H, W)}; random init of `seed`. A record of the store (kind
    "unstructured"), keeping the machine it was timed on."""
    config = {"networks": {k: [int(s) for s in v] for k, v in networks.items()},
              "sparsities": [float(s) for s in sparsities], "runtimes": list(runtimes), "rounds": int(rounds),
              "threads": int(threads), "policy": policy, "criterion": criterion, "seed": int(seed), "table": "speed"}

    def compute():
        torch.set_num_threads(threads)
        rows = []
        for arch, size in config["networks"].items():
            base = models.create(arch, seed=seed).eval()
            # the unpruned network twice: the copy is the control, what the rule calls a difference that is none
            variants, counts = {(arch, "dense", 0.0): base, (arch, "dense copy", 0.0): copy.deepcopy(base)}, {}
            for s in config["sparsities"]:
                variants[arch, "unstructured", s] = magnitude_prune(copy.deepcopy(base), s)
                target = nonzero_params(variants[arch, "unstructured", s])
                rate = filter_rate_for(base, target, policy=policy, criterion=criterion)
                pruned = copy.deepcopy(base)
                prune(pruned, torch.zeros(1, 3, 64, 64), rate, policy=policy, criterion=criterion, count_macs=False,
                      seed=seed)
                variants[arch, "filter", s] = pruned.eval()
                counts[arch, "filter", s] = rate
            for key, model in variants.items():
                params, macs = count(model, tuple(size))
                counts[key] = dict(params=params, nonzero_params=nonzero_params(model), GMACs=macs / 1e9,
                                   nonzero_GMACs=nonzero_macs(model, tuple(size)) / 1e9,
                                   rate=counts.get(key) if key[1] == "filter" else 0.0)
            x = torch.randn(1, *size, generator=torch.Generator().manual_seed(seed))
            runners, errors = {}, {}
            with tempfile.TemporaryDirectory() as folder:  # gmlib.latency's runners and interleaved rounds
                for key, model in variants.items():
                    for runtime in runtimes:
                        runners[key, runtime], errors[key, runtime] = runner(model, x, runtime, folder, threads,
                                                                              None)
                times = time_rounds(runners, rounds, progress)
            for (key, runtime), t in times.items():
                rows.append({**dict(zip(("network", "method", "sparsity"), key)), "runtime": runtime,
                             "ms": 1e3 * statistics.median(t), "ms_min": 1e3 * min(t), "ms_max": 1e3 * max(t),
                             "rounds_ms": [1e3 * v for v in t], "error": errors[key, runtime], **counts[key]})
        return {"rows": rows}

    record = store.fetch("unstructured", config, compute)
    frame = pd.DataFrame(record.result["rows"])
    frame.attrs["environment"], frame.attrs["seconds"] = record.environment, record.seconds
    return frame


def _im2col(conv: nn.Conv2d, size) -> torch.Tensor:
    """The conv's input unfolded into columns (C_in k k, H_out W_out) for a random input of spatial `size`."""
    x = torch.randn(1, conv.in_channels, *size, generator=torch.Generator().manual_seed(0))
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (1, C_in k k, L)
    return cols[0].contiguous()


@torch.inference_mode()
def csr_table(store: Store, arch: str, layers: dict, sparsities, *, rounds: int = 7, threads: int = 1,
              seed: int = 0) -> pd.DataFrame:
    """One conv layer as a matrix product W (C_out, C_in k k) @ columns, dense against torch.sparse CSR, at each
    sparsity (magnitude pruning of that layer), interleaved rounds on `threads` threads. `layers`: {module name of
    `arch`: input spatial size (H, W)}. Rows: layer, sparsity, format (dense / csr), ms, ms_min, ms_max, MB stored
    (dense: 4 bytes an entry; CSR: values, column indices and row offsets as PyTorch holds them), max |error|
    against the dense product. A record of the store (kind "unstructured")."""
    config = {"arch": arch, "layers": {k: [int(s) for s in v] for k, v in layers.items()},
              "sparsities": [float(s) for s in sparsities], "rounds": int(rounds), "threads": int(threads),
              "seed": int(seed), "table": "csr"}

    def compute():
        torch.set_num_threads(threads)
        net = models.create(arch, seed=seed).eval()
        modules = dict(net.named_modules())
        runs, sizes, errors = {}, {}, {}
        for name, size in config["layers"].items():
            conv = modules[name]
            cols = _im2col(conv, size)
            for s in [0.0, *config["sparsities"]]:
                layer = magnitude_prune(copy.deepcopy(conv), s) if s else conv
                w = layer.weight.detach().flatten(1).contiguous()  # (C_out, C_in k k)
                with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                    warnings.simplefilter("ignore", UserWarning)
                    csr = w.to_sparse_csr()
                dense_out = w @ cols
                errors[name, s, "csr"] = float((csr @ cols - dense_out).abs().max())
                errors[name, s, "dense"] = 0.0
                sizes[name, s, "dense"] = w.numel() * 4 / 1e6
                sizes[name, s, "csr"] = sum(t.numel() * t.element_size() for t in
                                            (csr.values(), csr.col_indices(), csr.crow_indices())) / 1e6
                runs[name, s, "dense"] = (lambda w=w, c=cols: w @ c)
                runs[name, s, "csr"] = (lambda m=csr, c=cols: m @ c)
        times = {key: [] for key in runs}
        for r in range(-1, rounds):  # round -1 warms every variant up
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                if r >= 0:
                    times[key].append(time.perf_counter() - start)
        rows = [{"layer": name, "sparsity": s, "format": fmt, "ms": 1e3 * statistics.median(t),
                 "ms_min": 1e3 * min(t), "ms_max": 1e3 * max(t), "rounds_ms": [1e3 * v for v in t],
                 "MB": sizes[name, s, fmt], "error": errors[name, s, fmt]} for (name, s, fmt), t in times.items()]
        return {"rows": rows, "semi_structured_2_4": _two_four()}

    record = store.fetch("unstructured", config, compute)
    frame = pd.DataFrame(record.result["rows"])
    frame.attrs["environment"], frame.attrs["seconds"] = record.environment, record.seconds
    frame.attrs["semi_structured_2_4"] = record.result["semi_structured_2_4"]
    return frame


def _two_four() -> str:
    """What 2:4 semi-structured sparsity (torch.sparse.to_sparse_semi_structured) needs, and whether it ran here."""
    if not torch.cuda.is_available():
        return "not run: needs a CUDA GPU of compute capability 8.0 or newer (Ampere); this machine has no GPU"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"not run: the GPU has compute capability {major}.{minor}, 2:4 kernels need 8.0 or newer"
    return f"available (compute capability {major}.{minor}), not timed by this table"


def speed_calls(ratios, margin: float = SPEED_MARGIN) -> pd.DataFrame:
    """One row per list of per-round speedups in `ratios` (one family): mean, ci (half-width of the 95 % t
    interval), n, p, p_holm and call in words (SPEED_WORDS) by gmlib.verdicts.decide around 1 with `margin`."""
    frame = pd.DataFrame([summarise(r, center=1.0) for r in ratios], columns=["mean", "ci", "n", "p"])
    called = decide(frame, margin, center=1.0)
    return called.assign(call=called["call"].map(SPEED_WORDS))


def speed_call(ratios, margin: float = SPEED_MARGIN) -> tuple:
    """(mean, half-width of its 95 % interval, call) of one comparison's per-round speedups (a family of one)."""
    row = speed_calls([ratios], margin).iloc[0]
    return row["mean"], row["ci"], row["call"]


def claim_verdict(table: pd.DataFrame, margin: float = SPEED_MARGIN) -> pd.DataFrame:
    """Every pruned row of a `structured_table` (the control included) with its speedup over the unpruned network
    in the same runtime, paired round by round: mean, ci, p_holm and call (`speed_calls`). Each method is one family
    (Holm over its comparisons): the unstructured ones answer one half of the paper's claim, the filter ones the
    other, the control its own question."""
    ref = table[table.method == "dense"].set_index(["network", "runtime"])
    out = []
    for _, rows in table[table.method != "dense"].groupby("method", sort=False):  # one family per method
        rows = rows.reset_index(drop=True)
        ratios = [[a / b for a, b in zip(ref.loc[(r.network, r.runtime)].rounds_ms, r.rounds_ms)]
                  for r in rows.itertuples()]
        called = speed_calls(ratios, margin)
        out.append(rows.assign(speedup=called["mean"], ci=called["ci"], p_holm=called["p_holm"], call=called["call"]))
    return pd.concat(out, ignore_index=True)


def claim_markdown(calls: pd.DataFrame) -> str:
    """The paper's Section 3.1 claim against `claim_verdict`'s calls: unstructured pruning is not accelerated (no
    call "faster"), filter pruning at the same parameters is (every call "faster"); with the control's calls (the
    unpruned network against its copy), which say how often the rule finds a difference where there is none."""
    un, fi, ctl = (calls[calls.method == m] for m in ("unstructured", "filter", "dense copy"))

    def spread(rows):
        return f"{rows.speedup.min():.2f}-{rows.speedup.max():.2f}×"

    def tally(rows):
        counts = rows.call.value_counts()
        return ", ".join(f"{counts[c]} {c}" for c in SPEED_WORDS.values() if c in counts)

    def where(rows):
        return ", ".join(f"{r.network} at {r.sparsity:.0%} in {r.runtime} ({r.speedup:.2f}×)"
                         for r in rows.itertuples())

    not_accelerated, accelerated = (un.call != "faster").all(), (fi.call == "faster").all()
    holds = "holds" if not_accelerated and accelerated else "holds in part" if not_accelerated or accelerated \
        else "does not hold"
    text = (f"**The paper's claim {holds} on this machine.** Its first half, that unstructured pruning is not "
            f"accelerated: magnitude pruning, which zeroes up to {un.sparsity.max():.0%} of the weights but executes "
            f"every MAC, runs at {spread(un)} the unpruned network's speed and is never faster ({len(un)} settings: "
            f"{tally(un)}, by the study's decision rule over the rounds)")
    if not_accelerated and (un.call != "equivalent").any():
        text += (f"; the rounds spread too widely to show it equivalent within the margin in "
                 f"{(un.call != 'equivalent').sum()} of them")
    elif not not_accelerated:
        text += f"; it comes out faster at {where(un[un.call == 'faster'])}"
    text += (f". Its second half, that filter pruning runs faster: with as many parameters as the unstructured "
             f"network's nonzeros it runs at {spread(fi)} ({tally(fi)})")
    if not accelerated:
        text += f"; not told apart from the unpruned network at {where(fi[fi.call != 'faster'])}"
    text += "."
    if len(ctl) and ctl.call.isin(["equivalent", "not separated"]).all():
        text += (f" The control, the unpruned network timed against a copy of itself, comes out at {spread(ctl)} "
                 f"({tally(ctl)}), never faster or slower, as it should.")
    elif len(ctl):
        text += (f" The control, the unpruned network timed against a copy of itself, comes out at {spread(ctl)} "
                 f"({tally(ctl)}): calls of that size are within what this machine's load does.")
    return text


def side_by_side(calls: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """For people: per (network, method, sparsity) the parameters stored and nonzero (M), the GMACs executed and
    on nonzero weights, and per runtime the median ms and the mean speedup over rounds (`claim_verdict`; 1 for the
    unpruned network). The counts are the columns COUNTS."""
    keys = ["network", "method", "sparsity"]
    both = pd.concat([table[table.method == "dense"].assign(speedup=1.0), calls[calls.method != "dense copy"]],
                     ignore_index=True)
    counts = both.drop_duplicates(keys).set_index(keys)
    ms = both.pivot_table(index=keys, columns="runtime", values="ms", sort=False)
    speedup = both.pivot_table(index=keys, columns="runtime", values="speedup", sort=False)
    out = pd.DataFrame(dict(zip(COUNTS, (counts.params / 1e6, counts.nonzero_params / 1e6, counts.GMACs,
                                         counts.nonzero_GMACs))))
    for runtime, name in (("eager", "eager"), ("ort", "ORT")):
        if runtime in ms:
            out[f"{name} ms"], out[f"{name} speedup"] = ms[runtime], speedup[runtime]
    networks = list(dict.fromkeys(table.network))
    methods = ["dense", "unstructured", "filter"]
    order = sorted(counts.index, key=lambda k: (networks.index(k[0]), k[2], methods.index(k[1])))
    return out.loc[order]


def csr_view(csr: pd.DataFrame, margin: float = SPEED_MARGIN) -> pd.DataFrame:
    """For people: per (layer, sparsity) the dense and CSR ms (medians), CSR's mean speedup over rounds with its 95 %
    interval's half-width and call (`speed_calls`, paired with the dense product of the same round, the table one
    family), and the MB each stores."""
    rows, ratios = [], []
    for (layer, s), group in csr.groupby(["layer", "sparsity"], sort=False):
        d, c = (group[group.format == f].iloc[0] for f in ("dense", "csr"))
        ratios.append([a / b for a, b in zip(d.rounds_ms, c.rounds_ms)])
        rows.append({"layer": layer, "sparsity": s, "dense ms": d.ms, "CSR ms": c.ms, "dense MB": d.MB, "CSR MB": c.MB})
    called = speed_calls(ratios, margin)
    out = pd.DataFrame(rows).assign(**{"CSR speedup": called["mean"], "± (95 %)": called["ci"],
                                       "CSR is": called["call"]})
    return out.set_index(["layer", "sparsity"])[["dense ms", "CSR ms", "CSR speedup", "± (95 %)", "CSR is",
                                                 "dense MB", "CSR MB"]]


def csr_markdown(view: pd.DataFrame) -> str:
    """Where CSR starts to pay, per layer: the lowest sparsity from which it is faster than the dense product (by
    the interval over rounds) at every higher sparsity, else up to which sparsity it is slower; and the lowest
    sparsity from which it stores fewer bytes."""
    parts = []
    for layer, rows in view.groupby(level="layer", sort=False):
        rows = rows.droplevel("layer").sort_index()
        top = rows.iloc[-1]
        at_top = f"{top['CSR speedup']:.2f}× ± {top['± (95 %)']:.2f} at {rows.index[-1]:.0%}"
        faster = [s for s in rows.index if (rows.loc[s:, "CSR is"] == "faster").all()]
        slower = [s for s in rows.index if rows.loc[s, "CSR is"] == "slower"]
        if faster:
            when = f"beats the dense product from {faster[0]:.0%} sparsity on ({at_top})"
        elif slower:
            when = (f"is slower than the dense product up to {slower[-1]:.0%} sparsity and never faster "
                    f"({at_top})")
        else:
            when = f"is not told apart from the dense product at any sparsity timed ({at_top})"
        smaller = [s for s in rows.index if (rows.loc[s:, "CSR MB"] < rows.loc[s:, "dense MB"]).all()]
        size = f"from {smaller[0]:.0%} on" if smaller else "at none of them"
        parts.append(f"`{layer}`: CSR {when}, and stores fewer bytes {size}")
    return "; ".join(parts) + "."
