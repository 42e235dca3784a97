"""The study's verdicts, computed from its stored points: intervals over seeds, FPGM paired with each other criterion,
and plain answers to the paper's claims. Interval: mean ± t(0.975, n-1) s / sqrt(n) (s: sample std over seeds).

A point is a row of `Study.points`: criterion, policy, rate, seed, steps, lr, sizes, and `<score>_<stage>` columns
(stage before / recal / after: right after pruning, after BatchNorm recalibration, after fine-tuning).
"""
import math

import numpy as np
import pandas as pd

__all__ = ["interval", "figure5_table", "paired_by", "paired", "inherited", "answers", "verdict_markdown",
           "budget_markdown", "budget_name", "allocation_markdown", "baseline_seeds",
           "baseline_seed_markdown", "STAGES"]

STAGES = ("before", "recal", "after")
# Student t quantiles t(0.975, df): a 95 % two-sided interval for the mean of df + 1 seeds
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]


def interval(values) -> tuple:
    """(mean, half-width of the 95 % t interval, n) of `values`; half-width NaN for a single value."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(n)), n


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


def paired_by(points: pd.DataFrame, column: str, reference, within, score: str = "dice_positive_after"
              ) -> pd.DataFrame:
    """`reference` minus each other value of `column`, paired by fine-tuning seed (the same crops in the same order),
    per group of `within`: mean difference, its 95 % interval, and "ahead" / "behind" / "level" (the interval
    excludes 0 or not) in the column "<reference> is"."""
    keys = list(within)
    ref = points[points[column] == reference].set_index(keys + ["seed"])[score]
    rows = []
    for other in sorted(set(points[column]) - {reference}):
        theirs = points[points[column] == other].set_index(keys + ["seed"])[score]
        both = pd.concat([ref.rename("ref"), theirs.rename("other")], axis=1, join="inner")
        for key, group in both.groupby(level=keys):
            key = key if isinstance(key, tuple) else (key,)
            mean, half, n = interval(group["ref"] - group["other"])
            call = "level" if n < 2 or abs(mean) <= half else ("ahead" if mean > 0 else "behind")
            rows.append({**dict(zip(keys, key)), "other": other, "pairs": n, "difference": mean, "ci": half,
                         f"{reference} is": call})
    return pd.DataFrame(rows)


def paired(points: pd.DataFrame, score: str = "dice_positive_after", reference: str = "fpgm") -> pd.DataFrame:
    """`reference` minus each other criterion, paired by seed, per (policy, steps, lr, rate) (see `paired_by`)."""
    out = paired_by(points, "criterion", reference, ["policy", "steps", "lr", "rate"], score)
    return out.rename(columns={f"{reference} is": "fpgm is"})


def inherited(pruned: pd.DataFrame, scratch: pd.DataFrame, score: str = "dice_positive_after",
              criterion: str = "fpgm") -> pd.DataFrame:
    """What inherited weights are worth: `criterion`'s pruned-and-fine-tuned score minus the from-scratch control
    of the same architecture and budget, paired by seed, per (rate, steps): mean, 95 % interval, and "worth
    something" / "worth less" / "level" (the interval excludes 0 or not)."""
    keys = ["rate", "steps", "seed"]
    own = pruned[pruned.criterion == criterion].set_index(keys)[score].rename("pruned")
    both = pd.concat([own, scratch.set_index(keys)[score].rename("scratch")], axis=1, join="inner")
    rows = []
    for (rate, steps), group in both.groupby(level=["rate", "steps"]):
        mean, half, n = interval(group["pruned"] - group["scratch"])
        call = "level" if n < 2 or abs(mean) <= half else ("worth something" if mean > 0 else "worth less")
        rows.append({"rate": rate, "steps": steps, "pairs": n, "pruned": float(group["pruned"].mean()),
                     "scratch": float(group["scratch"].mean()), "difference": mean, "ci": half,
                     "inherited weights are": call})
    return pd.DataFrame(rows)


def answers(points: pd.DataFrame, baseline: dict, *, lossless: float, reference: str = "fpgm",
            score: str = "dice_positive", budgets: pd.DataFrame | None = None) -> dict:
    """The paper's claims put to the points (fine-tuned scores):

    - loss[(steps, rate)]: `reference`'s loss (baseline minus fine-tuned) with its interval, over the main grid and
      the `budgets` sweep (its points at the main grid's steps are the main grid's); nearly_lossless: the upper end
      of the interval is at most `lossless`; degrades: its lower end is above `lossless`;
    - pairs / tally: the paired comparisons of `paired` on the main grid, counted as ahead / behind / level.
    """
    after = f"{score}_after"
    own = points[points.criterion == reference]
    if budgets is not None and len(budgets):
        extra = budgets[(budgets.criterion == reference) & ~budgets.steps.isin(own.steps.unique())]
        own = pd.concat([own, extra])
    loss = {}
    for (steps, rate), group in own.groupby(["steps", "rate"]):
        mean, half, n = interval(baseline[score] - group[after])
        loss[(int(steps), float(rate))] = {"loss": mean, "ci": half, "seeds": n,
                                           "nearly_lossless": bool(n > 1 and mean + half <= lossless),
                                           "degrades": bool(n > 1 and mean - half > lossless)}
    pairs = paired(points, after, reference)
    return {"loss": loss, "pairs": pairs, "tally": pairs["fpgm is"].value_counts().to_dict() if len(pairs) else {}}


def budget_name(steps: int, steps_per_epoch: float | None) -> str:
    """"56 steps (0.25 epoch)": a fine-tuning budget as steps and, given the epoch's length, epochs."""
    if not steps_per_epoch:
        return f"{steps} steps"
    epochs = steps / steps_per_epoch
    return f"{steps} steps ({epochs:.2g} epoch{'' if epochs <= 1 else 's'})"


def _rates(rates) -> str:
    return ", ".join(f"{r:.0%}" for r in sorted(rates))


def verdict_markdown(found: dict, *, lossless: float, low_rates=(0.1, 0.2, 0.3), high_rates=(0.5, 0.6, 0.7),
                     score_name: str = "positive-pair Dice", steps_per_epoch: float | None = None) -> str:
    """The answers of `answers` as short paragraphs, numbers included: the loss at each rate after each fine-tuning
    budget, judged against `lossless`, and FPGM against the other criteria."""
    lines = []
    for steps in sorted({s for s, _ in found["loss"]}):
        at = {r: v for (s, r), v in found["loss"].items() if s == steps}
        low = [r for r in low_rates if r in at]
        high = [r for r in high_rates if r in at]
        fmt = ", ".join(f"{r:.0%}: {at[r]['loss']:+.3f} ± {at[r]['ci']:.3f}" for r in sorted(at))
        if low:  # nearly lossless: the interval lies below the bar; not: it lies above; else undecided
            kept = [r for r in low if at[r]["nearly_lossless"]]
            lost = [r for r in low if at[r]["degrades"]]
            open_ = sorted(set(low) - set(kept) - set(lost))
            parts = [(kept, f"nearly lossless at {_rates(kept)}"),
                     (lost, f"not nearly lossless at {_rates(lost)} (the whole interval above the bar)"),
                     (open_, f"undecided at {_rates(open_)}")]
            low_text = ", ".join(text for rates, text in sorted(parts, key=lambda p: min(p[0], default=1)) if rates)
        else:
            low_text = "not tested at 10-30 %"
        if high:
            worse = [r for r in high if at[r]["degrades"]]
            high_text = (f"degrades at {_rates(high)}" if len(worse) == len(high) else
                         f"is not shown to degrade at {_rates(set(high) - set(worse))}")
        else:
            high_text = "is not tested past 40 %"
        lines.append(f"**Is 10-30 % nearly lossless, and does more than 40 % degrade?** After "
                     f"{budget_name(steps, steps_per_epoch)} of fine-tuning, FPGM loses {fmt} {score_name} "
                     f"(mean ± 95 % interval over seeds). Calling a loss of at most {lossless} nearly lossless, the "
                     f"network is {low_text} and {high_text}.")
    pairs = found["pairs"]
    if len(pairs):
        tally = found["tally"]
        worst = pairs.loc[pairs["difference"].idxmin()]
        best = pairs.loc[pairs["difference"].idxmax()]
        lines.append(f"**Does FPGM beat the other criteria?** Of {len(pairs)} paired comparisons (criterion × rate, "
                     f"paired by seed, the main budget), FPGM is ahead in {tally.get('ahead', 0)}, behind in "
                     f"{tally.get('behind', 0)} and level in {tally.get('level', 0)}; the differences run from "
                     f"{worst['difference']:+.3f} (against {worst['other']} at {worst['rate']:.0%}) to "
                     f"{best['difference']:+.3f} (against {best['other']} at {best['rate']:.0%}).")
    return "\n\n".join(lines)


def budget_markdown(pairs: pd.DataFrame, worth: pd.DataFrame, steps_per_epoch: float,
                    score_name: str = "positive-pair Dice") -> str:
    """Two paragraphs on the budget sweep: FPGM against the other criteria at each budget (`paired` rows), and
    what inherited weights are worth at each budget (`inherited` rows)."""
    lines = []
    if len(pairs):
        parts = []
        for steps, group in pairs.groupby("steps"):
            tally = group["fpgm is"].value_counts().to_dict()
            parts.append(f"{budget_name(steps, steps_per_epoch)}: ahead {tally.get('ahead', 0)}, "
                         f"behind {tally.get('behind', 0)}, level {tally.get('level', 0)} of {len(group)}, "
                         f"differences {group['difference'].min():+.3f} to {group['difference'].max():+.3f}")
        lines.append("**Does the fine-tuning budget change the ranking?** FPGM against each other criterion, paired "
                     "by seed, per budget: " + "; ".join(parts) + ".")
    if len(worth):
        parts = [f"{r.rate:.0%} after {budget_name(r.steps, steps_per_epoch)}: {r.difference:+.3f} ± {r.ci:.3f} "
                 f"({r['inherited weights are']})" for _, r in worth.sort_values(["rate", "steps"]).iterrows()]
        lines.append("**Are inherited weights worth anything?** The pruned network fine-tuned for a budget, minus the "
                     f"same architecture trained from fresh weights for the same steps ({score_name}, paired by "
                     "seed): " + "; ".join(parts) + ".")
    return "\n\n".join(lines)


def allocation_markdown(points: pd.DataFrame, score: str = "dice_positive_after",
                        score_name: str = "positive-pair Dice") -> str:
    """Chapter 12's answers from its points (columns method, cut, criterion, seed, reached, `score`): each allocation
    against the uniform rate at the same MACs cut, paired by seed, and whether the allocation moves the score more
    than the criterion does (the largest paired difference of either kind)."""
    lines = []
    flip = {"ahead": "behind", "behind": "ahead", "level": "level"}
    # paired_by gives uniform minus each allocation: turned round once, to the allocation minus uniform
    by_method = paired_by(points, "method", "uniform", ["cut", "criterion"], score)
    by_method = by_method.assign(difference=-by_method["difference"], call=by_method["uniform is"].map(flip))
    by_criterion = paired_by(points, "criterion", "fpgm", ["cut", "method"], score)
    estimated = 100 * (points["reached"] - points["cut"]).abs().max()
    measured = (points["macs_reduction"] - 100 * points["cut"]).abs().max()
    lines.append(f"**Do the allocations meet the target?** Every one reaches its MACs cut within {estimated:.2f} "
                 f"points by the estimate it was searched with (per-module counts scaled by the kept fractions) "
                 f"and within {measured:.2f} points as measured on the pruned network.")
    for other, group in by_method.groupby("other"):
        parts = [f"{r['criterion']} at −{r['cut']:.0%}: {r['difference']:+.3f} ± {r['ci']:.3f} ({r['call']})"
                 for r in group.sort_values(["cut", "criterion"]).to_dict("records")]
        lines.append(f"**{other.capitalize()} allocation minus the uniform rate** ({score_name} after fine-tuning, "
                     "paired by seed): " + "; ".join(parts) + ".")
    if len(by_method) and len(by_criterion):
        top_m = by_method.loc[by_method["difference"].abs().idxmax()]
        top_c = by_criterion.loc[by_criterion["difference"].abs().idxmax()]
        real_m, real_c = top_m["call"] != "level", top_c["fpgm is"] != "level"
        if not (real_m or real_c):
            verdict = "neither moves the score beyond the seeds' noise"
        elif real_m and (not real_c or abs(top_m.difference) > abs(top_c.difference)):
            verdict = "the allocation matters more"
        else:
            verdict = "the criterion matters more"
        lines.append(f"**Allocation or criterion?** The largest effect of the allocation is "
                     f"{top_m.difference:+.3f} ± {top_m.ci:.3f} ({top_m.other} against uniform, {top_m.criterion} "
                     f"at −{top_m.cut:.0%}); the largest of the criterion is {top_c.difference:+.3f} ± "
                     f"{top_c.ci:.3f} (fpgm against {top_c.other}, {top_c.method} allocation at −{top_c.cut:.0%}): "
                     f"here {verdict}.")
    return "\n\n".join(lines)


def baseline_seeds(points: pd.DataFrame, reference_seed: int = 0, reference: str = "fpgm",
                   score: str = "dice_positive_after") -> tuple:
    """How far the baseline's own seed moves the study (points with a `baseline_seed` column), as two frames:

    - shifts: each (criterion, rate) on another baseline minus the same on `reference_seed` (unpaired: mean
      difference, and the root sum of squares of both half-widths as its interval);
    - calls: `reference` against each other criterion, paired by fine-tuning seed within each baseline (rows
      rate × other criterion on every baseline, one column of "ahead" / "behind" / "level" per baseline seed).
    """
    at = {key: interval(group[score]) for key, group in points.groupby(["baseline_seed", "criterion", "rate"])}
    shifts = [{"baseline_seed": b, "criterion": c, "rate": r, "shift": mean - at[(reference_seed, c, r)][0],
               "ci": math.hypot(half, at[(reference_seed, c, r)][1])}
              for (b, c, r), (mean, half, _) in at.items() if b != reference_seed and (reference_seed, c, r) in at]
    pairs = paired_by(points, "criterion", reference, ["rate", "baseline_seed"], score)
    calls = (pairs.pivot_table(index=["rate", "other"], columns="baseline_seed", values=f"{reference} is",
                               aggfunc="first").dropna() if len(pairs) else pd.DataFrame())
    return pd.DataFrame(shifts, columns=["baseline_seed", "criterion", "rate", "shift", "ci"]), calls


def baseline_seed_markdown(points: pd.DataFrame, reference_seed: int = 0, reference: str = "fpgm",
                           score: str = "dice_positive_after", score_name: str = "positive-pair Dice") -> str:
    """The two answers of `baseline_seeds` as paragraphs: how far the other baselines move each point, and whether
    `reference`'s calls against the other criteria come out the same on every baseline."""
    shifts, calls = baseline_seeds(points, reference_seed, reference, score)
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
        lines.append(f"**Does the ranking of criteria survive another baseline?** {reference.upper()} against each "
                     f"other criterion, paired by fine-tuning seed within each baseline (baseline "
                     f"{' / '.join(str(b) for b in calls.columns)}): " + "; ".join(parts)
                     + f". The calls agree in {int((calls.nunique(axis=1) == 1).sum())} of {len(calls)}.")
    return "\n\n".join(lines)
