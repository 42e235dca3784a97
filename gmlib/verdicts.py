"""The study's one decision rule: every verdict of chapters 07, 11, 12 (and the README) is a call of `decide`.

A comparison is n paired differences d_1..d_n (FPGM minus L1 seed by seed, a loss minus a bar, ...): mean m,
standard error se = s / sqrt(n), 95 % t interval m ± t(0.975, n-1) se, two-sided p of the t test of m = 0. Its call:

- "equivalent": the 95 % interval lies inside ± margin (TOST, Schuirmann 1987, at 2.5 % per side);
- "ahead" / "behind": p, Holm-adjusted over the family of comparisons it belongs to (Holm 1979, step-down
  Bonferroni), is below 5 % (the one-sided test in the difference's direction at 2.5 %) AND |m| > margin;
- "not separated": anything else, a single seed included.

The margin is the smallest difference a practitioner would act on, stated per metric in MARGINS before any number is
read: 0.01 positive-pair Dice (a third of chapter 07's "nearly lossless" bar of 0.03, twice the bar of 0.005 on
which the baseline was declared converged), 0.005 Kaggle Dice (half of it: Kaggle Dice averages in the empty strips,
which every network scores alike, so its differences run smaller; no verdict of the study uses it yet), 0.01 balanced
accuracy on the real ELPV cells of chapter 13 (half its nearly-lossless bar of 0.02; one of 654 test cells moves it by
0.11 or 0.24 points). Holm rather
than Benjamini-Hochberg: a verdict is a claim about each comparison, so the family-wise error is what is controlled.
Uncorrected equivalence: a 95 % interval inside the margin is already a 2.5 % test per side.
"""
import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["MARGINS", "ALPHA", "CALLS", "NAMES", "REASONS", "rule_markdown", "holm", "summarise", "decide", "against_bar",
           "tally", "tally_text"]

MARGINS = {"dice_positive": 0.01, "dice_kaggle": 0.005, "balanced_accuracy": 0.01}
ALPHA = 0.05
CALLS = ("ahead", "behind", "equivalent", "not separated")
NAMES = {"dice_positive": "positive-pair Dice", "dice_kaggle": "Kaggle Dice", "balanced_accuracy": "balanced accuracy"}
# why each margin is what it is, in the words of rule_markdown (the bar is filled in)
REASONS = {"dice_positive": "a third of {bar}: a difference a practitioner would not choose a criterion for",
           "dice_kaggle": "half the positive-pair margin: Kaggle Dice averages in the empty strips",
           "balanced_accuracy": "half of {bar}, four to nine test cells: a difference a practitioner would not choose "
                                "a criterion for"}


def rule_markdown(metric: str = "dice_positive", bar: float | None = None) -> str:
    """The rule in one paragraph, with the margin of `metric` (and chapter 07's nearly-lossless `bar` when given),
    for the top of every chapter that draws verdicts."""
    bar_name = f"the nearly-lossless bar of {bar}" if bar else "chapter 07's nearly-lossless bar"
    why = f" ({REASONS[metric].format(bar=bar_name)})"
    return ("**The decision rule** (`gmlib.verdicts`, one for every verdict of the study). A comparison is a paired "
            f"difference over fine-tuning seeds with its 95 % t interval. It is *equivalent* when that interval lies "
            f"inside ± {MARGINS[metric]} {NAMES[metric]}{why}; *ahead* or *behind* when the t test, Holm-corrected "
            f"over the family of comparisons it belongs to, gives p < {ALPHA} and the mean difference exceeds the "
            "margin; otherwise *not separated*. A loss against a bar is *within* or *beyond* it by the same test "
            "with the bar for zero, else *undecided*. Every interval is over the fine-tuning seeds of one trained "
            "baseline (seed 0), so every verdict is about that baseline; a second baseline is a question of its own.")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family):
    p_(i) * (k - i + 1), made monotone, capped at 1 (k: the number of p-values)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    k = int(ok.sum())
    if k:
        order = np.argsort(p[ok])
        adjusted = np.minimum(1.0, np.maximum.accumulate(p[ok][order] * (k - np.arange(k))))
        values = np.empty(k)
        values[order] = adjusted
        out[ok] = values
    return out


def summarise(differences, center: float = 0.0) -> dict:
    """mean, ci (half-width of the 95 % t interval), n and p (two-sided t test of mean `center`) of paired
    differences; ci and p are NaN below two values, p is 0 for a mean off `center` with no spread."""
    d = np.asarray([x for x in differences if not (x is None or math.isnan(x))], dtype=float)
    n = len(d)
    if n == 0:
        return {"mean": math.nan, "ci": math.nan, "n": 0, "p": math.nan}
    mean = float(d.mean())
    if n == 1:
        return {"mean": mean, "ci": math.nan, "n": 1, "p": math.nan}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return {"mean": mean, "ci": 0.0, "n": n, "p": 0.0 if mean != center else 1.0}
    return {"mean": mean, "ci": float(stats.t.ppf(0.975, n - 1) * se), "n": n,
            "p": float(2 * stats.t.sf(abs(mean - center) / se, n - 1))}


def decide(frame: pd.DataFrame, margin: float, alpha: float = ALPHA, center: float = 0.0) -> pd.DataFrame:
    """`frame` (columns mean, ci, n, p of `summarise`: one row per comparison, the whole frame one family) with
    p_holm and call added: equivalent / ahead / behind / not separated (the module's rule, around `center`)."""
    out = frame.copy()
    out["p_holm"] = holm(out["p"]) if len(out) else []
    off = out["mean"] - center
    inside = (out["n"] > 1) & (off - out["ci"] > -margin) & (off + out["ci"] < margin)
    separated = (out["p_holm"] < alpha) & (off.abs() > margin)
    out["call"] = np.where(inside, "equivalent", np.where(separated, np.where(off > 0, "ahead", "behind"),
                                                         "not separated"))
    return out


def against_bar(frame: pd.DataFrame, bar: float, alpha: float = ALPHA) -> pd.DataFrame:
    """A quantity against a bar (chapter 07's loss against "nearly lossless"): `frame` holds `summarise(values,
    center=bar)` per row, the frame one family. The rule with the bar for centre and no margin: "within the bar"
    (below it, Holm-corrected p < alpha), "beyond the bar" (above it) or "undecided"."""
    words = {"ahead": "beyond the bar", "behind": "within the bar", "equivalent": "undecided",
             "not separated": "undecided"}
    called = decide(frame, 0.0, alpha, center=bar)
    return called.assign(call=called["call"].map(words))


def tally(calls) -> dict:
    """{call: count} in the order of CALLS, zero counts kept."""
    calls = list(calls)
    return {c: calls.count(c) for c in CALLS}


def tally_text(calls) -> str:
    """"ahead 0, behind 2, equivalent 1, not separated 4 of 7"."""
    counts = tally(calls)
    return ", ".join(f"{c} {counts[c]}" for c in CALLS) + f" of {sum(counts.values())}"
