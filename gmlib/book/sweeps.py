"""Which points the study computes: chapter 07's design as named grids of `Study.point` arguments, built in one
place so that the chapter, a parallel recompute (`scripts/compute_grid.py`) and the conclusions ask for the same
records, and the grids split into work for several processes with no record computed twice.

A point is a dict of `Study.point` arguments (criterion, rate, policy, seed, steps, lr) plus `baseline_seed` (which
trained baseline it prunes) and `kind` ("pruned": prune, recalibrate, fine-tune; "scratch": the same architecture
from fresh weights, trained for the same budget). Budgets are in epochs of the baseline's training.
"""
import ast
import inspect
from collections import defaultdict

import pandas as pd
from tqdm.auto import tqdm

__all__ = ["figure5_design", "defaults_of", "design_of_notebook", "seeds_of", "work_units", "collect", "validation"]

GRIDS = ("main", "policies", "budgets", "scratch", "lrs", "baseline_seeds")


def seeds_of(seeds, criterion):
    """The seeds of `criterion`: `seeds` is a list of ints, or {criterion: list} with "*" as the default."""
    if isinstance(seeds, dict):
        seeds = seeds.get(criterion, seeds.get("*", []))
    if isinstance(seeds, int) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds of {criterion!r} must be a list of non-negative ints, got {seeds!r}")
    return list(seeds)


def _point(criterion, rate, seed, steps, *, policy, lr=None, baseline_seed, kind="pruned"):
    return {"kind": kind, "baseline_seed": int(baseline_seed), "criterion": criterion, "rate": float(rate),
            "policy": policy, "seed": int(seed), "steps": int(steps), "lr": None if lr is None else float(lr)}


def figure5_design(epoch_steps, *, rates, criteria, seeds, budget=0.25, policy="or-merge", baseline_seed=0,
                   coupled_criteria=(), coupled_rates=(), budgets=(), budget_rates=(), budget_criteria=(),
                   budget_seeds=(), lrs=(), lr_rate=None, lr_criteria=(), lr_seeds=(), baseline_seeds=(),
                   baseline_seed_rates=(), baseline_seed_criteria=(), postprocess_criteria=(), postprocess_rates=(),
                   postprocess_seeds=()) -> dict:
    """Chapter 07's grids, each a list of points (see the module docstring); `epoch_steps(epochs)` turns a budget
    into optimiser steps (`Study.epoch_steps`).

    - main: every criterion at every rate with its seeds (`seeds_of`), `budget` epochs of fine-tuning, `policy`;
    - policies: "coupled" for `coupled_criteria` at `coupled_rates` (the other policy than `policy`);
    - budgets / scratch: `budget_criteria` at `budget_rates` for each of `budgets`, and the from-scratch control
      of each (rate, budget): the architecture FPGM leaves, fresh weights, the same steps;
    - lrs: `lr_criteria` at `lr_rate` for each fine-tuning learning rate of `lrs`;
    - baseline_seeds: `baseline_seed_criteria` at `baseline_seed_rates` on each other trained baseline;
    - postprocess: `postprocess_criteria` at `postprocess_rates` with `postprocess_seeds`, the main budget: points
      whose post-processing is re-tuned on validation (`validation`). Not one of GRIDS: its points are the main
      grid's, read again for their validation records.
    """
    main_steps = epoch_steps(budget)
    other = "coupled" if policy != "coupled" else "or-merge"
    common = dict(baseline_seed=baseline_seed)
    grids = {
        "main": [_point(c, r, s, main_steps, policy=policy, **common)
                 for r in rates for c in criteria for s in seeds_of(seeds, c)],
        "policies": [_point(c, r, s, main_steps, policy=other, **common)
                     for r in coupled_rates for c in coupled_criteria for s in seeds_of(seeds, c)],
        "budgets": [_point(c, r, s, epoch_steps(b), policy=policy, **common)
                    for b in budgets for r in budget_rates for c in budget_criteria
                    for s in seeds_of(budget_seeds, c)],
        "scratch": [_point("fpgm", r, s, epoch_steps(b), policy=policy, kind="scratch", **common)
                    for b in budgets for r in budget_rates for s in seeds_of(budget_seeds, "scratch")],
        "lrs": [_point(c, lr_rate, s, main_steps, policy=policy, lr=lr, **common)
                for lr in lrs for c in lr_criteria for s in seeds_of(lr_seeds, c)],
        "baseline_seeds": [_point(c, r, s, main_steps, policy=policy, baseline_seed=b)
                           for b in baseline_seeds for r in baseline_seed_rates for c in baseline_seed_criteria
                           for s in seeds_of(seeds, c)],
        "postprocess": [_point(c, r, s, main_steps, policy=policy, **common)
                        for c in postprocess_criteria for r in postprocess_rates for s in postprocess_seeds],
    }
    if (lrs or lr_criteria) and lr_rate is None:
        raise ValueError("lrs and lr_criteria need lr_rate, the one rate the learning-rate sweep runs at")
    return grids


def defaults_of(path) -> dict:
    """A chapter's parameters as its parameters cell sets them ({UPPER_CASE name: value}, read as papermill reads
    them): how one chapter asks for the records another made."""
    import papermill
    return {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(path)).items()}


def design_of_notebook(path, epoch_steps, **overrides) -> dict:
    """`figure5_design` from a chapter's parameters cell (its defaults, as papermill reads them, then
    `overrides`, both by UPPER_CASE name; SEED is the baseline seed): the grids the chapter will ask for."""
    values = {**defaults_of(path), **overrides}
    wanted = set(inspect.signature(figure5_design).parameters) - {"epoch_steps", "baseline_seed"}
    kwargs = {name.lower(): v for name, v in values.items() if name.lower() in wanted}
    return figure5_design(epoch_steps, baseline_seed=values.get("SEED", 0), **kwargs)


def work_units(design: dict) -> list:
    """Every distinct point of `design`, grouped so that the points sharing a stored pruned record (a
    deterministic criterion's seeds, budgets and learning rates at one rate) form one unit: units can go to
    different processes without two of them computing the same record."""
    units, seen = defaultdict(list), set()
    for name in GRIDS:
        for p in design.get(name, []):
            key = tuple(sorted(p.items(), key=lambda kv: kv[0]))
            if key in seen:
                continue
            seen.add(key)
            shared = p["seed"] if p["criterion"] == "random" else 0
            units[(p["kind"], p["baseline_seed"], p["criterion"], p["rate"], p["policy"], shared)].append(p)
    return list(units.values())


def collect(study, design: dict, grids=GRIDS, *, studies=None) -> dict:
    """The stored (or computed) rows of each grid of `design`, a DataFrame per grid name, with a progress bar over
    the points still to compute. Points on another baseline seed go to `studies[seed]`, made with
    `study.reseeded(seed)` when absent."""
    studies = {study.config.seed: study, **(studies or {})}
    todo = []
    for name in grids:
        for p in design.get(name, []):
            if p["baseline_seed"] not in studies:
                studies[p["baseline_seed"]] = study.reseeded(p["baseline_seed"])
            todo.append((name, p, studies[p["baseline_seed"]]))
    missing = sum(not owner.is_stored(p) for _, p, owner in todo)
    bar = tqdm(total=missing, desc="points to compute", mininterval=10, disable=not study.progress or not missing)
    rows = defaultdict(list)
    for name, p, owner in todo:
        stored = missing and owner.is_stored(p)
        args = {k: v for k, v in p.items() if k not in ("kind", "baseline_seed")}
        row = owner.scratch_point(**args) if p["kind"] == "scratch" else owner.point(**args)
        rows[name].append({"baseline_seed": p["baseline_seed"], **row})
        bar.update(bool(missing) and not stored)
    bar.close()
    return {name: pd.DataFrame(rows[name]) for name in grids}


def validation(study, points) -> pd.DataFrame:
    """`Study.finetuned_validation` of each point (pruned kind, on `study`'s baseline), one row per point: its
    arguments, its test scores as stored (`<score>_after`), and from its validation record the re-run network's
    test scores (`rerun_<score>`; `same_network`: equal to the stored ones bit for bit), validation scores
    (`val_<score>`, what a choice among the points reads) and test scores under the post-processing re-tuned on
    validation for it (`retuned_<score>`). Missing records are computed (and stored) in turn."""
    rows = []
    for p in points:
        if p.get("kind", "pruned") != "pruned" or p.get("baseline_seed", study.config.seed) != study.config.seed:
            raise ValueError(f"validation scores are for pruned points on {study.name}'s baseline, got {p}")
        args = {k: p.get(k, d) for k, d in (("criterion", None), ("rate", None), ("policy", "or-merge"),
                                            ("seed", 0), ("steps", None), ("lr", None))}
        ft = study.finetune_config
        steps = ft.steps if args["steps"] is None else int(args["steps"])
        lr = ft.lr if args["lr"] is None else float(args["lr"])
        out = study.finetuned_validation(**args)
        stored = study.finetuned_point(**args)
        rows.append({**args, "steps": steps, "lr": lr, **{k: v for k, v in stored.items() if k.endswith("_after")},
                     **{f"rerun_{k.removesuffix('_after')}": v for k, v in out["test"].items()},
                     **{f"val_{k.removesuffix('_after')}": v for k, v in out["val"].items()},
                     **{f"retuned_{k.removesuffix('_after')}": v for k, v in out["retuned"]["test"].items()},
                     "same_network": out["same_network"]})
    return pd.DataFrame(rows)
