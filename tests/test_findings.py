"""gmlib.findings: t intervals, paired comparisons by seed and the answers, on points whose truth is known."""
import math

import numpy as np
import pandas as pd
import pytest

from gmlib import findings


def test_interval_matches_the_t_formula():
    mean, half, n = findings.interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(findings.interval([5.0])[1]) and findings.interval([])[2] == 0


def points(shift):
    rng = np.random.default_rng(0)
    rows = []
    for rate in (0.1, 0.5):
        for seed in range(5):
            noise = rng.normal(0, 0.01)  # shared by both criteria: the pairing removes it
            for criterion, extra in (("fpgm", shift), ("l1", 0.0)):
                rows.append({"criterion": criterion, "policy": "or-merge", "steps": 10, "lr": 1e-3, "rate": rate,
                             "seed": seed, "macs_reduction": 50 * rate,
                             "dice_positive_after": 0.6 - 0.2 * rate + noise + extra})
    return pd.DataFrame(rows)


def test_paired_comparison_sees_a_small_shift_that_the_seed_noise_would_hide():
    ahead = findings.paired(points(0.005))
    assert set(ahead["fpgm is"]) == {"ahead"} and ahead["difference"].to_numpy() == pytest.approx(0.005)
    assert set(findings.paired(points(0.0))["fpgm is"]) == {"level"}
    assert set(findings.paired(points(-0.005))["fpgm is"]) == {"behind"}


def test_answers_and_the_verdict_text():
    found = findings.answers(points(0.0), {"dice_positive": 0.6}, lossless=0.05)
    at = found["loss"]
    assert at[(10, 0.1)]["nearly_lossless"] and at[(10, 0.5)]["degrades"]
    text = findings.verdict_markdown(found, lossless=0.05, low_rates=(0.1,), high_rates=(0.5,))
    assert "nearly lossless at 10% and degrades at 50%" in text and "level in 2" in text
    assert "is not tested past 40 %" in findings.verdict_markdown(found, lossless=0.05, high_rates=(0.9,))
    strict = findings.answers(points(0.0), {"dice_positive": 0.6}, lossless=0.01)  # 10 %: 0.020 ± 0.005
    assert "not nearly lossless at 10% (the whole interval above the bar)" in findings.verdict_markdown(
        strict, lossless=0.01, low_rates=(0.1,), high_rates=(0.5,))
    close = findings.answers(points(0.0), {"dice_positive": 0.6}, lossless=0.02)  # the bar inside the interval
    assert "undecided at 10%" in findings.verdict_markdown(close, lossless=0.02, low_rates=(0.1,), high_rates=(0.5,))


def test_the_verdict_is_given_for_every_budget_and_names_it_in_epochs():
    main = points(0.0)
    longer = main.assign(steps=40, dice_positive_after=main.dice_positive_after + 0.03)  # more steps, less loss
    found = findings.answers(main, {"dice_positive": 0.6}, lossless=0.01, budgets=longer)
    assert {s for s, _ in found["loss"]} == {10, 40} and len(found["pairs"]) == len(findings.paired(main))
    text = findings.verdict_markdown(found, lossless=0.01, low_rates=(0.1,), high_rates=(0.5,), steps_per_epoch=40)
    assert "After 10 steps (0.25 epoch) of fine-tuning" in text and "After 40 steps (1 epoch)" in text
    assert findings.budget_name(160, 40) == "160 steps (4 epochs)"


def test_figure5_table_has_means_and_intervals():
    table = findings.figure5_table(points(0.0), scores=("dice_positive",))
    row = table.loc[("fpgm", "or-merge", 10, 0.5)]
    assert row["seeds"] == 5 and row["dice_positive_after_ci"] > 0 and "dice_positive_before" not in table


def test_inherited_weights_pairs_pruned_and_scratch_by_seed_and_budget():
    pruned = points(0.0)
    scratch = pruned[pruned.criterion == "l1"].assign(criterion="scratch")
    scratch = scratch.assign(dice_positive_after=scratch.dice_positive_after - 0.004)  # fresh weights, a bit worse
    worth = findings.inherited(pruned, scratch)
    assert list(worth.rate) == [0.1, 0.5] and set(worth["inherited weights are"]) == {"worth something"}
    assert worth.difference.to_numpy() == pytest.approx(0.004) and (worth.pairs == 5).all()
    level = findings.inherited(pruned, pruned[pruned.criterion == "l1"].assign(criterion="scratch"))
    assert set(level["inherited weights are"]) == {"level"}
    text = findings.budget_markdown(findings.paired(pruned), worth, steps_per_epoch=10)
    assert "10 steps (1 epoch): ahead 0, behind 0, level 2 of 2" in text and "+0.004 ± 0.000 (worth something)" in text


def test_allocation_answers_pair_each_allocation_with_the_uniform_rate_and_weigh_it_against_the_criterion():
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(4):
        noise = rng.normal(0, 0.01)  # the seed's crops: shared by every allocation and criterion
        for method, gain in (("uniform", 0.0), ("sensitivity", 0.02), ("random", -0.0005 * seed)):
            for criterion, extra in (("fpgm", 0.002), ("l1", 0.0)):
                rows.append({"method": method, "cut": 0.5, "criterion": criterion, "seed": seed,
                             "reached": 0.5 + 0.001 * seed, "macs_reduction": 50.5,
                             "dice_positive_after": 0.7 + noise + gain + extra})
    text = findings.allocation_markdown(pd.DataFrame(rows))
    assert "within 0.30 points by the estimate" in text and "within 0.50 points as measured" in text
    assert "**Sensitivity allocation minus the uniform rate**" in text and "fpgm at −50%: +0.020 ± 0.000 (ahead)" in text
    assert "**Random allocation minus the uniform rate**" in text
    assert "here the allocation matters more" in text
    flat = pd.DataFrame(rows).assign(dice_positive_after=lambda t: t.dice_positive_after
                                     + np.where(t.criterion == "l1", -0.05, 0.0))  # now l1 is far worse
    assert "here the criterion matters more" in findings.allocation_markdown(flat)
    same = pd.DataFrame(rows).assign(dice_positive_after=lambda t: 0.7 + 0.01 * t.seed)  # only the seed matters
    assert "here neither moves the score beyond the seeds' noise" in findings.allocation_markdown(same)


def test_baseline_seed_answers_say_how_far_the_baseline_moves_points_and_whether_the_calls_survive():
    one = points(0.005).assign(baseline_seed=0)
    # the other baseline: every point 0.05 higher, and FPGM's edge gone at 50 % (level there)
    two = points(0.005).assign(baseline_seed=1, dice_positive_after=lambda t: t.dice_positive_after + 0.05)
    two.loc[(two.criterion == "fpgm") & (two.rate == 0.5), "dice_positive_after"] -= 0.005
    text = findings.baseline_seed_markdown(pd.concat([one, two]))
    assert "fpgm at 10%: +0.050" in text and "l1 at 50%: +0.050" in text and "4 of 4 shifts exceed" in text
    assert "against l1 at 10%: ahead / ahead" in text and "against l1 at 50%: ahead / level" in text
    assert "The calls agree in 1 of 2" in text
    assert findings.baseline_seed_markdown(one) == ""
    # a rate pruned on one baseline only is not compared across baselines
    extra = points(0.005).assign(baseline_seed=0, rate=lambda t: t.rate + 0.2)
    assert len(findings.baseline_seeds(pd.concat([one, two, extra]))[1]) == 2
