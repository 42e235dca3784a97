"""Chapter 13's tables, read from the store: the real-data arm's baselines, choices, grid and comparisons.

Nothing here computes a network: each function reads stored records (`compute=False`), so a chapter rendered while
the arm is still computing shows what is stored and says what is missing. Verdicts follow `gmlib.verdicts`, with
the margin and the "nearly lossless" bar of balanced accuracy stated here, before any number is read.
"""
import pandas as pd

from . import verdicts
from .elpv import DESIGN, ElpvStudy, chosen_lr, planned_points

__all__ = ["MARGIN", "BAR", "PUBLISHED", "progress", "baselines", "learning_curves", "choices", "lr_choice",
           "grid", "figure5", "paired", "function_kept"]

# Balanced accuracy on 654 test cells: one cell moves it by 0.1-0.4 points. A practitioner would not choose a
# criterion for less than a point (the margin); "nearly lossless" is a loss of at most 2 points, about FPGM's own
# ImageNet figure (-0.56 top-1 at 30 %) scaled to a two-class task whose baseline errs about ten times as often.
MARGIN = 0.01
BAR = 0.02

# Published anchors on the same kind of split (stratified 75 / 25): the share of test cells classified right.
PUBLISHED = pd.DataFrame([
    ("Deitsch et al. 2019", "VGG-19, ImageNet, fine-tuned (GPU)", "binary (defect probability ≥ 0.5)", 0.8842),
    ("Deitsch et al. 2019", "SVM on KAZE/VGG features", "binary (defect probability ≥ 0.5)", 0.8244),
    ("later work", "ResNet-152, fine-tuned", "binary", 0.9013),
    ("later work", "lightweight CNN on CPU", "four grades", 0.835),
], columns=["source", "model", "task", "accuracy"])


def progress(study: ElpvStudy) -> pd.DataFrame:
    """Per stage of DESIGN: points stored of points planned (a stage whose inputs are missing plans none yet)."""
    rows = []
    for stage in DESIGN["stages"]:
        points = planned_points(study, stage) if stage in ("choices", "baselines", "lr") or \
            not study.baseline_missing() else []
        rows.append({"stage": stage, "stored": sum(study.stored(p) for p in points), "planned": len(points)})
    return pd.DataFrame(rows)


def _baseline(study, **overrides):
    return None if study.baseline_missing(**overrides) else study.baseline(**overrides)


def baselines(study: ElpvStudy) -> pd.DataFrame:
    """The pretrained and the random-init baseline: test scores, best epoch of how many, training time."""
    rows = []
    for start, pretrained in (("ImageNet", True), ("random init", False)):
        base = _baseline(study, pretrained=pretrained)
        if base is None:
            continue
        h = base.history
        best = int(h.loc[h["val_balanced_accuracy"].idxmax(), "epoch"])
        rows.append({"start": start, "accuracy": base.test["accuracy"],
                     "balanced accuracy": base.test["balanced_accuracy"],
                     "grade accuracy": base.test["accuracy_grades"], "best epoch": f"{best} of {len(h)}",
                     "training (min)": base.seconds / 60})
    return pd.DataFrame(rows)


def learning_curves(study: ElpvStudy) -> pd.DataFrame:
    """Validation balanced accuracy and training loss per epoch of every stored baseline of this resolution."""
    frames = []
    for start, pretrained in (("ImageNet", True), ("random init", False)):
        base = _baseline(study, pretrained=pretrained)
        if base is not None:
            frames.append(base.history.assign(start=start))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def choices(study: ElpvStudy) -> pd.DataFrame:
    """The choices stage: the pretrained network trained DESIGN["choice_epochs"] epochs with each head and at each
    resolution: validation (which chooses) and test scores, MACs and training seconds per epoch."""
    rows = []
    for point in planned_points(study, "choices"):
        overrides = {k: v for k, v in point.items() if k != "kind"}
        if study.baseline_missing(**overrides):
            continue
        base = study.baseline(**overrides)
        rows.append({"head": point["head"], "resolution": point["size"],
                     "val balanced accuracy": base.val["balanced_accuracy"],
                     "test balanced accuracy": base.test["balanced_accuracy"], "test accuracy": base.test["accuracy"],
                     "MMACs": base.macs / 1e6, "s per epoch": base.seconds / len(base.history)})
    return pd.DataFrame(rows)


def lr_choice(study: ElpvStudy) -> tuple[pd.DataFrame, float | None]:
    """The lr stage's validation scores (mean over its rates) and the lr they choose (None until all are stored)."""
    rows = []
    for lr in DESIGN["lr_candidates"]:
        for rate in DESIGN["lr_rates"]:
            r = study.finetuned_point("fpgm", rate, seed=0, epochs=DESIGN["epochs"], lr=lr, compute=False) \
                if not study.baseline_missing() else None
            if r is not None:
                rows.append({"lr": lr, "rate": rate, "val balanced accuracy": r["val_balanced_accuracy_after"]})
    frame = pd.DataFrame(rows)
    return frame, (chosen_lr(study) if not study.baseline_missing() else None)


def grid(study: ElpvStudy) -> pd.DataFrame:
    """One row per stored grid point (criterion, rate, seed): MACs removed, and each test score at each stage
    (`before`, `recal`: the pruned record; `after`: the fine-tuned seed)."""
    lr = None if study.baseline_missing() else chosen_lr(study)
    if lr is None:
        return pd.DataFrame()
    rows = []
    for point in planned_points(study, "grid"):
        if point["kind"] != "finetuned":
            continue
        tuned = study.run(point, compute=False)
        pruned = study.pruned_point(point["criterion"], point["rate"], seed=point["seed"], compute=False)
        if tuned is None or pruned is None:
            continue
        rows.append({"criterion": point["criterion"], "rate": point["rate"], "seed": point["seed"],
                     "macs_reduction": tuned["macs_reduction"],
                     **{k: v for k, v in pruned.items() if k.startswith("test_")},
                     **{k: v for k, v in tuned.items() if k.startswith("test_")}})
    return pd.DataFrame(rows)


def figure5(points: pd.DataFrame, baseline_score: float, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per criterion x rate: the loss of test `metric` against the baseline after fine-tuning (mean, 95 % interval
    over seeds) and its call against BAR (within / beyond / undecided, Holm over the table)."""
    rows = []
    for (criterion, rate), g in points.groupby(["criterion", "rate"], sort=False):
        s = verdicts.summarise(baseline_score - g[f"test_{metric}_after"], center=BAR)
        rows.append({"criterion": criterion, "rate": rate, "MACs removed (%)": g["macs_reduction"].mean(), **s})
    frame = pd.DataFrame(rows)  # mean: the loss itself; p: its t test against BAR
    return verdicts.against_bar(frame, BAR) if not frame.empty else frame


def paired(points: pd.DataFrame, reference: str = "fpgm", metric: str = "balanced_accuracy") -> pd.DataFrame:
    """`reference` minus every other criterion, seed by seed, at each rate, after fine-tuning: mean, 95 % interval
    and call under the rule (margin MARGIN, Holm over the whole table as one family)."""
    rows = []
    column = f"test_{metric}_after"
    wide = points.pivot_table(index=["rate", "seed"], columns="criterion", values=column)
    for other in [c for c in wide.columns if c != reference]:
        for rate, g in wide.groupby(level="rate"):
            diff = (g[reference] - g[other]).dropna()
            rows.append({"comparison": f"{reference} − {other}", "rate": rate, **verdicts.summarise(diff)})
    frame = pd.DataFrame(rows)
    return verdicts.decide(frame, MARGIN) if not frame.empty else frame


def function_kept(study: ElpvStudy) -> pd.DataFrame:
    """Per criterion x rate, before any fine-tuning: the share of test cells whose binary call agrees with the
    unpruned network's, right after pruning and after BatchNorm recalibration (mean over the random draws)."""
    rows = []
    if study.baseline_missing():
        return pd.DataFrame()
    for point in planned_points(study, "grid"):
        if point["kind"] != "pruned":
            continue
        r = study.run(point, compute=False)
        if r is not None:
            rows.append({"criterion": point["criterion"], "rate": point["rate"],
                         "agree, pruned": r["test_agree_binary_before"], "agree, recalibrated":
                         r["test_agree_binary_recal"], "TV distance, recalibrated": r["test_tv_distance_recal"]})
    frame = pd.DataFrame(rows)
    return frame.groupby(["criterion", "rate"], sort=False).mean().reset_index() if not frame.empty else frame
