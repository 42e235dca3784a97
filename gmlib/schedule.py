"""The pruning loop: prune -> fine-tune -> evaluate, once at a rate (`one_shot`) or step by step (`iterative`).

`iterative` is the flow of Hao et al.'s Figure 3: raise the rate, prune the fine-tuned network of the step before,
fine-tune, evaluate, and stop at an end condition on the evaluation (or, given `validate`, on scores of data that
only choose: the study's validation strips). Step k removes 1 - (1 - r_k) / (1 - r_{k-1}) of the filters that are
left, so about r_k of the original ones are gone after it. Each finished step is written atomically to
`checkpoint_dir`; a run that is killed resumes after the last finished step.
"""
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from .complexity import count
from .persist import load_pruned, save_pruned
from .surgery import prune
from .utils import atomic_open

__all__ = ["prune_and_score", "one_shot", "iterative", "IterativeResult", "rate_for_macs"]


def scalars(scores, suffix):
    if not isinstance(scores, dict):
        raise TypeError(f"evaluate must return a dict of scores, got {type(scores).__name__}")
    return {f"{k}{suffix}": float(v) for k, v in scores.items() if isinstance(v, (int, float))}


def _size(report):
    return {"params": report.params_after, "macs": report.macs_after,
            "params_reduction": 100.0 * (1 - report.params_after / report.params_before),
            "macs_reduction": report.macs_reduction}


def _check_callables(finetune, evaluate):
    for name, f in (("finetune", finetune), ("evaluate", evaluate)):
        if not callable(f):
            raise TypeError(f"{name} must be callable, got {type(f).__name__}")


def prune_and_score(model: nn.Module, example_inputs, rate: float, *, evaluate, recalibrate=None,
                    criterion: str = "fpgm", policy: str = "or-merge", seed: int = 0, evaluate_before: bool = True,
                    **prune_kwargs):
    """Prune a copy of `model` at `rate`; score it right away (`<name>_before`), then after `recalibrate(pruned)`
    re-estimates its norm statistics (`<name>_recal`). Returns (pruned network, PruneReport, scores, seconds).

    With `evaluate_before=False` neither score is computed (the network is still recalibrated): for a caller that
    only wants the fine-tuned result. `model` is left untouched.
    """
    start = time.perf_counter()
    pruned = copy.deepcopy(model)
    report = prune(pruned, example_inputs, rate, criterion=criterion, policy=policy, seed=seed, **prune_kwargs)
    scores = scalars(evaluate(pruned), "_before") if evaluate_before else {}
    if recalibrate is not None:
        recalibrate(pruned)
        if evaluate_before:
            scores.update(scalars(evaluate(pruned), "_recal"))
    return pruned, report, scores, time.perf_counter() - start


def one_shot(model: nn.Module, example_inputs, rate: float, *, finetune, evaluate, recalibrate=None,
             criterion: str = "fpgm", policy: str = "or-merge", seeds=(0,), evaluate_before: bool = True,
             **prune_kwargs) -> pd.DataFrame:
    """Prune a copy of `model` at `rate`, evaluate, recalibrate its norms, evaluate, fine-tune with
    `finetune(model, seed)`, evaluate again: three scores per point (pruned, recalibrated, fine-tuned).

    `model` is left untouched. For each seed: criterion "random" draws its own filters with that seed; the other
    criteria are deterministic, so the network is pruned, recalibrated and scored once and shared by the seeds,
    which differ only in their fine-tuning. `evaluate(model)` returns a dict; its numbers become columns
    `<name>_before`, `<name>_recal` (with `recalibrate(model)`, e.g. a `recalibrate_bn` partial) and `<name>_after`
    (only `_after` with `evaluate_before=False`, which saves evaluations when only the fine-tuned result is
    wanted). Returns one row per seed: criterion, policy, rate, seed, params, macs, params_reduction and
    macs_reduction (%, vs the unpruned model), the scores, and seconds (prune + recalibrate + fine-tune).
    """
    _check_callables(finetune, evaluate)
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    rows, shared = [], None
    for seed in seeds:
        if shared is None or criterion == "random":
            shared = prune_and_score(model, example_inputs, rate, evaluate=evaluate, recalibrate=recalibrate,
                                     criterion=criterion, policy=policy, seed=seed,
                                     evaluate_before=evaluate_before, **prune_kwargs)
        pruned, report, before, prune_seconds = shared
        start = time.perf_counter()
        tuned = copy.deepcopy(pruned)
        finetune(tuned, seed)
        seconds = prune_seconds + time.perf_counter() - start
        rows.append({"criterion": criterion, "policy": policy, "rate": rate, "seed": seed, **_size(report),
                     **before, **scalars(evaluate(tuned), "_after"), "seconds": seconds})
    return pd.DataFrame(rows)


def rate_for_macs(model: nn.Module, example_inputs, macs_reduction: float, *, criterion: str = "fpgm",
                  policy: str = "or-merge", tol: float = 0.25, **prune_kwargs) -> float:
    """The one-shot rate whose pruned copy of `model` removes `macs_reduction` % of its MACs (within `tol` points),
    by bisection on the rate: to compare a network with a one-shot one at equal FLOPs. `model` is left untouched."""
    if not (isinstance(macs_reduction, (int, float)) and 0 < macs_reduction < 100):
        raise ValueError(f"macs_reduction must be a percentage in (0, 100), got {macs_reduction!r}")
    lo, hi = 0.0, 0.99
    for _ in range(10):  # the bracket shrinks to 0.001 of rate
        rate = (lo + hi) / 2
        reached = prune(copy.deepcopy(model), example_inputs, rate, criterion=criterion, policy=policy,
                        **prune_kwargs).macs_reduction
        if abs(reached - macs_reduction) <= tol:
            break
        lo, hi = (rate, hi) if reached < macs_reduction else (lo, rate)
    return rate


@dataclass
class IterativeResult:
    """What `iterative` returns: the chosen network, its step (0 = unpruned) and the history, one row per step."""
    model: nn.Module
    chosen_step: int
    history: pd.DataFrame

    @property
    def chosen(self) -> pd.Series:
        return self.history.set_index("step").loc[self.chosen_step]


def _write_json(path: Path, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _check_rates(rates):
    rates = list(rates)
    if not rates or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1 for r in rates) \
            or any(b <= a for a, b in zip(rates, rates[1:])):
        raise ValueError(f"rates must be increasing numbers in (0, 1), got {rates!r}")
    return [float(r) for r in rates]


def _check_limit(value, name, upper):
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and 0 <= value < upper):
        raise ValueError(f"{name} must be None or a number in [0, {upper}), got {value!r}")


def iterative(model: nn.Module, example_inputs, rates, *, finetune, evaluate, metric: str = "dice_kaggle",
              tolerance: float | None = None, macs_target: float | None = None,
              params_target: float | None = None, criterion: str = "fpgm", policy: str = "or-merge",
              seed: int = 0, checkpoint_dir=None, reference: dict | None = None, progress: bool = True,
              recalibrate=None, validate=None, validation_reference: dict | None = None,
              **prune_kwargs) -> IterativeResult:
    """Raise the cumulative rate through `rates` (e.g. 0.1, 0.2, ...), each step: prune the network of the step
    before, evaluate, `recalibrate(model)` its norms and evaluate (when given: `_recal` columns),
    `finetune(model, step_seed)`, evaluate; stop at the first step that ends the run.

    With `validate` (e.g. scores on validation data), every step is also scored by `validate(model)` after its
    fine-tuning (columns `val_<name>`), and the end condition and the chosen step read those: `evaluate` then only
    reports. Without it they read `evaluate`'s `<metric>_after`. `validation_reference` is the unpruned network's
    `validate` result when already known.

    End conditions: with `tolerance`, a step whose `metric` after fine-tuning falls below the unpruned network's
    minus `tolerance` stops the run and the last step within the tolerance is chosen; with `macs_target` /
    `params_target` (% removed, e.g. 50), the first step that reaches it stops the run and is chosen (if it is
    within the tolerance). With neither, every rate runs and the last step is chosen. `reference` is the unpruned
    network's `evaluate` result when already known (saves one evaluation).

    With `checkpoint_dir`, the settings go to `run.json` and every finished step to `step_<k>.pt` (save_pruned,
    the history row in its metadata), each written atomically; called again with the same settings, the run
    resumes after the last finished step (finished steps are neither lost nor redone); other settings are an error.
    Fine-tuning seeds are (seed, step)-derived, so a resumed run matches an uninterrupted one. `model` is untouched.
    """
    _check_callables(finetune, evaluate)
    rates = _check_rates(rates)
    _check_limit(tolerance, "tolerance", math.inf)
    _check_limit(macs_target, "macs_target", 100)
    _check_limit(params_target, "params_target", 100)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    settings = json.loads(json.dumps({
        "rates": rates, "metric": metric, "tolerance": tolerance, "macs_target": macs_target,
        "params_target": params_target, "criterion": criterion, "policy": policy, "seed": seed,
        "arch": getattr(model, "_gmlib_arch", None), "input_shape": list(x.shape), "prune_kwargs": prune_kwargs,
        "recalibrate": recalibrate is not None, **({"validate": True} if validate is not None else {})}))
    decides = f"val_{metric}" if validate is not None else f"{metric}_after"  # the column the end condition reads
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    device = next(model.parameters()).device
    history, current, best = _resume(folder, settings, device) if folder is not None else (None, None, None)
    if history is None:  # a fresh run: step 0 is the unpruned network
        scores = reference if reference is not None else evaluate(model)
        if metric not in scores:
            raise KeyError(f"evaluate() returned no {metric!r} (it has {', '.join(scores)})")
        checked = {}
        if validate is not None:
            checked = validation_reference if validation_reference is not None else validate(model)
            if metric not in checked:
                raise KeyError(f"validate() returned no {metric!r} (it has {', '.join(checked)})")
        row = {"step": 0, "rate": 0.0, "step_rate": 0.0, "params": sum(p.numel() for p in model.parameters()),
               "macs": count(model, tuple(x.shape[1:]))[1] if x.dim() == 4 else None,
               "params_reduction": 0.0, "macs_reduction": 0.0, **scalars(scores, "_before"),
               **(scalars(scores, "_recal") if recalibrate is not None else {}),
               **scalars(scores, "_after"), **_prefixed(checked), "seconds": 0.0, "within_tolerance": True,
               "stop": False}
        history = [row]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(folder / "run.json", {"settings": settings, "step0": row})
    current = current if current is not None else copy.deepcopy(model)
    best = best if best is not None else (current if len(history) == 1 else None)
    base = history[0]
    bar = tqdm(total=len(rates), initial=len(history) - 1, desc="iterative pruning", disable=not progress)
    while not history[-1]["stop"] and len(history) <= len(rates):
        k = len(history)
        rate, previous_rate = rates[k - 1], history[-1]["rate"]
        step_rate = 1 - (1 - rate) / (1 - previous_rate)
        if best is current:  # keep the last network within the tolerance: a failing step may follow
            best = copy.deepcopy(current)
        start = time.perf_counter()
        report = prune(current, example_inputs, step_rate, criterion=criterion, policy=policy,
                       seed=seed * 1000 + k, **prune_kwargs)
        before = scalars(evaluate(current), "_before")
        if recalibrate is not None:
            recalibrate(current)
            before.update(scalars(evaluate(current), "_recal"))
        finetune(current, seed * 1000 + k)
        after = scalars(evaluate(current), "_after")
        if validate is not None:
            after.update(_prefixed(validate(current)))
        size = {"params": report.params_after, "macs": report.macs_after,
                "params_reduction": 100.0 * (1 - report.params_after / base["params"]),
                "macs_reduction": 100.0 * (1 - report.macs_after / base["macs"]) if base["macs"] else math.nan}
        within = tolerance is None or after[decides] >= base[decides] - tolerance
        reached = (macs_target is not None and size["macs_reduction"] >= macs_target) or \
                  (params_target is not None and size["params_reduction"] >= params_target)
        row = {"step": k, "rate": rate, "step_rate": step_rate, **size, **before, **after,
               "seconds": time.perf_counter() - start, "within_tolerance": bool(within),
               "stop": bool(not within or reached or k == len(rates))}
        if folder is not None:
            save_pruned(current, folder / f"step_{k:02d}.pt", metadata={"settings": settings, "row": row})
        history.append(row)
        if within:
            best = current
        bar.update(1)
        bar.set_postfix({decides: f"{after[decides]:.3f}"})
    bar.close()
    frame = pd.DataFrame(history)
    chosen_step = int(frame.loc[frame["within_tolerance"], "step"].iloc[-1])
    return IterativeResult(best if best is not None else copy.deepcopy(model), chosen_step, frame)


def _prefixed(scores):
    return {f"val_{k}": v for k, v in scalars(scores, "").items()}


def _resume(folder: Path, settings: dict, device):
    """(history rows, network after the last finished step, last network within the tolerance) from a checkpoint
    folder, or (None, None, None) when it holds no run yet."""
    try:
        run = json.loads((folder / "run.json").read_text())
    except FileNotFoundError:
        return None, None, None
    except ValueError as e:
        raise ValueError(f"{folder / 'run.json'} is not a gmlib iterative run: {e}") from e
    if run.get("settings") != settings:
        raise ValueError(f"{folder} holds an iterative run with other settings ({run.get('settings')}); "
                         f"use another checkpoint_dir or delete it")
    history, current, best = [run["step0"]], None, None
    while (path := folder / f"step_{len(history):02d}.pt").is_file():
        current, meta = load_pruned(path, with_metadata=True)
        if meta.get("settings") != settings:
            raise ValueError(f"{path} was written by a run with other settings")
        current = current.to(device)
        history.append(meta["row"])
        if meta["row"]["within_tolerance"]:
            best = current
    return history, current, best
