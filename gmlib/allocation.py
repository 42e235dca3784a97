"""Where to prune: per-coupling-set rates that meet a MACs, params or latency target, keeping the most of a score.

"sensitivity" (as NVIDIA ModelOpt's FastNAS): d_i(r) = score(model) - score(model with only set i pruned at r), made
monotone (running max over r) and linear between the measured rates; one threshold t gives set i the largest r with
d_i(r) + eps*r <= t, and t is bisected to meet the target (eps: equally insensitive sets are cut evenly).
"uniform" (one rate for every set) and "random" (Li et al. 2022: r_i = min(max_rate, s*u_i), u_i ~ U(0, 1), s
bisected) are its controls at the same target. Candidates are costed from per-module MACs (planning.estimate_macs).
"""
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .planning import Plan, estimate_macs, plan
from .surgery import apply
from .transaction import copy_as, guarded

__all__ = ["allocate", "sensitivity", "table_rows", "table_from_rows", "Allocation", "TARGETS", "METHODS"]

TARGETS = ("macs", "params", "latency")
METHODS = ("sensitivity", "uniform", "random")
PLAN_OPTIONS = ("criterion", "policy", "ignored_layers", "round_to", "keep_head")  # passed on to gmlib.plan
TABLE_COLUMNS = ["set", "member", "rate", "score", "drop", "monotone_drop"]  # a sensitivity table's
EPS = 1e-6  # score units per unit of rate: orders the sets a threshold cannot tell apart


@dataclass
class Allocation:
    """The rates `allocate` chose, the plan they make, and how close it came to the target."""
    method: str
    target: str                # "macs", "params" or "latency"
    cut: float                 # share of the target quantity asked to go
    reached: float             # share the plan removes (latency: measured against the original side by side)
    rates: dict                # coupling-set index -> rate
    plan: Plan
    sensitivity: pd.DataFrame | None = None  # one row per (set, rate): score, drop, monotone drop
    threshold: float | None = None
    baseline_score: float | None = None

    def rate(self, entry) -> float:
        """The rate of a CouplingSet: pass `rate=allocation.rate` to gmlib.plan / gmlib.prune."""
        return self.rates.get(entry.index, 0.0)

    def set_rates(self) -> pd.DataFrame:
        """One row per coupling set: index, first member, size, channels kept, rate (what a bar plot needs)."""
        return pd.DataFrame([{"set": s.index, "member": s.members[0], "size": s.size, "kept": s.kept,
                              "rate": self.rates.get(s.index, 0.0)} for s in self.plan.sets])


@guarded  # the scores run forwards on copies whose hooks may share state with the model's: put back
def allocate(model: nn.Module, example_inputs, target: str = "macs", cut: float = 0.5, *, method: str = "sensitivity",
             evaluate=None, recalibrate=None, rates=(0.2, 0.4, 0.6, 0.8), max_rate: float = 0.9, seed: int = 0,
             cache=None, table: pd.DataFrame | None = None, tol: float = 0.005, latency_rounds: int = 5,
             progress: bool = True, **plan_options) -> Allocation:
    """Per-set rates that remove `cut` of the model's `target` ("macs", "params" or "latency"), by `method`.

    `evaluate(model) -> float` (higher is better) scores each pruned copy of the sensitivity table, after
    `recalibrate(model)` when given (e.g. BN re-estimation); `rates` are the table's rates, `max_rate` caps every
    set. `cache` (a JSON path) keeps the table's scores as they are measured: a rerun resumes, and a cache made for
    another model or other options is refused; `table` (from `sensitivity`, e.g. a stored one) replaces measuring
    it, and then `evaluate` is not needed. `plan_options` (criterion, policy, ignored_layers, round_to,
    keep_head) go to gmlib.plan. The model is never changed; apply the result with gmlib.apply(model,
    allocation.plan). The plan removes at least `cut - tol` of the target, as close to `cut` as bisection gets.
    """
    _check(model, target, cut, method, recalibrate, rates, max_rate, tol, plan_options)
    if method == "sensitivity" and table is None and not callable(evaluate):
        raise TypeError(f"method 'sensitivity' needs evaluate(model) -> score (or a table), got {evaluate!r}")
    base = plan(model, example_inputs, 0.0, sizes_after=False, count_macs=target == "macs", **plan_options)
    if target == "macs" and not base.module_macs:
        raise ValueError("target 'macs' needs a (N, C, H, W) tensor input to count MACs on")
    open_sets = [s.index for s in base.sets if not s.reason]
    if not open_sets:
        raise ValueError("no coupling set of this model can be pruned: nothing to allocate")
    cost = _Cost(model, example_inputs, target, base, max_rate, latency_rounds, plan_options)

    most = cost({i: max_rate for i in open_sets})
    if most[0] < cut - tol:
        raise ValueError(f"target {target} cut {cut:g} is out of reach: every prunable set at max_rate {max_rate:g} "
                         f"removes {most[0]:.3f} of the {target}")
    threshold = score0 = None
    if method != "sensitivity":
        table = None
    if method == "uniform":
        def rates_at(v):
            return {i: v for i in open_sets}
        hi = max_rate
    elif method == "random":
        u = torch.rand(len(open_sets), generator=torch.Generator().manual_seed(seed)).clamp_min(1e-3).tolist()

        def rates_at(v):
            return {i: min(max_rate, v * ui) for i, ui in zip(open_sets, u)}
        hi = max_rate / min(u)
    else:
        if table is None:
            table = sensitivity(model, example_inputs, evaluate, recalibrate=recalibrate, rates=rates,
                                max_rate=max_rate, cache=cache, progress=progress, **plan_options)
        if set(table["set"]) != set(open_sets):
            raise ValueError(f"table has coupling sets {sorted(set(table['set']))}, this model's prunable ones are "
                             f"{open_sets}: it was measured on another network or with other options")
        score0 = table.attrs.get("baseline_score")
        curves = {i: [(0.0, 0.0)] + [(r, d) for r, d in zip(g["rate"], g["monotone_drop"])]
                  for i, g in table.groupby("set")}

        def rates_at(v):
            return {i: _largest_rate(curves[i], v, max_rate) for i in open_sets}
        finite = [d for d in table["monotone_drop"] if d != float("inf")]
        hi = max(finite, default=0.0) + 2 * EPS * max_rate + 1e-12
    value, (reached, chosen) = _bisect(lambda v: cost(rates_at(v)), hi, cut, tol)
    if reached < cut - tol:  # the table's rates that would empty a set stop short of max_rate
        raise ValueError(f"target {target} cut {cut:g} is out of reach by {method}: at most {reached:.3f}")
    if method == "sensitivity":
        threshold = value
    final = rates_at(value)
    return Allocation(method, target, float(cut), reached, final, chosen, table, threshold, score0)


class _Cost:
    """rates -> (share of the target removed, the plan), without pruning for MACs and params."""

    def __init__(self, model, example_inputs, target, base, max_rate, rounds, plan_options):
        self.model, self.inputs, self.target, self.base = model, example_inputs, target, base
        self.max_rate, self.rounds, self.options = max_rate, rounds, plan_options

    def __call__(self, rates):
        p = plan(self.model, self.inputs, lambda entry: rates.get(entry.index, 0.0), max_rate=self.max_rate,
                 count_macs=False, sizes_after=self.target == "params", **self.options)
        if self.target == "macs":
            p.module_macs, p.macs_before = self.base.module_macs, self.base.module_macs[""]
            return 1 - estimate_macs(p) / p.macs_before, p
        if self.target == "params":
            return 1 - p.params_after / p.params_before, p
        from .latency import measure  # deployment tools load only for a latency target
        twin = _pruned_copy(self.model, p)
        x = self.inputs if isinstance(self.inputs, torch.Tensor) else self.inputs[0]
        ms = measure({"original": copy_as(self.model), "candidate": twin}, x, ("eager",),
                     rounds=self.rounds, progress=False).set_index("variant")["ms"]
        return 1 - ms["candidate"] / ms["original"], p


def _bisect(cost_at, hi, cut, tol, steps=40):
    """(value, cost) with the smallest value in [0, hi] whose cost removes at least `cut - tol`, found by
    bisection on a cost that grows with the value; stops once within tol / 2 of `cut`."""
    lo, best = 0.0, (hi, cost_at(hi))
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = cost_at(mid)
        if result[0] >= cut - tol:
            hi, best = mid, (mid, result)
            if result[0] - cut <= tol / 2:
                break
        else:
            lo = mid
    return best


def _largest_rate(curve, threshold, max_rate):
    """Largest r in [0, max_rate] with drop(r) + EPS * r <= threshold on the piecewise-linear monotone curve."""
    best = 0.0
    for (r0, d0), (r1, d1) in zip(curve, curve[1:]):
        f0, f1 = d0 + EPS * r0, d1 + EPS * r1
        if f1 <= threshold:
            best = r1
        elif f0 <= threshold < f1:
            return r0 + (r1 - r0) * (threshold - f0) / (f1 - f0) if f1 != float("inf") else r0
        else:
            return best
    last, drop = curve[-1]
    if last < max_rate and drop != float("inf"):  # past the last measured rate: only the tie-break grows
        return min(max_rate, max(best, (threshold - drop) / EPS))
    return best


@guarded
def sensitivity(model: nn.Module, example_inputs, evaluate, *, recalibrate=None, rates=(0.2, 0.4, 0.6, 0.8),
                max_rate: float = 0.9, cache=None, progress: bool = True, **plan_options) -> pd.DataFrame:
    """One row per (prunable coupling set i, rate r): score of the model with only set i pruned at r (after
    `recalibrate`), drop = score(model) - score, and its running max over r (monotone_drop); attrs["baseline_score"]
    is score(model). Arguments as for `allocate`; `cache` resumes a killed run. A rate that would empty a set has
    score None and an infinite drop."""
    _check(model, "macs", 0.5, "sensitivity", recalibrate, rates, max_rate, 0.5, plan_options)
    if not callable(evaluate):
        raise TypeError(f"sensitivity needs evaluate(model) -> score, got {evaluate!r}")
    rates = sorted({min(float(r), max_rate) for r in rates})
    base = plan(model, example_inputs, 0.0, sizes_after=False, count_macs=False, **plan_options)
    open_sets = [s.index for s in base.sets if not s.reason]
    path = None if cache is None else Path(cache)
    signature = _signature(model, example_inputs, rates, max_rate, plan_options)
    stored = _read_cache(path, signature) if path else {}
    if "baseline" not in stored:
        stored["baseline"] = _score(copy_as(model), evaluate, None)
        _write_cache(path, signature, stored)
    todo = [(i, r) for i in open_sets for r in rates if f"{i}:{r!r}" not in stored]
    for i, r in tqdm(todo, desc="sensitivity", disable=not progress or not todo):
        try:
            p = plan(model, example_inputs, lambda entry: r if entry.index == i else 0.0, count_macs=False,
                     sizes_after=False, **plan_options)
        except ValueError:  # the rate would empty the set: never allowed
            stored[f"{i}:{r!r}"] = None
        else:
            twin = _pruned_copy(model, p)
            stored[f"{i}:{r!r}"] = _score(twin, evaluate, recalibrate)
        _write_cache(path, signature, stored)
    score0, rows = stored["baseline"], []
    members = {s.index: s.members[0] for s in base.sets}
    for i in open_sets:
        running = 0.0
        for r in rates:
            score = stored[f"{i}:{r!r}"]
            drop = float("inf") if score is None else score0 - score
            running = max(running, drop)
            rows.append({"set": i, "member": members[i], "rate": r, "score": score, "drop": drop,
                         "monotone_drop": running})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table.attrs["baseline_score"] = score0
    return table


def table_rows(table: pd.DataFrame) -> list:
    """A sensitivity table as JSON rows (a store record's "rows"): plain values, a rate that empties its set (an
    infinite drop) as None, since JSON has no infinity."""
    return [{k: (None if v == float("inf") else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in table.to_dict("records")]


def table_from_rows(rows: list, baseline_score: float) -> pd.DataFrame:
    """The inverse of `table_rows`: the table in TABLE_COLUMNS order, None drops back to infinity, the baseline's
    score in attrs."""
    table = pd.DataFrame(rows)[TABLE_COLUMNS]  # a store sorts a row's keys
    for column in ("drop", "monotone_drop"):
        table[column] = table[column].astype(float).fillna(float("inf"))
    table.attrs["baseline_score"] = baseline_score
    return table


def _pruned_copy(model, p):
    """A pruned copy, quietly: its coverage warnings are about a candidate, not about the user's model."""
    twin = copy_as(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        apply(twin, p, verify=False, count_macs=False)
    return twin


def _score(model, evaluate, recalibrate):
    if recalibrate is not None:
        recalibrate(model)
    value = evaluate(model)
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"evaluate must return a number (higher is better), got {type(value).__name__} {value!r}")
    return float(value)


def _signature(model, example_inputs, rates, max_rate, plan_options) -> str:
    """What the sensitivity scores depend on, besides evaluate: the weights, the input shapes, the options."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    options = {k: (v if isinstance(v, (str, int, float, bool, list, tuple)) else repr(v)) for k, v in plan_options.items()}
    h.update(json.dumps({"inputs": [tuple(getattr(x, "shape", ())) for x in inputs], "rates": rates,
                         "max_rate": max_rate, "options": options}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path, signature: str) -> dict:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("signature") != signature:
        raise ValueError(f"sensitivity cache {str(path)!r} was made for another model, input shape or options "
                         f"(signature {data.get('signature')!r}, these are {signature!r}): pass another cache path")
    return dict(data["scores"])


def _write_cache(path, signature, scores) -> None:
    """Atomically: a killed run leaves the previous cache, never half a file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"signature": signature, "scores": scores}, f, indent=1)
    os.replace(tmp, path)


def _check(model, target, cut, method, recalibrate, rates, max_rate, tol, plan_options):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    for value, what in ((cut, "cut"), (max_rate, "max_rate"), (tol, "tol")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{what} must be a number in (0, 1), got {value!r}")
    if recalibrate is not None and not callable(recalibrate):
        raise TypeError(f"recalibrate must be a callable(model) or None, got {recalibrate!r}")
    if not rates or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1 for r in rates):
        raise ValueError(f"rates must be numbers in (0, 1), got {rates!r}")
    unknown = sorted(set(plan_options) - set(PLAN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; allocate passes on {', '.join(PLAN_OPTIONS)}")
