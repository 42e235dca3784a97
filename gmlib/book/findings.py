"""The study's verdicts, computed from its stored points with the one rule of `gmlib.verdicts` (equivalence margin,
Holm over a family, "not separated" otherwise): FPGM against each other criterion at equal MACs (primary) and at
the same nominal rate (secondary), FPGM's loss against the nearly-lossless bar, inherited weights against fresh
ones, and the allocations of chapter 12. Interval: mean ± t(0.975, n-1) s / sqrt(n) over fine-tuning seeds.

A point is a row of `Study.points`: criterion, policy, rate, seed, steps, lr, sizes, and `<score>_<stage>` columns
(stage before / recal / after: right after pruning, after BatchNorm recalibration, after fine-tuning). Every
comparison is computed once, in one family, by `answers`; every table and paragraph is a view of that.
"""
import math

import numpy as np
import pandas as pd

from ..verdicts import MARGINS, CALLS, NAMES, decide, against_bar, summarise, tally_text

__all__ = ["interval", "figure5_table", "margin_of", "paired_by", "pooled", "paired", "at_equal_macs", "losses",
           "inherited", "answers", "loss_markdown", "criteria_markdown", "budget_markdown", "budget_name",
           "allocation_calls", "allocation_markdown", "baseline_seeds", "baseline_seed_markdown", "calls_in_words",
           "conclusions", "int8_answer", "lr_choice", "lr_markdown", "postprocess_effect", "postprocess_markdown",
           "validation_markdown",
           "STAGES", "MACS_TARGETS"]

STAGES = ("before", "recal", "after")
# shares of the baseline's MACs (%) at which the criteria are compared, each criterion's curve interpolated there
MACS_TARGETS = (20, 30, 40, 50, 60, 70, 80)
KEYS = ["baseline_seed", "policy", "steps", "lr"]


def interval(values) -> tuple:
    """(mean, half-width of the 95 % t interval, n) of `values`; half-width NaN for a single value."""
    out = summarise(values)
    return out["mean"], out["ci"], out["n"]


def margin_of(score: str) -> float:
    """The practical margin of a score column (`gmlib.verdicts.MARGINS`), e.g. dice_positive_after -> 0.01."""
    return next(m for key, m in MARGINS.items() if score.startswith(key))


def figure5_table(points: pd.DataFrame, scores=("dice_kaggle", "dice_positive"),
                  by=("criterion", "policy", "steps", "rate")) -> pd.DataFrame:
    """Per group of `by` (default: criterion, policy, steps, rate): seeds, MACs removed, and for every score and
    stage its mean and the half-width of its 95 % interval (`<score>_<stage>` and `<score>_<stage>_ci`)."""
    keys = list(by)
    rows = []
    for key, group in points.groupby(keys, sort=True):
        row = dict(zip(keys, key), seeds=len(group))
        if "macs_reduction" in group:
            row["macs_reduction"] = float(group["macs_reduction"].mean())
        for score in scores:
            for stage in STAGES:
                col = f"{score}_{stage}"
                if col in group:
                    row[col], row[f"{col}_ci"], _ = interval(group[col])
        rows.append(row)
    return pd.DataFrame(rows).set_index(keys)


def _called(rows: list, score: str, label: str, margin=None) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    frame = decide(frame.rename(columns={"difference": "mean", "pairs": "n"}),
                   margin_of(score) if margin is None else margin)
    return frame.rename(columns={"mean": "difference", "n": "pairs", "call": label})


def paired_by(points: pd.DataFrame, column: str, reference, within, score: str = "dice_positive_after",
              margin: float | None = None) -> pd.DataFrame:
    """`reference` minus each other value of `column`, paired by fine-tuning seed (the same crops in the same order),
    per group of `within`: mean difference, its 95 % interval, p and Holm's p over all the rows (one family), and
    the rule's call (`gmlib.verdicts`) in the column "<reference> is"."""
    keys = list(within)
    ref = points[points[column] == reference].set_index(keys + ["seed"])[score]
    rows = []
    for other in sorted(set(points[column]) - {reference}):
        theirs = points[points[column] == other].set_index(keys + ["seed"])[score]
        both = pd.concat([ref.rename("ref"), theirs.rename("other")], axis=1, join="inner")
        for key, group in both.groupby(level=keys):
            key = key if isinstance(key, tuple) else (key,)
            out = summarise(group["ref"] - group["other"])
            rows.append({**dict(zip(keys, key)), "other": other, "pairs": out["n"], "difference": out["mean"],
                         "ci": out["ci"], "p": out["p"]})
    return _called(rows, score, f"{reference} is", margin)


def pooled(frames: dict, grids=("main", "budgets", "policies", "lrs", "baseline_seeds")) -> pd.DataFrame:
    """Every pruned-and-fine-tuned point of chapter 07's grids once: a point that two grids ask for (the budget
    sweep's main-budget points are the main grid's) enters once, so each comparison has one set of seeds."""
    parts = [frames[g].assign(baseline_seed=frames[g].get("baseline_seed", 0)) for g in grids
             if g in frames and len(frames[g])]
    both = pd.concat(parts, ignore_index=True)
    return both.drop_duplicates(KEYS + ["criterion", "rate", "seed"]).reset_index(drop=True)


def paired(points: pd.DataFrame, score: str = "dice_positive_after", reference: str = "fpgm") -> pd.DataFrame:
    """`reference` minus each other criterion at the same nominal rate, paired by seed, per (baseline seed, policy,
    steps, lr, rate): one family (see `paired_by`), the call in the column "fpgm is"."""
    points = points.assign(baseline_seed=points.get("baseline_seed", 0))
    out = paired_by(points, "criterion", reference, KEYS + ["rate"], score)
    return out.rename(columns={f"{reference} is": "fpgm is"})


def at_equal_macs(points: pd.DataFrame, score: str = "dice_positive_after", reference: str = "fpgm",
                  targets=MACS_TARGETS) -> pd.DataFrame:
    """`reference` minus each other criterion at the same share of MACs removed: each criterion's score, seed by
    seed, linearly interpolated in MACs removed between its stored rates, at every target (%) that lies inside
    every criterion's stored range in that group (baseline seed, policy, steps, lr); then paired by seed as in
    `paired`, all rows one family. Columns as `paired`, with "macs" (the target) for "rate"."""
    points = points.assign(baseline_seed=points.get("baseline_seed", 0))
    rows = []
    for key, group in points.groupby(KEYS):
        curves = {}
        for (criterion, seed), g in group.groupby(["criterion", "seed"]):
            g = g.sort_values("macs_reduction")
            if len(g) >= 2:
                curves[(criterion, seed)] = (g["macs_reduction"].to_numpy(), g[score].to_numpy())
        if not any(c == reference for c, _ in curves):
            continue
        low = max(x[0] for x, _ in curves.values())
        high = min(x[-1] for x, _ in curves.values())
        for target in [t for t in targets if low <= t <= high]:
            at = {cs: float(np.interp(target, x, y)) for cs, (x, y) in curves.items()}
            for other in sorted({c for c, _ in curves} - {reference}):
                diffs = [at[(reference, s)] - at[(other, s)] for c, s in at if c == other and (reference, s) in at]
                out = summarise(diffs)
                rows.append({**dict(zip(KEYS, key)), "macs": target, "other": other, "pairs": out["n"],
                             "difference": out["mean"], "ci": out["ci"], "p": out["p"]})
    return _called(rows, score, "fpgm is")


def losses(points: pd.DataFrame, baseline: dict, *, lossless: float, reference: str = "fpgm",
           score: str = "dice_positive") -> pd.DataFrame:
    """`reference`'s loss (baseline minus fine-tuned) per (steps, rate) with its 95 % interval over seeds, called
    against the bar `lossless` by the rule (`verdicts.against_bar`, all rows one family): "within the bar",
    "beyond the bar" or "undecided"."""
    own = points[points.criterion == reference]
    rows = [{"steps": int(steps), "rate": float(rate), **summarise(baseline[score] - group[f"{score}_after"],
                                                                   center=lossless)}
            for (steps, rate), group in own.groupby(["steps", "rate"])]
    frame = against_bar(pd.DataFrame(rows), lossless)
    return frame.rename(columns={"mean": "loss", "n": "seeds"})


def inherited(pruned: pd.DataFrame, scratch: pd.DataFrame, score: str = "dice_positive_after",
              criterion: str = "fpgm") -> pd.DataFrame:
    """What inherited weights are worth: `criterion`'s pruned-and-fine-tuned score minus the from-scratch control
    of the same architecture and budget, paired by seed, per (rate, steps), all rows one family: mean, 95 %
    interval, and the rule's call in words ("worth something" / "worth less" / "equivalent" / "not separated")."""
    keys = ["rate", "steps", "seed"]
    own = pruned[pruned.criterion == criterion].set_index(keys)[score].rename("pruned")
    both = pd.concat([own, scratch.set_index(keys)[score].rename("scratch")], axis=1, join="inner")
    rows = []
    for (rate, steps), group in both.groupby(level=["rate", "steps"]):
        out = summarise(group["pruned"] - group["scratch"])
        rows.append({"rate": rate, "steps": steps, "pairs": out["n"], "pruned": float(group["pruned"].mean()),
                     "scratch": float(group["scratch"].mean()), "difference": out["mean"], "ci": out["ci"],
                     "p": out["p"]})
    words = {"ahead": "worth something", "behind": "worth less"}
    out = _called(rows, score, "inherited weights are")
    return out.assign(**{"inherited weights are": out["inherited weights are"].replace(words)}) if len(out) else out


def answers(frames: dict, baseline: dict, *, lossless: float, main_steps: int, reference: str = "fpgm",
            score: str = "dice_positive", baseline_seed: int = 0) -> dict:
    """Chapter 07's questions put to its grids (`sweeps.collect`), each comparison computed once:

    - points: `pooled` grids; loss: `losses` of the main policy and learning rate on `baseline_seed`, every budget;
    - macs: `at_equal_macs` over every group (the primary comparison); pairs: `paired`, the same at nominal rates;
    - worth: `inherited` (the from-scratch controls), when the grid has them; main_steps: the main budget.
    """
    after = f"{score}_after"
    points = pooled(frames)
    main = frames["main"]
    home = points[(points.baseline_seed == baseline_seed) & (points.policy == main.policy.iloc[0])
                  & (points.lr == main.lr.iloc[0])]
    scratch = frames.get("scratch", pd.DataFrame())
    return {"points": points, "main_steps": int(main_steps), "lossless": lossless,
            "loss": losses(home, baseline, lossless=lossless, reference=reference, score=score),
            "macs": at_equal_macs(points, after, reference), "pairs": paired(points, after, reference),
            "worth": inherited(home, scratch, after, reference) if len(scratch) else pd.DataFrame(),
            "home": (baseline_seed, main.policy.iloc[0], main.lr.iloc[0])}


def _home(found: dict, frame: pd.DataFrame) -> pd.DataFrame:
    seed, policy, lr = found["home"]
    return frame[(frame.baseline_seed == seed) & (frame.policy == policy) & (frame.lr == lr)]


def budget_name(steps: int, steps_per_epoch: float | None) -> str:
    """"56 steps (0.25 epoch)": a fine-tuning budget as steps and, given the epoch's length, epochs."""
    if not steps_per_epoch:
        return f"{steps} steps"
    epochs = steps / steps_per_epoch
    return f"{steps} steps ({epochs:.2g} epoch{'' if epochs <= 1 else 's'})"


def _rates(rates) -> str:
    return ", ".join(f"{r:.0%}" for r in sorted(rates))


def _rates(rates) -> str:
    return ", ".join(f"{r:.0%}" for r in sorted(rates))


def _pm(mean, ci) -> str:
    return f"{mean:+.3f} ± {ci:.3f}" if not math.isnan(ci) else f"{mean:+.3f} (one seed)"


def calls_in_words(frame: pd.DataFrame, column: str, at) -> str:
    """"ahead l1 at −50 % (+0.019 ± 0.006), ...; behind ..." for the rows of `frame` whose call (in `column`) is
    ahead / behind / equivalent, grouped by call; `at(row)` names a row. "" when every row is not separated."""
    parts = []
    for call in CALLS[:3]:
        rows = frame[frame[column] == call]
        if len(rows):
            parts.append(f"{call} " + ", ".join(f"{at(r)} ({_pm(r['difference'], r['ci'])})"
                                                for r in rows.to_dict("records")))
    return "; ".join(parts)


def loss_markdown(found: dict, *, steps_per_epoch: float | None = None, score_name: str = "positive-pair Dice"
                  ) -> str:
    """One paragraph per fine-tuning budget: FPGM's loss at each rate with its interval and its call against the
    bar (`losses`, one family over every budget and rate)."""
    loss, lines = found["loss"], []
    for steps, group in loss.groupby("steps"):
        fmt = ", ".join(f"{r['rate']:.0%}: {r['loss']:+.3f} ± {r['ci']:.3f}" for r in group.to_dict("records"))
        by_call = [f"{call} at {_rates(group[group.call == call].rate)}"
                   for call in ("within the bar", "undecided", "beyond the bar") if (group.call == call).any()]
        lines.append(f"**Is 10-30 % nearly lossless, and does more than 40 % degrade?** After "
                     f"{budget_name(steps, steps_per_epoch)} of fine-tuning, FPGM loses {fmt} {score_name} (mean ± "
                     f"95 % interval over seeds). Against the bar of {found['lossless']} (Holm over the "
                     f"{len(loss)} budget × rate cells) the loss is " + "; ".join(by_call) + ".")
    return "\n\n".join(lines)


def criteria_markdown(found: dict, *, steps_per_epoch: float | None = None) -> str:
    """FPGM against the other criteria at the main budget: at equal MACs (the primary comparison, every call
    named) and at the same nominal rate (secondary, the tally)."""
    steps = found["main_steps"]
    macs = _home(found, found["macs"]).query("steps == @steps")
    pairs = _home(found, found["pairs"]).query("steps == @steps")
    named = calls_in_words(macs, "fpgm is", lambda r: f"{r['other']} at −{r['macs']:.0f} %")
    return (f"**Does FPGM beat the other criteria?** At equal MACs (each criterion's fine-tuned score interpolated "
            f"in MACs removed between its stored rates, seed by seed) after {budget_name(steps, steps_per_epoch)}, "
            f"FPGM against {', '.join(sorted(set(macs.other)))} at "
            f"−{', −'.join(f'{t:.0f}' for t in sorted(set(macs.macs)))} % MACs is {tally_text(macs['fpgm is'])} "
            f"(Holm over the {len(found['macs'])} equal-MACs comparisons of "
            f"the chapter)" + (f": {named}." if named else ".")
            + f" At the same nominal rate instead (secondary: the criteria remove different MACs there) it is "
            f"{tally_text(pairs['fpgm is'])} (Holm over {len(found['pairs'])}).")


def budget_markdown(found: dict, steps_per_epoch: float, score_name: str = "positive-pair Dice") -> str:
    """Two paragraphs on the budget sweep: FPGM against the other criteria of the sweep at each budget (equal MACs,
    then nominal rates: the main budget's points are the main grid's, all its seeds), and what inherited weights
    are worth at each budget (`inherited`)."""
    lines = []
    budgets = sorted(set(_home(found, found["pairs"]).steps))
    if len(budgets) > 1:
        swept = set(_home(found, found["pairs"]).query("steps == @budgets[-1]").other)
        parts = []
        for steps in budgets:
            macs = _home(found, found["macs"]).query("steps == @steps and other in @swept")
            pairs = _home(found, found["pairs"]).query("steps == @steps and other in @swept")
            rates = set(_home(found, found["pairs"]).query("steps == @budgets[-1]").rate)
            pairs = pairs[pairs.rate.isin(rates)]
            targets = set(_home(found, found["macs"]).query("steps == @budgets[-1]").macs)
            macs = macs[macs.macs.isin(targets)]
            parts.append(f"{budget_name(steps, steps_per_epoch)}: at equal MACs {tally_text(macs['fpgm is'])}, "
                         f"differences {macs['difference'].min():+.3f} to {macs['difference'].max():+.3f}; at the "
                         f"same rate {tally_text(pairs['fpgm is'])}")
        lines.append(f"**Does the fine-tuning budget change the ranking?** FPGM against {', '.join(sorted(swept))} "
                     "at the same MACs and rates at every budget, paired by seed: " + "; ".join(parts) + ".")
    worth = found["worth"]
    if len(worth):
        parts = [f"{r.rate:.0%} after {budget_name(r.steps, steps_per_epoch)}: {r.difference:+.3f} ± {r.ci:.3f} "
                 f"({r['inherited weights are']})" for _, r in worth.sort_values(["rate", "steps"]).iterrows()]
        lines.append("**Are inherited weights worth anything?** The pruned network fine-tuned for a budget, minus the "
                     f"same architecture trained from fresh weights for the same steps ({score_name}, paired by "
                     "seed): " + "; ".join(parts) + ". The control trains at most "
                     f"{budget_name(int(worth.steps.max()), steps_per_epoch)}: it tests whether inherited weights "
                     "beat fresh ones given the same short budget, not Liu et al.'s claim, which trains the small "
                     "network as long as the large one.")
    return "\n\n".join(lines)


def allocation_calls(points: pd.DataFrame, score: str = "dice_positive_after") -> tuple:
    """Chapter 12's comparisons (points with columns method, cut, criterion, seed, `score`), each family called
    by the rule: (by_method: each allocation minus the uniform rate at the same cut, per criterion, column "call";
    by_criterion: fpgm minus each other criterion per cut and method, column "fpgm is")."""
    by_method = paired_by(points, "method", "uniform", ["cut", "criterion"], score)
    flip = {"ahead": "behind", "behind": "ahead"}
    by_method = by_method.assign(difference=-by_method["difference"],
                                 call=by_method["uniform is"].replace(flip)).drop(columns="uniform is")
    return by_method, paired_by(points, "criterion", "fpgm", ["cut", "method"], score)


def allocation_markdown(points: pd.DataFrame, score: str = "dice_positive_after",
                        score_name: str = "positive-pair Dice") -> str:
    """Chapter 12's answers from its points (columns method, cut, criterion, seed, reached, `score`): each allocation
    against the uniform rate at the same MACs cut, paired by seed, and whether the allocation or the criterion moves
    the score (the rule's calls of `allocation_calls`)."""
    lines = []
    by_method, by_criterion = allocation_calls(points, score)
    estimated = 100 * (points["reached"] - points["cut"]).abs().max()
    measured = (points["macs_reduction"] - 100 * points["cut"]).abs().max()
    lines.append(f"**Do the allocations meet the target?** Every one reaches its MACs cut within {estimated:.2f} "
                 f"points by the estimate it was searched with (per-module counts scaled by the kept fractions) "
                 f"and within {measured:.2f} points as measured on the pruned network.")
    for other, group in by_method.groupby("other"):
        parts = [f"{r['criterion']} at −{r['cut']:.0%}: {r['difference']:+.3f} ± {r['ci']:.3f} ({r['call']})"
                 for r in group.sort_values(["cut", "criterion"]).to_dict("records")]
        lines.append(f"**{other.capitalize()} allocation minus the uniform rate** ({score_name} after fine-tuning, "
                     f"paired by seed, Holm over the {len(by_method)} allocation comparisons): " + "; ".join(parts)
                     + ".")
    if len(by_method) and len(by_criterion):
        moved_m = by_method[by_method.call.isin(["ahead", "behind"])]
        moved_c = by_criterion[by_criterion["fpgm is"].isin(["ahead", "behind"])]
        top_c = by_criterion.loc[by_criterion["difference"].abs().idxmax()]
        if len(moved_m) and not len(moved_c):
            verdict = "the allocation matters more: it separates, the criterion never does"
        elif len(moved_c) and not len(moved_m):
            verdict = "the criterion matters more: it separates, the allocation never does"
        elif not len(moved_m):
            verdict = "neither separates from the seeds' noise"
        else:
            verdict = "both separate somewhere"
        lines.append(f"**Allocation or criterion?** The allocation separates from the uniform rate in "
                     f"{len(moved_m)} of {len(by_method)} comparisons ({tally_text(by_method['call'])}); FPGM "
                     f"against L1 within an allocation in {len(moved_c)} of {len(by_criterion)} "
                     f"({tally_text(by_criterion['fpgm is'])}; the largest difference {top_c.difference:+.3f} ± "
                     f"{top_c.ci:.3f}, {top_c.method} allocation at −{top_c.cut:.0%}): here {verdict}.")
    return "\n\n".join(lines)


def baseline_seeds(found: dict, reference_seed: int = 0, score: str = "dice_positive_after") -> tuple:
    """How far the baseline's own seed moves the study, from `answers`' pooled points and calls, as two frames:

    - shifts: each (criterion, rate) on another baseline minus the same on `reference_seed` at the main budget
      (unpaired: mean difference, and the root sum of squares of both half-widths as its interval);
    - calls: FPGM against each other criterion at the main budget, nominal rate, on every baseline (rows rate ×
      other criterion, one column of the rule's calls per baseline seed; the calls of `answers`' one family).
    """
    points = found["points"]
    seed, policy, lr = found["home"]
    points = points[(points.steps == found["main_steps"]) & (points.policy == policy) & (points.lr == lr)]
    at = {key: interval(group[score]) for key, group in points.groupby(["baseline_seed", "criterion", "rate"])}
    others = set(points.baseline_seed) - {reference_seed}
    shared = {(c, r) for b, c, r in at if b in others}
    shifts = [{"baseline_seed": b, "criterion": c, "rate": r, "shift": mean - at[(reference_seed, c, r)][0],
               "ci": math.hypot(half, at[(reference_seed, c, r)][1])}
              for (b, c, r), (mean, half, _) in at.items() if b != reference_seed and (reference_seed, c, r) in at]
    pairs = found["pairs"]
    pairs = pairs[(pairs.steps == found["main_steps"]) & (pairs.policy == policy) & (pairs.lr == lr)]
    pairs = pairs[[(o, r) in shared for o, r in zip(pairs.other, pairs.rate)]]
    calls = (pairs.pivot_table(index=["rate", "other"], columns="baseline_seed", values="fpgm is",
                               aggfunc="first").dropna() if len(pairs) and others else pd.DataFrame())
    return pd.DataFrame(shifts, columns=["baseline_seed", "criterion", "rate", "shift", "ci"]), calls


def baseline_seed_markdown(found: dict, reference_seed: int = 0, score: str = "dice_positive_after",
                           score_name: str = "positive-pair Dice") -> str:
    """The two answers of `baseline_seeds` as paragraphs: how far the other baselines move each point, and whether
    FPGM's calls against the other criteria come out the same on every baseline."""
    shifts, calls = baseline_seeds(found, reference_seed, score)
    lines = []
    if len(shifts):
        parts = [f"{r['criterion']} at {r['rate']:.0%}: {r['shift']:+.3f} ± {r['ci']:.3f}"
                 for r in shifts.sort_values(["rate", "criterion"]).to_dict("records")]
        outside = int((shifts["shift"].abs() > shifts["ci"]).sum())
        lines.append(f"**Does the baseline's seed move the points?** The same criterion at the same rate on baseline "
                     f"{', '.join(str(b) for b in sorted(set(shifts.baseline_seed)))} minus baseline "
                     f"{reference_seed} ({score_name} after fine-tuning): " + "; ".join(parts)
                     + f". {outside} of {len(shifts)} shifts exceed their interval.")
    if len(calls) and calls.shape[1] > 1:
        parts = [f"against {other} at {rate:.0%}: " + " / ".join(calls.loc[(rate, other)])
                 for rate, other in calls.index]
        lines.append(f"**Does the ranking of criteria survive another baseline?** FPGM against each other criterion "
                     f"at the same rate, paired by fine-tuning seed within each baseline, called by the rule in the "
                     f"chapter's one family (baseline {' / '.join(str(b) for b in calls.columns)}): "
                     + "; ".join(parts) + f". The calls agree in {int((calls.nunique(axis=1) == 1).sum())} of "
                     f"{len(calls)}.")
    return "\n\n".join(lines)


def int8_answer(int8: pd.DataFrame, candidate: dict | None, lossless: float,
                score_name: str = "positive-pair Dice") -> tuple:
    """(verdict, chapter, text) of chapter 10's int8 candidate from `deployment.int8_verdicts`: its loss against
    the bar `lossless` and int8's cost against zero with the margin, each with its interval (none for one seed)."""
    c = int8.set_index("comparison")
    loss, cost = c.loc["the candidate's loss"], c.loc["int8's cost"]
    words = {"equivalent": "int8's cost equivalent to zero", "ahead": "int8 costs more than the margin",
             "behind": "int8 gains more than the margin", "not separated": "int8's cost not separated"}
    cost_call = words[cost["call"]]
    shown = lambda r: (f"{r['mean'] + 0:+.3f} ± {r['ci']:.3f}" if r["n"] > 1 else
                       f"{r['mean'] + 0:+.3f} (one seed, no interval)")
    where = (f" at {candidate['rate']:.0%} ({candidate['policy']}, round_to={candidate['round_to']})"
             if candidate else "")
    return (f"{loss['call']}; {cost_call}", "10",
            f"Chapter 05's baseline pruned{where}, fine-tuned with chapter 07's budget and scored in ONNX Runtime "
            f"over {int(loss['n'])} fine-tuning seeds loses {shown(loss)} {score_name} against the bar of "
            f"{lossless} ({loss['call']}); int8 then costs {shown(cost)} ({cost['call']} at a margin of "
            f"± {MARGINS['dice_positive']}). Its speed is timed on one seed's networks (chapter 10).")


def lr_choice(rows: pd.DataFrame, score: str = "dice_positive") -> pd.DataFrame:
    """The fine-tuning learning rate chosen on validation. `rows`: `sweeps.validation` of the learning-rate sweep
    (the same criteria, rates and seeds at every learning rate). Per learning rate: points, the mean validation
    `score` (what chooses) and the mean test score of the same points (what reports); attrs["chosen"] is the
    learning rate of the best validation mean, attrs["test_best"] that of the best test mean."""
    points = rows.groupby("lr").apply(lambda g: sorted(zip(g.criterion, g.rate, g.seed)), include_groups=False)
    if len(points) < 2 or any(p != points.iloc[0] for p in points):
        raise ValueError("a learning-rate choice needs two or more learning rates, each with the same points")
    table = rows.groupby("lr").agg(points=(f"val_{score}", "size"), validation=(f"val_{score}", "mean"),
                                   test=(f"{score}_after", "mean"))
    gap = max((rows[f"rerun_{s}"] - rows[f"{s}_after"]).abs().max() for s in ("dice_kaggle", "dice_positive"))
    table.attrs.update(chosen=float(table.validation.idxmax()), test_best=float(table.test.idxmax()), score=score,
                       criteria=sorted(set(rows.criterion)), rates=sorted(set(rows.rate)),
                       seeds=sorted(set(rows.seed)), networks=len(rows), same_networks=int(rows.same_network.sum()),
                       largest_gap=float(gap))
    return table


def _reruns(a: dict) -> str:
    """How the re-run networks behind validation scores matched their stored test scores (attrs of lr_choice)."""
    same, n, gap = a["same_networks"], a["networks"], a["largest_gap"]
    if same == n:
        return f"Every one of the {n} networks, fine-tuned again, gave its stored test scores bit for bit. "
    return (f"Fine-tuned again, {same} of the {n} networks gave their stored test scores bit for bit (stored from "
            f"this kind of CPU); the other {n - same}, stored from another CPU whose kernels round differently, came "
            f"back within {gap:.4f} test Dice of them, so their validation scores are those of the same recipe "
            "re-run. ")


def lr_markdown(table: pd.DataFrame, used: float) -> str:
    """Chapter 07's paragraph on the learning rate: which one validation chooses, with the validation means, and
    whether it is `used`, the one every point of the study fine-tunes at (taken as the best on the test strips)."""
    a, chosen = table.attrs, table.attrs["chosen"]
    name = NAMES[a["score"]]
    means = lambda column: ", ".join(f"{lr:g}: {v:.4f}" for lr, v in table[column].items())
    text = (f"**Which learning rate?** Chosen on the validation strips: {chosen:g}, the best mean validation {name} "
            f"after fine-tuning over the same {int(table.points.iloc[0])} points at each learning rate "
            f"({', '.join(a['criteria'])} at {_rates(a['rates'])}, seeds {', '.join(map(str, a['seeds']))}): "
            f"{means('validation')}. {_reruns(a)}")
    if chosen == used and a["test_best"] == used:
        return text + (f"It is the learning rate every point of the study fine-tunes at, which had been taken as the "
                       f"best of the sweep on the test strips (the same points' test means {means('test')}): the "
                       "test-split choice agreed with validation, so no point changes.")
    if chosen == used:
        return text + (f"It is the learning rate every point of the study fine-tunes at; on the test strips these "
                       f"points would have chosen {a['test_best']:g} ({means('test')}).")
    return text + (f"Every point of the study fine-tunes at {used:g}, taken as the best on the test strips "
                   f"({means('test')}): validation chooses another, so the points would have to be recomputed at "
                   f"{chosen:g}.")


def postprocess_effect(rows: pd.DataFrame, scores=("dice_positive", "dice_kaggle")) -> pd.DataFrame:
    """What reusing the baseline's post-processing costs a pruned network. `rows`: `sweeps.validation` of some
    fine-tuned points. Per criterion, rate and score: the test score under the post-processing re-tuned on
    validation for each network minus the one under the baseline's (both on the re-run network of the record),
    paired by network (seed), called by the rule (Holm over the comparisons of each score, its margin)."""
    out = []
    for (criterion, rate), group in rows.groupby(["criterion", "rate"]):
        for score in scores:
            diff = group[f"retuned_{score}"] - group[f"rerun_{score}"]  # the same network under both
            out.append({"criterion": criterion, "rate": rate, "score": score,
                        "reused": float(group[f"rerun_{score}"].mean()),
                        "retuned": float(group[f"retuned_{score}"].mean()), **summarise(diff)})
    frame = pd.DataFrame(out)
    called = pd.concat([decide(frame[frame.score == s], MARGINS[s]) for s in scores])
    return called.rename(columns={"mean": "difference", "n": "networks", "call": "re-tuned is"})


def postprocess_markdown(effect: pd.DataFrame) -> str:
    """Chapter 07's paragraph on the post-processing reused from the baseline, from `postprocess_effect`: the
    verdict, each comparison, and what it means for the scores the study reads."""
    verdict = _postprocess_verdict(effect)
    cells = "; ".join(f"{r['criterion']} at {r['rate']:.0%}, {NAMES[r['score']]}: {_pm(r['difference'], r['ci'])} "
                      f"({r['re-tuned is']})" for r in effect.to_dict("records"))
    n = int(effect.networks.max())
    margins = ", ".join(f"± {MARGINS[s]} {NAMES[s]}" for s in dict.fromkeys(effect.score))
    notes = []
    positive, kaggle = (effect[effect.score == s] for s in ("dice_positive", "dice_kaggle"))
    if len(positive) and not (positive["re-tuned is"] == "ahead").any():
        notes.append("The study's verdicts read positive-pair Dice, where re-tuning is never ahead: the reused "
                     "post-processing does not handicap a pruned network there.")
    if len(kaggle) and (kaggle.difference > 0).any() and not (kaggle["re-tuned is"] == "equivalent").all():
        top = kaggle.loc[kaggle.difference.idxmax()]
        notes.append(f"Kaggle Dice, which the tuning maximises, gains up to {top['difference']:+.3f} on average "
                     f"({top['criterion']} at {top['rate']:.0%}, {top['re-tuned is']}): a pruned network's Kaggle "
                     "Dice (Figure 5's upper panels, chapter 08's history) is scored with a post-processing tuned "
                     "for another network and can read low by about that much.")
    return (f"**Does the post-processing tuned for the unpruned network serve the pruned ones?** {verdict[0].upper()}"
            f"{verdict[1:]}. The threshold and minimum area of each class were tuned on the validation strips for "
            f"the baseline (for Kaggle Dice) and are reused for every pruned network. Re-tuned the same way on the "
            f"validation strips for each fine-tuned network ({n} seeds per cell), the test score moves by (re-tuned "
            f"minus reused): {cells} (margins {margins}; Holm over the comparisons of each score). "
            + " ".join(notes)).strip()


def _postprocess_verdict(effect: pd.DataFrame) -> str:
    calls = effect["re-tuned is"]
    if set(calls) == {"equivalent"}:
        return "it does not matter: re-tuned and reused are equivalent"
    moved = [f"{'raises' if call == 'ahead' else 'lowers'} {NAMES[s]}" for call in ("ahead", "behind")
             for s in dict.fromkeys(effect.score[calls == call])]
    return ("it matters: re-tuning " + " and ".join(moved) if moved else
            "not shown either way: not every comparison is equivalent, and none separates")


def validation_markdown(choice: pd.DataFrame, effect: pd.DataFrame, history: pd.DataFrame, used_lr: float,
                        metric: str = "dice_kaggle") -> str:
    """Chapter 11's paragraph on what each choice among pruned networks reads: the learning rate (`lr_choice`),
    chapter 08's end condition and step (its history, `metric` on validation), the post-processing
    (`postprocess_effect`)."""
    a, chosen = choice.attrs, choice.attrs["chosen"]
    others = ", ".join(f"{v:.4f} at {lr:g}" for lr, v in choice.validation.items() if lr != chosen)
    agreed = ("the one every point uses; the test strips had chosen the same" if chosen == used_lr == a["test_best"]
              else "the one every point uses" if chosen == used_lr else
              f"not {used_lr:g}, the one every point uses: the points would have to be recomputed")
    k = history.attrs["chosen_step"]
    where = "validation" if f"val_{metric}" in history else "test"
    ranges = "; ".join(f"{NAMES[s]} {g.difference.min():+.4f} to {g.difference.max():+.4f}"
                       for s, g in effect.groupby("score", sort=False))
    rates, networks = _rates(set(effect.rate)), int(effect.networks.sum() / effect.score.nunique())
    positive = effect[effect.score == "dice_positive"]
    kept = ("; the verdicts read positive-pair Dice, where re-tuning is never ahead, so they keep the baseline's "
            "post-processing" if len(positive) and not (positive["re-tuned is"] == "ahead").any() else "")
    return (f"**Chosen on the validation strips.** The learning rate is the best of chapter 07's sweep on validation, "
            f"{chosen:g} (mean validation {NAMES[a['score']]} {choice.validation[chosen]:.4f}, against {others}): "
            f"{agreed}. Chapter 08's end condition and chosen step (step {k}) read the {where} strips' "
            f"{NAMES[metric]}. The post-processing is tuned on validation for the unpruned network and reused for "
            f"every pruned one; re-tuned on validation for each of {networks} fine-tuned networks "
            f"({', '.join(sorted(set(effect.criterion)))} at {rates}), the mean test score moves by {ranges} "
            f"(chapter 07). Under the rule {_postprocess_verdict(effect)}{kept}. The test strips only report.")


def _cells(frame: pd.DataFrame, call: str, column: str = "call") -> str:
    return ", ".join(f"{r:.0%}" for r in sorted(frame[frame[column] == call].rate))


def conclusions(found: dict, baseline: dict, *, compression: pd.DataFrame, history: pd.DataFrame,
                allocation: pd.DataFrame | None = None, steps_per_epoch: float, quoted=(48.81, 48.43),
                baseline_epochs: float | None = None, score_name: str = "positive-pair Dice",
                int8: pd.DataFrame | None = None, candidate: dict | None = None) -> pd.DataFrame:
    """Chapter 11's answers, one row per question of the paper and of the study: question, verdict (a few words,
    the rule's), chapter, and paragraph (the question in bold, then the verdict, then its numbers in words).

    found: `answers` on chapter 07's grid; compression: chapter 03's table (model, policy, rate, "FLOPs reduction %",
    "params reduction %"); history: chapter 08's iterative run (attrs["chosen_step"]); allocation: chapter 12's
    points; quoted: the paper's one quoted cell, ResNet50 at 40 % (FLOPs, params removed, %); baseline_epochs: how
    long the baseline trained (the from-scratch control's budget is set against it); int8: chapter 10's candidate
    under the rule (`deployment.int8_verdicts`), candidate: its rate, policy and round_to."""
    rows = []

    def add(question, verdict, chapter, text):
        rows.append({"question": question, "verdict": verdict, "chapter": chapter,
                     "paragraph": f"**{question}** {verdict[0].upper() + verdict[1:]}. {text}"})

    # the compression tables: one quoted cell, the rest computed
    cell = compression[(compression.model == "resnet50") & (compression.policy == "or-merge")
                       & (compression.rate == 0.4)].iloc[0]
    flops, params = cell["FLOPs reduction %"], cell["params reduction %"]
    near = abs(flops - quoted[0]) < 2 and abs(params - quoted[1]) < 2
    add("Do Tables 3-5 reproduce?", "the quoted ResNet50 cell reproduced; the rest computed" if near
        else "the quoted ResNet50 cell not reproduced", "03",
        f"The paper's text quotes one cell, ResNet50 at 40 %: here {flops:.2f} % of MACs and {params:.2f} % of "
        f"parameters removed under NNI's or-merge, {'within' if near else 'more than'} 2 points of the quoted "
        "figures. The other cells of Tables 3-5 are computed for all three networks, with nothing quoted to set them "
        "against.")
    # more grouped convolutions, lower compression
    pivot = compression[compression.rate > 0].pivot_table(index=["policy", "rate"], columns="model",
                                                          values="FLOPs reduction %")
    gap = (pivot["resnet50"] - pivot["resnext50_32x4d"])
    merge, coupled = gap.xs("or-merge"), gap.xs("coupled")
    add("Do more grouped convolutions mean lower compression?",
        "holds in the counts under or-merge; under coupled the gap is small" if (merge > 0).all() else "not shown",
        "03", f"At the same rate ResNeXt50 (grouped 3×3 convs in every block) removes {merge.min():.1f} to "
        f"{merge.max():.1f} points fewer of its MACs than ResNet50 under or-merge, and {coupled.min():.2f} to "
        f"{coupled.max():.2f} under coupled (counts, no seeds; a negative gap: ResNeXt50 removes more). Chapter 03 "
        "traces the or-merge gap at high rates to where ResNeXt50's weights sit, next to the residual streams, more "
        "than to the grouping itself.")
    # Figure 5
    loss, main = found["loss"], found["main_steps"]
    at = loss[loss.steps == main]
    fmt = lambda g: "; ".join(f"{r['rate']:.0%}: {r['loss']:+.3f} ± {r['ci']:.3f} ({r['call']})"
                              for r in g.to_dict("records"))
    low, high = at[at.rate <= 0.3], at[at.rate > 0.4]
    low_ok = (low.call == "within the bar").all()
    add("Is 10-30 % nearly lossless (Figure 5)?",
        "holds" if low_ok else f"within the bar at {_cells(low, 'within the bar') or 'no rate'} only", "07",
        f"FPGM's loss of {score_name} after {budget_name(main, steps_per_epoch)} of fine-tuning, against the bar of "
        f"{found['lossless']} (Holm over the {len(loss)} budget × rate cells): {fmt(low)}.")
    if len(high):
        add("Does more than 40 % degrade (Figure 5)?",
            "holds" if (high.call == "beyond the bar").all() else "not shown at every rate", "07",
            f"At the same budget: {fmt(high)}.")
    longest = loss.steps.max()
    if longest > main:
        long = loss[loss.steps == longest]
        add("And after a longer fine-tuning?", "; ".join(f"{c} at {_cells(long, c)}" for c in
                                                        ("within the bar", "undecided", "beyond the bar")
                                                        if (long.call == c).any()), "07",
            f"After {budget_name(longest, steps_per_epoch)}: {fmt(long)}. The budget, not only the rate, decides "
            "what is nearly lossless.")
    # FPGM against the other criteria
    macs = _home(found, found["macs"]).query("steps == @main")
    pairs = _home(found, found["pairs"]).query("steps == @main")
    ahead, behind = (macs["fpgm is"] == "ahead").sum(), (macs["fpgm is"] == "behind").sum()
    named = calls_in_words(macs[macs["fpgm is"].isin(["ahead", "behind"])], "fpgm is",
                           lambda r: f"{r['other']} at −{r['macs']:.0f} %")
    add("Are FPGM's filters the ones to prune?",
        "not shown: mostly not separated or equivalent" if ahead <= len(macs) / 2 else "holds", "07",
        f"At equal MACs after {budget_name(main, steps_per_epoch)}, FPGM against the five other criteria is "
        f"{tally_text(macs['fpgm is'])}" + (f" ({named})" if named else "")
        + f"; at the same nominal rate {tally_text(pairs['fpgm is'])}.")
    budgets = sorted(set(_home(found, found["pairs"]).steps))
    if len(budgets) > 1:
        swept = set(_home(found, found["pairs"]).query("steps == @budgets[-1]").other)
        targets = set(_home(found, found["macs"]).query("steps == @budgets[-1]").macs)
        home = _home(found, found["macs"])
        per = {s: home[(home.steps == s) & home.other.isin(swept) & home.macs.isin(targets)] for s in budgets}
        moved = {s: set(g[g["fpgm is"].isin(["ahead", "behind"])]["fpgm is"]) for s, g in per.items()}
        reorder = any("ahead" in m for m in moved.values()) and any("behind" in m for m in moved.values())
        add("Does a longer fine-tuning reorder the criteria (Wang et al. 2023)?",
            "reordered" if reorder else "no reversal",
            "07", f"FPGM against {', '.join(sorted(swept))} at equal MACs (−"
            + ", −".join(f"{t:.0f}" for t in sorted(targets)) + " %): "
            + "; ".join(f"{budget_name(s, steps_per_epoch)}: {tally_text(g['fpgm is'])}" for s, g in per.items())
            + ". " + ("FPGM is ahead at one budget and behind at another." if reorder else
                      "No call turns from ahead to behind" + ("; what separates at the shortest budget does not at "
                                                              "the longer ones." if moved[budgets[0]] and not
                                                              any(moved[s] for s in budgets[1:]) else ".")))
    worth = found["worth"]
    if len(worth):
        every = (worth["inherited weights are"] == "worth something").all()
        add("Do inherited weights beat fresh ones (Liu et al. 2019)?",
            "worth something at every budget tested (at most "
            f"{budget_name(int(worth.steps.max()), steps_per_epoch)}); Liu et al.'s claim not tested" if every
            else "not at every budget", "07",
            "The pruned network minus the same architecture trained from fresh weights for the same steps: "
            + "; ".join(f"{r.rate:.0%} after {budget_name(r.steps, steps_per_epoch)}: {r.difference:+.3f} ± {r.ci:.3f}"
                        for r in worth.sort_values(["rate", "steps"]).itertuples())
            + ". The control trains for at most the longest budget"
            + (f", against the baseline's own {baseline_epochs:g} epochs" if baseline_epochs else "") + ", so it "
            "says what inherited weights are worth for a short fine-tuning, not what Liu et al. test: the small "
            "network trained as long as the large one.")
    shifts, calls = baseline_seeds(found)
    if len(calls) and calls.shape[1] > 1:
        agree = int((calls.nunique(axis=1) == 1).sum())
        add("Does the ranking belong to the method rather than to one baseline?",
            "holds" if agree == len(calls) else f"not shown: {agree} of {len(calls)} calls agree", "07",
            f"On a second baseline the same points move {shifts['shift'].min():+.3f} to {shifts['shift'].max():+.3f}; "
            f"FPGM's calls against the other criteria at the same rate agree on both baselines in {agree} of "
            f"{len(calls)}. Every other verdict here is about baseline 0.")
    # the paper's regularisation claim: a pruned network above the baseline
    best = loss.loc[loss["loss"].idxmin()]
    better = loss[loss["loss"] + loss["ci"] < 0]
    add("Does pruning regularise and improve generalisation?",
        "holds" if len(better) else "not shown: no pruned network scores above the baseline", "07",
        f"FPGM's smallest loss is {best['loss']:+.3f} ± {best['ci']:.3f} {score_name} ({best['rate']:.0%} after "
        f"{budget_name(int(best.steps), steps_per_epoch)}); "
        + (f"{len(better)} cells are above the baseline." if len(better) else
           "no budget × rate cell has a fine-tuned network above the baseline, whose interval would have to lie "
           "below zero loss."))
    # Figure 3: the iterative run
    k = history.attrs["chosen_step"]
    chosen = history.set_index("step").loc[k]
    on = ("the validation strips (the test strips only report)" if "val_dice_kaggle" in history
          else "the test strips")
    add("Does the iterative flow of Figure 3 run as described?", "runs as described; one run, no interval", "08",
        f"It stopped after step {len(history) - 1} and chose step {k}: {chosen.rate:.0%} nominal, "
        f"{chosen.macs_reduction:.1f} % of MACs removed, test Kaggle Dice {chosen.dice_kaggle_after:.3f}. Its end "
        f"condition and chosen step read {on}, and its comparison with one cut at equal MACs (chapter 08) "
        "has one seed and no interval, so under the rule it is not separated.")
    if int8 is not None and len(int8):
        add("Is chapter 10's int8 candidate nearly lossless?", *int8_answer(int8, candidate, found["lossless"],
                                                                          score_name))
    if allocation is not None and len(allocation):
        by_method, by_criterion = allocation_calls(allocation)
        sens = by_method[by_method.other == "sensitivity"]
        rand = by_method[by_method.other == "random"]
        add("Does where to prune matter more than which filters go?",
            "holds: the sensitivity allocation separates, the criterion never does"
            if (sens.call == "ahead").any() and not by_criterion["fpgm is"].isin(["ahead", "behind"]).any()
            else "not shown", "12",
            f"At equal MACs the sensitivity allocation against the uniform rate is {tally_text(sens['call'])} "
            f"(+{sens['difference'].min():.3f} to +{sens['difference'].max():.3f}); the random allocation "
            f"{tally_text(rand['call'])}; FPGM against L1 within an allocation {tally_text(by_criterion['fpgm is'])} "
            f"(Holm over the {len(by_method)} allocation and the {len(by_criterion)} criterion comparisons).")
    return pd.DataFrame(rows)
