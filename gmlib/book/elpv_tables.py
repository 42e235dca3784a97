"""Chapter 13's tables, read from the store: the real-data arm's baselines, choices, grid and comparisons.

Nothing here computes a network: each function reads stored records (`compute=False`), so a chapter rendered while
the arm is still computing shows what is stored and says what is missing. Verdicts follow `gmlib.verdicts`, with
the margin and the "nearly lossless" bar of balanced accuracy stated here, before any number is read.
"""
import pandas as pd

from .. import verdicts
from . import findings
from .elpv import DESIGN, ElpvStudy, chosen_lr, chosen_setup, planned_points

__all__ = ["MARGIN", "BAR", "PUBLISHED", "progress", "baselines", "learning_curves", "choices", "lr_choice",
           "grid", "figure5", "paired", "function_kept", "split_table", "budgets", "inherited", "by_start",
           "start_calls", "allocation", "allocation_calls", "deployment", "seg_baselines", "seg_points", "seg_calls",
           "stage_counts", "equal_macs", "collect", "answer_markdown", "pending", "loss_table",
           "calls_table", "checks", "claims", "QUESTIONS"]

# Balanced accuracy on 654 test cells: one cell moves it by 0.11 (functional) or 0.24 (defective) points. A
# practitioner would not choose a criterion for less than a point (the margin, gmlib.verdicts'); "nearly lossless" is
# a loss of at most 2 points, about FPGM's own ImageNet figure (-0.56 top-1 at 30 %) scaled to a two-class task whose
# baseline errs about ten times as often.
MARGIN = verdicts.MARGINS["balanced_accuracy"]
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
        base = study.baseline_scores(**{k: v for k, v in point.items() if k != "kind"})
        if base is None:
            continue
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


def figure5(points: pd.DataFrame, baseline_score: float, metric: str = "balanced_accuracy",
            bar: float = BAR) -> pd.DataFrame:
    """Per criterion x rate: the loss of test `metric` against the baseline after fine-tuning (mean, 95 % interval
    over seeds) and its call against `bar` (within / beyond / undecided, Holm over the table)."""
    rows = []
    for (criterion, rate), g in points.groupby(["criterion", "rate"], sort=False):
        s = verdicts.summarise(baseline_score - g[f"test_{metric}_after"], center=bar)
        rows.append({"criterion": criterion, "rate": rate, "MACs removed (%)": g["macs_reduction"].mean(), **s})
    frame = pd.DataFrame(rows)  # mean: the loss itself; p: its t test against the bar
    return verdicts.against_bar(frame, bar) if not frame.empty else frame


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


def stage_counts(study: ElpvStudy) -> dict:
    """{stage: (stored, planned)}: what the answers below can rest on."""
    return {r.stage: (int(r.stored), int(r.planned)) for r in progress(study).itertuples()}


def split_table(study: ElpvStudy) -> pd.DataFrame:
    """Cells per split and expert grade (defect probability), with the defective share (probability >= 0.5)."""
    rows = []
    for name, idx in (("train", study.train_idx), ("validation", study.val_idx), ("test", study.test_idx)):
        grades = study.data.classes[idx]
        row = {"split": name, "cells": len(idx)}
        row.update({f"p = {g}": int((grades == i).sum()) for i, g in enumerate(("0", "1/3", "2/3", "1"))})
        row["defective"] = float((grades >= 2).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _paired_calls(wide: pd.DataFrame, pairs, by, margin: float) -> pd.DataFrame:
    """For each group of `by` in `wide` (one column per arm, one row per seed): first minus second of every pair,
    seed by seed, summarised and called under the rule with `margin`, the whole table one family."""
    rows = []
    for key, g in wide.groupby(level=by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for first, second in pairs:
            if first in g and second in g:
                diff = (g[first] - g[second]).dropna()
                rows.append({**dict(zip(by, key)), "comparison": f"{first} − {second}", **verdicts.summarise(diff)})
    frame = pd.DataFrame(rows)
    return verdicts.decide(frame, margin) if not frame.empty else frame


def budgets(study: ElpvStudy) -> pd.DataFrame:
    """Per rate, fine-tuning epochs and seed of the budgets stage: FPGM's pruned network fine-tuned from its
    inherited weights, and the same architecture trained as long from fresh weights (test balanced accuracy)."""
    lr = None if study.baseline_missing() else chosen_lr(study)
    if lr is None:
        return pd.DataFrame()
    rows = []
    for rate in DESIGN["budget_rates"]:
        for epochs in (DESIGN["epochs"], *DESIGN["budget_epochs"]):
            for seed in range(DESIGN["budget_seeds"]):
                tuned = study.finetuned_point("fpgm", rate, seed=seed, epochs=epochs, lr=lr, compute=False)
                fresh = study.fresh_point(rate, seed=seed, epochs=epochs, compute=False)
                if tuned is not None and fresh is not None:
                    rows.append({"rate": rate, "epochs": epochs, "seed": seed,
                                 "inherited": tuned["test_balanced_accuracy_after"],
                                 "fresh": fresh["test_balanced_accuracy_after"]})
    return pd.DataFrame(rows)


def inherited(points: pd.DataFrame) -> pd.DataFrame:
    """Inherited minus fresh weights, paired by seed (the same batches), per rate and budget: what the pretrained
    filters FPGM keeps are worth after each budget, called under the rule (one family)."""
    if points.empty:
        return points
    wide = points.set_index(["rate", "epochs", "seed"])[["inherited", "fresh"]]
    return _paired_calls(wide, [("inherited", "fresh")], ["rate", "epochs"], MARGIN)


def by_start(study: ElpvStudy) -> pd.DataFrame:
    """Test balanced accuracy after fine-tuning of the criteria of the scratch_init stage, on the pretrained and on
    the random-init baseline (its rates and seeds), with the loss against each one's own baseline."""
    lr = None if study.baseline_missing() else chosen_lr(study)
    if lr is None:
        return pd.DataFrame()
    rows = []
    for start, pretrained in (("ImageNet", True), ("random init", False)):
        if study.baseline_missing(pretrained=pretrained):
            continue
        base = study.baseline(pretrained=pretrained).test["balanced_accuracy"]
        for rate in DESIGN["scratch_rates"]:
            for criterion in DESIGN["scratch_criteria"]:
                for seed in range(DESIGN["scratch_seeds"]):
                    r = study.finetuned_point(criterion, rate, seed=seed, epochs=DESIGN["epochs"], lr=lr,
                                              pretrained=pretrained, compute=False)
                    if r is not None:
                        score = r["test_balanced_accuracy_after"]
                        rows.append({"start": start, "rate": rate, "criterion": criterion, "seed": seed,
                                     "score": score, "loss": base - score})
    return pd.DataFrame(rows)


def start_calls(points: pd.DataFrame) -> pd.DataFrame:
    """FPGM and L1 against random, and FPGM against L1, paired by seed, per start and rate (one family): does the
    criterion matter more on filters learnt from ImageNet than on filters learnt from these cells alone?"""
    if points.empty:
        return points
    if set(points["start"]) != {"ImageNet", "random init"}:
        return pd.DataFrame()  # the question is a contrast of the two starts: nothing to call with one
    wide = points.pivot_table(index=["start", "rate", "seed"], columns="criterion", values="score")
    return _paired_calls(wide, [("fpgm", "random"), ("l1", "random"), ("fpgm", "l1")], ["start", "rate"], MARGIN)


def allocation(study: ElpvStudy) -> pd.DataFrame:
    """One row per stored allocation point (method, MACs cut, seed): MACs removed, and test balanced accuracy
    right after pruning, after recalibration and after fine-tuning."""
    if study.baseline_missing() or chosen_lr(study) is None:
        return pd.DataFrame()
    rows = []
    for point in planned_points(study, "allocation"):
        r = study.run(point, compute=False)
        if r is not None:
            rows.append({"method": point["method"], "cut": point["cut"], "seed": point["seed"],
                         "macs_reduction": r["macs_reduction"],
                         **{f"test_balanced_accuracy_{s}": r[f"test_balanced_accuracy_{s}"]
                            for s in ("before", "recal", "after")}})
    return pd.DataFrame(rows)


def allocation_calls(points: pd.DataFrame) -> pd.DataFrame:
    """Each allocation minus the uniform rate at the same MACs cut, paired by fine-tuning seed (one family)."""
    if points.empty:
        return points
    wide = points.pivot_table(index=["cut", "seed"], columns="method", values="test_balanced_accuracy_after")
    others = [m for m in DESIGN["allocation_methods"] if m != "uniform"]
    return _paired_calls(wide, [(m, "uniform") for m in others], ["cut"], MARGIN)


def deployment(study: ElpvStudy, **timing) -> pd.DataFrame:
    """The deployment record (`ElpvStudy.deployment`'s `timing` arguments: rounds, threads) as a table: per FPGM rate
    (0: the baseline) and runtime, MMACs, milliseconds per cell (median of the interleaved rounds), speed-up over the
    baseline in the same runtime, test balanced accuracy and file size; empty until it is stored."""
    record = None if study.baseline_missing() or chosen_lr(study) is None else \
        study.deployment(compute=False, **timing)
    if record is None:
        return pd.DataFrame()
    rows = pd.DataFrame(record["rows"])
    base_ms = rows[rows["rate"] == 0.0].set_index("runtime")["ms"]
    return pd.DataFrame({"rate": rows["rate"], "runtime": rows["runtime"], "MMACs": rows["macs"] / 1e6,
                         "ms per cell": rows["ms"], "speed-up": rows["runtime"].map(base_ms) / rows["ms"],
                         "balanced accuracy": rows["test_balanced_accuracy"], "MB": rows["size_bytes"] / 1e6})


def seg_baselines(study: ElpvStudy) -> pd.DataFrame:
    """The segmentation arm's two baselines (FPN on MobileNetV2, ImageNet or random-init encoder): test Dice."""
    rows = []
    for start, pretrained in (("ImageNet", True), ("random init", False)):
        base = study.run(dict(kind="seg_baseline", pretrained=pretrained), compute=False)
        if base is not None:
            rows.append({"encoder": start, "positive-pair Dice": base.scores["dice_positive"],
                         "Kaggle Dice": base.scores["dice_kaggle"]})
    return pd.DataFrame(rows)


def seg_points(study: ElpvStudy) -> pd.DataFrame:
    """One row per stored point of the segmentation grid: encoder start, criterion, rate, seed, MACs removed and
    positive-pair Dice after pruning, recalibration and fine-tuning."""
    rows = []
    for point in planned_points(study, "seg_grid"):
        if study.stored(point):
            r = study.run(point)
            rows.append({"encoder": "ImageNet" if point["pretrained"] else "random init",
                         "criterion": point["criterion"], "rate": point["rate"], "seed": point["seed"],
                         "macs_reduction": r["macs_reduction"],
                         **{f"dice_positive_{s}": r[f"dice_positive_{s}"] for s in ("before", "recal", "after")}})
    return pd.DataFrame(rows)


def seg_calls(points: pd.DataFrame) -> pd.DataFrame:
    """Chapter 07's question on the segmentation arm: FPGM against L1 and against random, paired by seed, per
    encoder start and rate, under the rule with positive-pair Dice's margin (one family)."""
    if points.empty:
        return points
    wide = points.pivot_table(index=["encoder", "rate", "seed"], columns="criterion", values="dice_positive_after")
    return _paired_calls(wide, [("fpgm", "l1"), ("fpgm", "random")], ["encoder", "rate"],
                         verdicts.MARGINS["dice_positive"])


def equal_macs(points: pd.DataFrame) -> pd.DataFrame:
    """FPGM minus each other criterion at the same share of MACs removed (`findings.at_equal_macs`: each criterion's
    fine-tuned balanced accuracy interpolated in MACs removed, seed by seed), one family: the primary comparison,
    as in chapter 07, since the criteria remove up to two points of MACs apart at one nominal rate."""
    if points.empty:
        return points
    rates = points.groupby(["criterion", "seed"])["rate"].transform("nunique")
    points = points[rates == points["rate"].nunique()]  # whole curves only: a seed still computing would narrow them
    frame = points.assign(baseline_seed=0, policy="or-merge", steps=DESIGN["epochs"], lr=0.0,
                          balanced_accuracy_after=points["test_balanced_accuracy_after"])
    return findings.at_equal_macs(frame, "balanced_accuracy_after")


def collect(study: ElpvStudy, bar: float = BAR) -> dict:
    """Every table of chapter 13 from the store, computed once (losses against `bar`): what `answer_markdown`
    reads."""
    found = {"counts": stage_counts(study), "baselines": baselines(study), "grid": grid(study), "bar": bar,
             "lr": None if study.baseline_missing() else chosen_lr(study)}
    base = _baseline(study)
    found["figure5"] = figure5(found["grid"], base.test["balanced_accuracy"], bar=bar) if base is not None \
        else pd.DataFrame()
    found["macs"], found["paired"] = equal_macs(found["grid"]), paired(found["grid"])
    found["kept"] = function_kept(study)
    found["budgets"] = budgets(study)
    found["inherited"] = inherited(found["budgets"])
    found["by_start"] = by_start(study)
    found["starts"] = start_calls(found["by_start"])
    found["allocation"] = allocation(study)
    found["allocation_calls"] = allocation_calls(found["allocation"])
    found["deployment"] = deployment(study)
    found["seg_baselines"], found["seg_points"] = seg_baselines(study), seg_points(study)
    found["seg_calls"] = seg_calls(found["seg_points"])
    return found


def _signed(value, digits=3) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _pm(row) -> str:
    return f"{row['mean']:+.3f} ± {row['ci']:.3f}" if row["ci"] == row["ci"] else f"{row['mean']:+.3f} (one seed)"


def pending(found: dict, stage: str) -> str:
    """"Not answered yet: k of n points of the `stage` stage are stored" (a section whose stage is open)."""
    return f"Not answered yet: {_stored(found, stage)}."


def _stored(found, stage) -> str:
    stored, planned = found["counts"][stage]
    return f"{stored} of {planned} points of the `{stage}` stage are stored"


def _named_calls(frame: pd.DataFrame, name, column="call", calls=("ahead", "behind", "equivalent")) -> str:
    """"ahead at A (+x ± y); equivalent at B (...)" for the rows with those calls; "" when there are none."""
    parts = []
    for call in calls:
        rows = frame[frame[column] == call]
        if len(rows):
            parts.append(f"{call} " + ", ".join(f"{name(r)} ({_pm(r)})" for r in rows.to_dict("records")))
    return "; ".join(parts)


def _rates_of(frame, call) -> str:
    return ", ".join(f"{r:.0%}" for r in sorted(frame[frame["call"] == call]["rate"]))


def _baseline_answer(found):
    b = found["baselines"].set_index("start") if not found["baselines"].empty else None
    if b is None or "ImageNet" not in b.index:
        return None
    p, deitsch = b.loc["ImageNet"], PUBLISHED.iloc[0]["accuracy"]
    text = (f"MobileNetV2 fine-tuned from ImageNet classifies {p['accuracy']:.1%} of the test cells right "
            f"({p['balanced accuracy']:.3f} balanced accuracy, {p['grade accuracy']:.1%} of the four grades), "
            f"{_signed(100 * (p['accuracy'] - deitsch), 1)} points from Deitsch et al.'s fine-tuned VGG-19 "
            f"({deitsch:.2%}, 300 px, GPU) at 128 px on a CPU budget, above their SVM "
            f"({PUBLISHED.iloc[1]['accuracy']:.2%}).")
    if "random init" in b.index:
        r = b.loc["random init"]
        text += (f" From random init the same network and recipe reach {r['accuracy']:.1%} "
                 f"({r['balanced accuracy']:.3f} balanced, {r['grade accuracy']:.1%} of the grades): ImageNet's "
                 f"filters are worth {_signed(100 * (p['balanced accuracy'] - r['balanced accuracy']), 1)} points "
                 "of balanced accuracy here.")
    return f"{p['accuracy']:.1%} accuracy against Deitsch et al.'s {deitsch:.2%}", text


def _lossless_answer(found):
    f5 = found["figure5"]
    if f5.empty:
        return None
    fp = f5[f5.criterion == "fpgm"]
    stored, planned = found["counts"]["grid"]
    words = "; ".join(f"{call} at {_rates_of(fp, call)}" for call in ("within the bar", "undecided",
                                                                      "beyond the bar") if (fp.call == call).any())
    low = fp[fp.rate <= 0.3]
    verdict = "does not hold" if (low.call == "beyond the bar").any() else "holds" if \
        len(low) == 3 and (low.call == "within the bar").all() else "is not decided"
    low_words = "; ".join(f"{call} at {_rates_of(low, call)}" for call in ("within the bar", "undecided",
                                                                          "beyond the bar") if (low.call == call).any())
    text = (f"After the grid's fine-tuning budget ({DESIGN['epochs']} epoch of the training cells), FPGM's loss of "
            f"balanced accuracy against the bar of {found['bar']} is {words} (Holm over the {len(f5)} criterion × "
            f"rate cells; {stored} of {planned} grid points stored). The paper's claim {verdict} on real cells with "
            "pretrained filters" + ("." if verdict != "is not decided" else ": more seeds would decide it."))
    return f"{verdict.removeprefix('is ')}: {low_words}", text


def _criteria_answer(found):
    macs, pairs = found["macs"], found["paired"]
    if macs.empty:
        return None
    calls = _renamed(macs)
    named = _named_calls(calls.rename(columns={"difference": "mean"}),
                         lambda r: f"against {r['other']} at −{r['macs']:.0f} %")
    text = (f"At equal MACs (each criterion's fine-tuned balanced accuracy interpolated in MACs removed, seed by "
            f"seed, as in chapter 07), FPGM against {', '.join(sorted(set(macs.other)))} is "
            f"{verdicts.tally_text(calls['call'])} (Holm over {len(macs)})" + (f": {named}." if named else ".")
            + f" At the same nominal rate it is {verdicts.tally_text(pairs['call'])} (Holm over {len(pairs)}).")
    ahead = int((calls["call"] == "ahead").sum())
    verdict = f"FPGM ahead in {ahead} of {len(calls)}" if ahead else \
        f"not shown: {verdicts.tally_text(calls['call'])} at equal MACs"
    return verdict, text


def _kept_answer(found):
    kept = found["kept"]
    if kept.empty or not (kept.rate == 0.3).any():
        return None
    at = kept[kept.rate == 0.3].sort_values("agree, recalibrated", ascending=False)
    order = ", ".join(f"{r['criterion']} {r['agree, recalibrated']:.3f}" for r in at.to_dict("records"))
    text = (f"Before any fine-tuning, at 30 %, the share of test cells whose call agrees with the unpruned "
            f"network's after BatchNorm recalibration: {order}. Right after pruning, before recalibration, every "
            f"criterion agrees on {at['agree, pruned'].min():.3f}-{at['agree, pruned'].max():.3f} of the cells.")
    first = at.iloc[0]
    fpgm = at.set_index("criterion")["agree, recalibrated"].get("fpgm")
    verdict = f"most: {first['criterion']} ({first['agree, recalibrated']:.3f})" + \
        (f"; FPGM {fpgm:.3f}" if fpgm is not None and first["criterion"] != "fpgm" else "")
    return verdict, text


def _inherited_answer(found):
    inh = found["inherited"]
    if inh.empty:
        return None
    text = ("FPGM's pruned network fine-tuned minus the same architecture trained as long from fresh weights, "
            "paired by seed: " + "; ".join(f"{r['rate']:.0%} after {r['epochs']} epoch{'s' if r['epochs'] > 1 else ''}"
                                           f": {_pm(r)}, {r['call']}" for r in inh.to_dict("records"))
            + f" (Holm over {len(inh)}).")
    ahead = inh[inh.call == "ahead"]
    verdict = (f"worth something at {len(ahead)} of {len(inh)} rate × budget cells" if len(ahead) else
               f"not shown: {verdicts.tally_text(inh['call'])}")
    return verdict, text


def _starts_answer(found):
    st = found["starts"]
    if st.empty:
        return None
    parts = []
    for start, g in st.groupby("start", sort=False):
        named = _named_calls(g, lambda r: f"{r['comparison']} at {r['rate']:.0%}")
        parts.append(f"on the {start} baseline {verdicts.tally_text(g['call'])}" + (f" ({named})" if named else ""))
    text = ("FPGM and L1 against random, and FPGM against L1, paired by seed: " + "; ".join(parts)
            + f" (Holm over {len(st)}).")
    separated = {start: int(g["call"].isin(["ahead", "behind"]).sum()) for start, g in st.groupby("start")}
    verdict = ", ".join(f"{start}: {n} of {int((st.start == start).sum())} separated" for start, n in separated.items())
    return verdict, text


def _allocation_answer(found):
    al = found["allocation_calls"]
    if al.empty:
        return None
    text = ("At equal MACs, each allocation minus the uniform rate, paired by seed: "
            + "; ".join(f"{r['comparison']} at −{r['cut']:.0%} MACs: {_pm(r)}, {r['call']}" for r in al.to_dict("records"))
            + f" (Holm over {len(al)}).")
    return verdicts.tally_text(al["call"]), text


def _deployment_answer(found):
    dep = found["deployment"]
    if dep.empty:
        return None
    rows = dep[dep.rate > 0]
    text = ("On one cell in ONNX Runtime, one thread: " + "; ".join(
        f"{r['rate']:.0%} FPGM in {r['runtime']} {r['speed-up']:.2f}× the baseline's speed at "
        f"{r['balanced accuracy']:.3f} balanced accuracy" for r in rows.to_dict("records"))
        + " (one fine-tuning seed, timed side by side).")
    best = rows.sort_values("speed-up").iloc[-1]
    return f"up to {best['speed-up']:.2f}× ({best['rate']:.0%}, {best['runtime']})", text


def _segmentation_answer(found):
    sc = found["seg_calls"]
    if sc.empty:
        return None
    text = ("On the synthetic strips with an FPN on MobileNetV2, FPGM against L1 and random, paired by seed: "
            + "; ".join(f"{e} encoder {verdicts.tally_text(g['call'])}" for e, g in sc.groupby("encoder"))
            + f" (Holm over {len(sc)}, margin {verdicts.MARGINS['dice_positive']} positive-pair Dice).")
    ahead = int((sc["call"] == "ahead").sum())
    return (f"FPGM ahead in {ahead} of {len(sc)}" if ahead else f"not shown: {verdicts.tally_text(sc['call'])}"), text


# (question, the stage it waits for, its answer): the order of the chapter's answer and of chapter 11's rows
QUESTIONS = (
    ("Real cells: how good is the pretrained baseline?", "baselines", _baseline_answer),
    ("Real cells: is 10-30 % nearly lossless?", "grid", _lossless_answer),
    ("Real cells: does FPGM beat the other criteria?", "grid", _criteria_answer),
    ("Real cells: which criterion keeps most of the function before fine-tuning?", "grid", _kept_answer),
    ("Real cells: do inherited weights beat fresh ones?", "budgets", _inherited_answer),
    ("Real cells: does the criterion matter more on pretrained filters?", "scratch_init", _starts_answer),
    ("Real cells: does where to prune matter?", "allocation", _allocation_answer),
    ("Real cells: what does a factory PC buy?", "deployment", _deployment_answer),
    ("Pretrained encoder: does chapter 07's answer change?", "seg_grid", _segmentation_answer),
)


def claims(found: dict) -> pd.DataFrame:
    """One row per question of chapter 13: question, verdict in a few words, chapter ("13") and the paragraph that
    answers it, each from the stored tables under the rule; an open stage answers "not answered yet"."""
    rows = []
    for question, stage, answer in QUESTIONS:
        got = answer(found)
        verdict, text = got if got is not None else (f"not answered yet ({_stored(found, stage)})",
                                                     pending(found, stage))
        rows.append({"question": question, "verdict": verdict, "chapter": "13",
                     "paragraph": f"**{question}** {text}"})
    return pd.DataFrame(rows)


def answer_markdown(found: dict) -> str:
    """The chapter's answers, one paragraph per question (`claims`), from the stored tables under the rule."""
    return "\n\n".join(claims(found)["paragraph"])


def _renamed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"fpgm is": "call"})


def _interval(row) -> str:
    return f"{row['mean']:+.3f} ± {row['ci']:.3f}" if row["ci"] == row["ci"] else f"{row['mean']:+.3f}"


def loss_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`figure5` for reading: per criterion and rate, MACs removed, the loss with its interval, seeds and call."""
    if frame.empty:
        return frame
    return pd.DataFrame({"criterion": frame["criterion"], "rate": frame["rate"],
                         "MACs removed (%)": frame["MACs removed (%)"].round(1),
                         "loss": [_interval(r) for r in frame.to_dict("records")], "seeds": frame["n"],
                         "call": frame["call"]}).set_index(["criterion", "rate"]).sort_index()


def calls_table(frame: pd.DataFrame, keys) -> pd.DataFrame:
    """A called comparison table (mean, ci, n, p_holm, call) for reading: `keys`, the difference with its interval,
    pairs, Holm's p and the call."""
    if frame.empty:
        return frame
    return pd.DataFrame({**{k: frame[k] for k in keys}, "difference": [_interval(r) for r in frame.to_dict("records")],
                         "pairs": frame["n"], "p (Holm)": frame["p_holm"].round(3),
                         "call": frame["call"]}).set_index(list(keys))


def checks(study: ElpvStudy, found: dict) -> dict:
    """What chapter 13's argument rests on, each able to fail: {statement: holds}."""
    base = study.baseline()
    functional = float((study.probabilities(base.model, "test")[:, 0] < 0.5).float().mean()) \
        if study.outputs == 1 else None
    kept, points, split = found["kept"], found["grid"], split_table(study)
    out = {
        "the three splits are disjoint and hold every cell once":
            len(set(study.train_idx) | set(study.val_idx) | set(study.test_idx)) == len(study.data.classes)
            == split["cells"].sum(),
        "each split's defective share is within 1 point of the whole set's":
            bool((split["defective"] - float((study.data.classes >= 2).mean())).abs().max() <= 0.01),
        "the recipe is the setup chosen on validation": chosen_setup(study) == {"head": study.recipe.head,
                                                                                "size": study.recipe.size},
        "the pretrained baseline beats the random-init one on validation": found["baselines"].empty or
            study.baseline().val["balanced_accuracy"] > study.baseline(pretrained=False).val["balanced_accuracy"],
    }
    if not kept.empty and functional is not None:
        middle = kept[kept.rate.between(0.4, 0.6) & (kept.criterion != "random")]
        out[f"right after pruning at 40-60 %, the deterministic criteria agree with the baseline on its share of "
            f"'functional' calls ({functional:.3f}), within 0.01"] = bool(
                ((middle["agree, pruned"] - functional).abs() <= 0.01).all())
        out["recalibration raises the mean agreement with the baseline"] = \
            kept["agree, recalibrated"].mean() > kept["agree, pruned"].mean()
    if not points.empty:
        macs = points.groupby(["criterion", "rate"])["macs_reduction"].mean()
        out["every criterion removes more MACs at a higher rate"] = all(
            g.sort_index().is_monotonic_increasing for _, g in macs.groupby(level="criterion"))
        spread = macs.groupby(level="rate").agg(lambda m: m.max() - m.min())
        out["at one rate the criteria's MACs removed lie within 3 points"] = bool((spread <= 3).all())
    return out
