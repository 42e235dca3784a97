"""One call from a trained network to a pruned, recalibrated, fine-tuned one, scored at every stage.

compress(model, data, target): score the network; gmlib.allocate per-coupling-set rates that remove the target's
share of MACs, parameters or latency (filters ranked by `criterion`); gmlib.apply them; re-estimate the BatchNorm
statistics (gmlib.recalibrate_bn); fine-tune for `budget` (gmlib.tasks.finetune); score after each. The model given
is never changed: a copy is pruned. gmlib.card.write_outputs then writes the checkpoint, ONNX files and the card.
"""
import copy
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from . import tasks
from .allocation import TARGETS, allocate
from .builders import from_checkpoint, load_weights
from .complexity import count
from .folders import open_data
from .recalibrate import recalibrate_bn
from .surgery import apply
from .utils import default_device

__all__ = ["compress", "CompressReport", "Target", "parse_target", "parse_budget", "METHODS"]

METHODS = ("sensitivity", "uniform", "random")  # gmlib.allocate's


@dataclass(frozen=True)
class Target:
    """What to reach: remove `cut` of the model's `kind` ("macs", "params", "latency"), or run in `ms`."""
    kind: str
    cut: float | None = None
    ms: float | None = None


def parse_target(target) -> Target:
    """"macs:0.5", "params:0.4", "latency:0.3": remove that share; "latency:20ms": reach 20 ms (eager PyTorch on
    this machine, as gmlib.allocate times it). ValueError naming the target for anything else."""
    text = str(target).strip().lower()
    kind, _, value = text.partition(":")
    fail = ValueError(f"unknown target {target!r}: write <kind>:<share to remove>, kind one of "
                      f"{', '.join(TARGETS)} (e.g. macs:0.5), or latency:<n>ms (e.g. latency:20ms)")
    if kind not in TARGETS or not value:
        raise fail
    if kind == "latency" and value.endswith("ms"):
        try:
            ms = float(value[:-2])
        except ValueError:
            raise fail from None
        if not (ms > 0 and math.isfinite(ms)):
            raise fail
        return Target(kind, ms=ms)
    try:
        cut = float(value)
    except ValueError:
        raise fail from None
    if not 0.0 < cut < 1.0:
        raise ValueError(f"target {target!r}: the share to remove must lie strictly between 0 and 1, got {cut:g}")
    return Target(kind, cut=cut)


def parse_budget(budget, batches_per_epoch: int) -> int:
    """Fine-tuning optimiser steps: an int, "<n> steps" or "<n> epochs" (n times the training batches of one pass,
    rounded; fractions allowed). ValueError naming the budget otherwise."""
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(steps?|epochs?)\s*", str(budget).lower())
    if match is None:
        raise ValueError(f"unknown budget {budget!r}: an int (optimiser steps), '<n> steps' or '<n> epochs'")
    n = float(match.group(1))
    if match.group(2).startswith("step"):
        if n != int(n):
            raise ValueError(f"budget {budget!r}: a number of steps is a whole number")
        return int(n)
    return max(1, round(n * batches_per_epoch)) if n > 0 else 0


@dataclass
class CompressReport:
    """What `compress` did. Scores are `metric` on the validation images: before, right after pruning, after
    BatchNorm recalibration, after fine-tuning; params and MACs (at `input_size`) are counted on the networks."""
    builder: str | None
    weights: str | None        # the checkpoint file it was filled from, if any
    data: str | None           # the data folder
    task: str
    metric: str
    target: str
    kind: str
    cut: float                 # share of `kind` asked to go (latency:<n>ms: computed from the measured latency)
    reached: float             # share the allocation expected to remove
    criterion: str
    method: str
    score_before: float
    score_pruned: float
    score_recalibrated: float
    score_finetuned: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    input_size: list
    steps: int
    lr: float
    train_loss: float          # mean fine-tuning loss over the last steps (up to 10)
    kept: str                  # one line: what was cut, what was kept and why
    sets: list                 # one dict per coupling set: first member, size, kept, rate, reason, score drops
    frozen: dict               # reason -> share of conv output channels kept for it
    warnings: list
    seconds: dict              # wall time of each stage

    @property
    def macs_reduction(self) -> float:
        """Share of the MACs removed, measured."""
        return 1 - self.macs_after / self.macs_before

    @property
    def params_reduction(self) -> float:
        return 1 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "macs_reduction": self.macs_reduction,
                "params_reduction": self.params_reduction}


def compress(model, data, target="macs:0.5", *, weights=None, criterion: str = "fpgm", budget="1 epoch",
             lr: float = 3e-4, method: str = "sensitivity", loss=None, metric=None, policy: str = "or-merge",
             round_to: int = 8, recal_batches: int = 10, rates=(0.2, 0.4, 0.6, 0.8), max_rate: float = 0.9,
             latency_rounds: int = 5, seed: int = 0, device=None, verify: bool = True, progress: bool = True,
             **data_options):
    """Prune `model` to `target` and fine-tune it; returns (pruned model in eval mode, CompressReport).

    `model`: an nn.Module, or a builder string (gmlib.builders.KINDS) filled from the checkpoint `weights`.
    `data`: a gmlib.folders.Data or a folder (`data_options` go to gmlib.folders.open_data). `target`: see
    parse_target; `budget`: see parse_budget. `metric(model, loader) -> float` (higher is better) and
    `loss(outputs, targets)` are callables or built-in names (gmlib.tasks; defaults follow the task). `method`,
    `rates` (the sensitivity table's), `max_rate`, `criterion`, `policy` and `round_to` go to gmlib.allocate: the
    sensitivity table prunes each coupling set alone, recalibrates and scores it; `round_to` keeps channels in
    multiples of it (ONNX Runtime runs odd widths slower, even slower than the unpruned network). The model given
    is left as it was, whatever fails.
    """
    spec = parse_target(target)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    data = open_data(data, **data_options)
    steps = parse_budget(budget, len(data.train))
    device = torch.device(device) if device is not None else default_device()
    metric_name, score = _metric(metric, data, device)
    _, loss_fn = tasks.resolve(loss or tasks.DEFAULTS[data.task][1], tasks.LOSSES, "loss")
    work, builder = _working_copy(model, weights, data)
    work.to(device).eval()
    x = data.example_input(device)
    seconds, clock = {}, [time.perf_counter()]

    def evaluate(m):
        return score(m, data.val)

    def recalibrate(m):
        return recalibrate_bn(m, data.train, min(recal_batches, len(data.train)), device=device)

    with tqdm(total=5, desc="compress", disable=not progress) as bar:
        def stage(name, next_name):
            now = time.perf_counter()
            seconds[name], clock[0] = now - clock[0], now
            bar.update()
            bar.set_postfix_str(next_name)
        bar.set_postfix_str("score")
        params_before, macs_before = count(work, data.input_size)
        before = evaluate(work)
        cut = spec.cut if spec.cut is not None else _latency_cut(work, x, spec.ms, latency_rounds)
        stage("score", f"allocate ({method})")
        chosen = allocate(work, x, spec.kind, cut, method=method, evaluate=evaluate, recalibrate=recalibrate,
                          rates=rates, max_rate=max_rate, seed=seed, latency_rounds=latency_rounds,
                          progress=progress, criterion=criterion, policy=policy, round_to=round_to)
        stage("allocate", "prune")
        pruned = apply(work, chosen.plan, verify=verify, count_macs=False)
        after_pruning = evaluate(work)
        stage("prune", "recalibrate")
        recalibrate(work)
        recalibrated = evaluate(work)
        stage("recalibrate", f"fine-tune ({steps} steps)")
        losses = tasks.finetune(work, data.train, loss_fn, steps, lr, seed=seed, device=device, progress=progress)
        finetuned = evaluate(work)
        params_after, macs_after = count(work, data.input_size)
        stage("fine-tune", "done")
    sets = _sets(chosen)
    kept = (f"{method} allocation ranked by {criterion}: {sum(s['kept'] < s['size'] for s in sets)} of "
            f"{len(sets)} coupling sets lose channels, {params_before - params_after:,} parameters and "
            f"{macs_before - macs_after:,} MACs go"
            + (f"; {chosen.plan.frozen_reason}" if chosen.plan.frozen_reason else ""))
    report = CompressReport(
        builder=builder, weights=None if weights is None else str(weights),
        data=None if data.root is None else str(data.root), task=data.task, metric=metric_name,
        target=str(target), kind=spec.kind, cut=float(cut), reached=float(chosen.reached),
        criterion=str(criterion), method=method, score_before=float(before), score_pruned=float(after_pruning),
        score_recalibrated=float(recalibrated), score_finetuned=float(finetuned), params_before=params_before,
        params_after=params_after, macs_before=macs_before, macs_after=macs_after,
        input_size=list(data.input_size), steps=steps, lr=float(lr),
        train_loss=float(sum(losses[-10:]) / len(losses[-10:])) if losses else float("nan"), kept=kept,
        sets=sets, frozen=dict(chosen.plan.frozen), warnings=list(pruned.warnings), seconds=seconds)
    return work.eval(), report


def _metric(metric, data, device):
    """(name, metric(model, loader)) of a callable or a built-in name; a built-in of the other task is an error."""
    name, score = tasks.resolve(metric or tasks.DEFAULTS[data.task][0], tasks.METRICS, "metric")
    if callable(metric):
        return name, score
    if tasks.TASK_OF[name] != data.task:
        raise ValueError(f"metric {name!r} scores {tasks.TASK_OF[name]}, but {data.root or 'the data'} holds "
                         f"{data.task} data")
    return name, partial(score, device=device)


def _working_copy(model, weights, data):
    """(a copy of the model to prune, its builder string or None); the model given is never touched."""
    if isinstance(model, str):
        return from_checkpoint(model, weights, data.num_classes), model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a builder string, got {type(model).__name__}")
    work = copy.deepcopy(model)
    if weights is not None:
        load_weights(work, weights)
    spec = getattr(model, "_gmlib_spec", None) or getattr(model, "_gmlib_arch", None)
    return work, spec


def _latency_cut(model, x, ms, rounds) -> float:
    """The share of eager latency to remove to run in `ms`, from the model's median over `rounds` here."""
    from .latency import measure
    now = float(measure({"model": copy.deepcopy(model)}, x, ("eager",), rounds=rounds, progress=False)["ms"].iloc[0])
    if now <= ms:
        raise ValueError(f"target latency:{ms:g}ms is met already: the model runs in {now:.2f} ms here; ask for less")
    return 1 - ms / now


def _sets(chosen) -> list:
    """One dict per coupling set of the allocation: what it kept, at what rate, and (sensitivity) the score drop
    of pruning it alone at each measured rate: why it was cut as much as it was."""
    drops = {}
    if chosen.sensitivity is not None:
        for row in chosen.sensitivity.to_dict("records"):
            drop = row["drop"]
            drops.setdefault(int(row["set"]), {})[f"{row['rate']:g}"] = None if drop == float("inf") else float(drop)
    return [{"set": int(s.index), "first": s.members[0] if s.members else "", "members": len(s.members),
             "size": int(s.size), "kept": int(s.kept), "rate": float(chosen.rates.get(s.index, 0.0)),
             "reason": s.reason, "drops": drops.get(int(s.index), {})} for s in chosen.plan.sets]
