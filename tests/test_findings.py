"""gmlib.book.findings: t intervals, paired comparisons by seed and the answers, on points whose truth is known."""
import math

import numpy as np
import pandas as pd
import pytest

from gmlib.book import findings


def test_interval_matches_the_t_formula():
    mean, half, n = findings.interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 * 1.0 / math.sqrt(3), abs=1e-3)
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


def frames_of(main, **others):
    return {"main": main, **others}


def test_paired_comparison_sees_a_small_shift_that_the_seed_noise_would_hide():
    ahead = findings.paired(points(0.02))
    assert set(ahead["fpgm is"]) == {"ahead"} and ahead["difference"].to_numpy() == pytest.approx(0.02)
    assert set(findings.paired(points(-0.02))["fpgm is"]) == {"behind"}
    # a shift the pairing sees but smaller than the margin (0.01) is equivalent, never ahead
    assert set(findings.paired(points(0.005))["fpgm is"]) == {"equivalent"}
    assert set(findings.paired(points(0.0))["fpgm is"]) == {"equivalent"}
    assert findings.margin_of("dice_positive_after") == 0.01 and findings.margin_of("dice_kaggle_after") == 0.005


def noisy(shift, seeds=3, spread=0.03):
    """points whose pairing leaves noise of its own: FPGM minus L1 varies by `spread` from seed to seed."""
    out = points(shift)
    wobble = np.where(out.criterion == "fpgm", spread * (out.seed - out.seed.mean()), 0.0)
    return out.assign(dice_positive_after=out.dice_positive_after + wobble)[out.seed < seeds]


def test_paired_calls_not_separated_when_the_interval_is_wide():
    assert set(findings.paired(noisy(0.02))["fpgm is"]) == {"not separated"}


def test_equal_macs_interpolates_each_criterion_and_pairs_by_seed():
    base = points(0.0).assign(dice_positive_after=lambda t: 0.6 - 0.2 * t.rate + 0.01 * t.seed)  # straight lines
    # l1 removes 1.2 times fpgm's MACs at each rate, with the same score
    l1 = base.criterion == "l1"
    shifted = base.assign(macs_reduction=np.where(l1, 1.2 * base.macs_reduction, base.macs_reduction))
    out = findings.at_equal_macs(shifted, targets=(4, 10, 20, 26))
    assert list(out.macs) == [10, 20]  # 4 and 26 lie outside fpgm's (5 to 25 % MACs) or l1's (6 to 30) stored range
    # at 20 % MACs: fpgm at rate 0.4 (score 0.6 - 0.08), l1 at rate 0.333 (0.6 - 0.0667): fpgm behind by 0.0133
    assert out.set_index("macs").loc[20, "difference"] == pytest.approx(-0.2 * (0.4 - 20 / 60), abs=1e-9)
    assert out.set_index("macs").loc[20, "fpgm is"] == "behind"  # every seed alike: past the margin, p = 0
    assert out.set_index("macs").loc[10, "fpgm is"] == "equivalent"  # -0.2 * (0.2 - 0.1667) = -0.0067


def test_answers_call_every_comparison_once_and_the_loss_against_the_bar():
    main = points(0.0)
    longer = main.assign(steps=40, dice_positive_after=main.dice_positive_after + 0.03)  # more steps, less loss
    budgets = pd.concat([main[main.seed < 3], longer])  # the sweep's main-budget points are the main grid's
    found = findings.answers(frames_of(main, budgets=budgets), {"dice_positive": 0.6}, lossless=0.05, main_steps=10)
    assert len(found["pairs"]) == 4 and (found["pairs"].pairs == 5).all()  # 2 budgets x 2 rates, all five seeds
    assert not found["pairs"].duplicated(["steps", "rate"]).any()
    loss = found["loss"].set_index(["steps", "rate"])
    assert loss.loc[(10, 0.1), "call"] == "within the bar" and loss.loc[(10, 0.5), "call"] == "beyond the bar"
    assert loss.loc[(40, 0.1), "call"] == "within the bar"  # a loss of 0.02 - 0.03: below zero
    assert loss.loc[(40, 0.5), "call"] == "beyond the bar"  # 0.1 - 0.03 = 0.07 > 0.05
    text = findings.loss_markdown(found, steps_per_epoch=40)
    assert "After 10 steps (0.25 epoch) of fine-tuning" in text and "After 40 steps (1 epoch)" in text
    assert "within the bar at 10%; beyond the bar at 50%" in text and "Holm over the 4 budget × rate cells" in text
    assert findings.budget_name(160, 40) == "160 steps (4 epochs)"
    assert "not separated" in findings.criteria_markdown(found) or "equivalent" in findings.criteria_markdown(found)


def test_a_loss_near_the_bar_is_undecided():
    found = findings.answers(frames_of(noisy(0.0)), {"dice_positive": 0.6 + 0.02 - 0.02}, lossless=0.02,
                             main_steps=10)
    assert found["loss"].set_index("rate").loc[0.1, "call"] == "undecided"


def test_figure5_table_has_means_and_intervals():
    table = findings.figure5_table(points(0.0), scores=("dice_positive",))
    row = table.loc[("fpgm", "or-merge", 10, 0.5)]
    assert row["seeds"] == 5 and row["dice_positive_after_ci"] > 0 and "dice_positive_before" not in table


def test_inherited_weights_pairs_pruned_and_scratch_by_seed_and_budget():
    pruned = points(0.0)
    scratch = pruned[pruned.criterion == "l1"].assign(criterion="scratch")
    worse = scratch.assign(dice_positive_after=scratch.dice_positive_after - 0.04)  # fresh weights, worse
    worth = findings.inherited(pruned, worse)
    assert list(worth.rate) == [0.1, 0.5] and set(worth["inherited weights are"]) == {"worth something"}
    assert worth.difference.to_numpy() == pytest.approx(0.04) and (worth.pairs == 5).all()
    same = findings.inherited(pruned, scratch)
    assert set(same["inherited weights are"]) == {"equivalent"}
    found = findings.answers(frames_of(pruned, budgets=pruned, scratch=worse), {"dice_positive": 0.6},
                             lossless=0.05, main_steps=10)
    text = findings.budget_markdown(found, steps_per_epoch=10)
    assert "+0.040 ± 0.000 (worth something)" in text and "not Liu et al.'s claim" in text


def test_allocation_answers_pair_each_allocation_with_the_uniform_rate_and_weigh_it_against_the_criterion():
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(4):
        noise = rng.normal(0, 0.01)  # the seed's crops: shared by every allocation and criterion
        for method, gain in (("uniform", 0.0), ("sensitivity", 0.03), ("random", -0.0005 * seed)):
            for criterion, extra in (("fpgm", 0.002), ("l1", 0.0)):
                rows.append({"method": method, "cut": 0.5, "criterion": criterion, "seed": seed,
                             "reached": 0.5 + 0.001 * seed, "macs_reduction": 50.5,
                             "dice_positive_after": 0.7 + noise + gain + extra})
    text = findings.allocation_markdown(pd.DataFrame(rows))
    assert "within 0.30 points by the estimate" in text and "within 0.50 points as measured" in text
    assert "**Sensitivity allocation minus the uniform rate**" in text
    assert "fpgm at −50%: +0.030 ± 0.000 (ahead)" in text
    assert "**Random allocation minus the uniform rate**" in text and "(equivalent)" in text
    assert "here the allocation matters more" in text
    flat = pd.DataFrame(rows).assign(dice_positive_after=lambda t: t.dice_positive_after
                                     + np.where(t.criterion == "l1", -0.05, 0.0)
                                     - np.where(t.method == "sensitivity", 0.03, 0.0))  # now only l1 is worse
    assert "here the criterion matters more" in findings.allocation_markdown(flat)
    same = pd.DataFrame(rows).assign(dice_positive_after=lambda t: 0.7 + 0.01 * t.seed)  # only the seed matters
    assert "here neither separates from the seeds' noise" in findings.allocation_markdown(same)


def test_baseline_seed_answers_say_how_far_the_baseline_moves_points_and_whether_the_calls_survive():
    one = points(0.02).assign(baseline_seed=0)
    # the other baseline: every point 0.05 higher, and FPGM's edge gone at 50 % (equivalent there)
    two = points(0.02).assign(baseline_seed=1, dice_positive_after=lambda t: t.dice_positive_after + 0.05)
    two.loc[(two.criterion == "fpgm") & (two.rate == 0.5), "dice_positive_after"] -= 0.02
    found = findings.answers(frames_of(one, baseline_seeds=two), {"dice_positive": 0.6}, lossless=0.05,
                             main_steps=10)
    text = findings.baseline_seed_markdown(found)
    assert "fpgm at 10%: +0.050" in text and "l1 at 50%: +0.050" in text and "4 of 4 shifts exceed" in text
    assert "against l1 at 10%: ahead / ahead" in text and "against l1 at 50%: ahead / equivalent" in text
    assert "The calls agree in 1 of 2" in text
    alone = findings.answers(frames_of(one), {"dice_positive": 0.6}, lossless=0.05, main_steps=10)
    assert findings.baseline_seed_markdown(alone) == ""


def test_the_int8_answer_states_both_intervals_and_calls_one_seed_nothing():
    import pandas as pd
    from gmlib.book import deployment
    seeds = pd.DataFrame({"loss": [0.020, 0.021, 0.023], "int8 cost": [0.001, 0.003, 0.002]})
    verdict, chapter, text = findings.int8_answer(deployment.int8_verdicts(seeds, lossless=0.03),
                                                  {"rate": 0.4, "policy": "coupled", "round_to": 16}, 0.03)
    assert verdict == "within the bar; int8's cost equivalent to zero" and chapter == "10"
    assert "at 40% (coupled, round_to=16)" in text and "over 3 fine-tuning seeds loses +0.021 ± 0.004" in text
    assert "int8 then costs +0.002 ± 0.002 (equivalent at a margin of ± 0.01)" in text
    one = deployment.int8_verdicts(seeds.iloc[:1], lossless=0.03)
    verdict, _, text = findings.int8_answer(one, None, 0.03)
    assert verdict == "undecided; int8's cost not separated" and "+0.020 (one seed, no interval)" in text
