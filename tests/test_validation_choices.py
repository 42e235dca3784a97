"""The choices among pruned networks read validation scores: the fine-tuning learning rate (gmlib.book.findings.lr_choice)
and what reusing the baseline's post-processing costs (postprocess_effect), on small tables whose answer is known;
chapter 07's post-processing points are main-grid points outside the grids that are computed."""
import pandas as pd
import pytest

from gmlib.book import findings, sweeps


def lr_rows(val, test, seeds=(0, 1, 2), criteria=("fpgm", "l1")):
    """One row per (lr, criterion, seed): validation and test scores given per lr, plus a small seed offset; every
    re-run network the stored one."""
    rows = pd.DataFrame([{"criterion": c, "rate": 0.3, "seed": s, "lr": lr, "val_dice_positive": val[lr] + 0.001 * s,
                          "dice_positive_after": test[lr] + 0.001 * s, "dice_kaggle_after": 0.96}
                         for lr in val for c in criteria for s in seeds])
    return rows.assign(rerun_dice_positive=rows.dice_positive_after, rerun_dice_kaggle=rows.dice_kaggle_after,
                       same_network=True)


def test_the_learning_rate_is_chosen_on_validation_not_on_test():
    rows = lr_rows({1e-4: 0.70, 5e-4: 0.74, 2e-3: 0.72}, {1e-4: 0.78, 5e-4: 0.75, 2e-3: 0.70})
    table = findings.lr_choice(rows)
    assert table.attrs["chosen"] == 5e-4 and table.attrs["test_best"] == 1e-4
    assert table.points.tolist() == [6, 6, 6] and table.validation[5e-4] == pytest.approx(0.741)
    text = findings.lr_markdown(table, 5e-4)
    assert "Chosen on the validation strips: 0.0005" in text and "would have chosen 0.0001" in text
    assert "would have to be recomputed at 0.0005" in findings.lr_markdown(table, 1e-4)


def test_agreement_is_said_only_when_both_splits_choose_the_learning_rate_in_use():
    table = findings.lr_choice(lr_rows({1e-4: 0.70, 5e-4: 0.74}, {1e-4: 0.70, 5e-4: 0.75}))
    assert "the test-split choice agreed with validation" in findings.lr_markdown(table, 5e-4)
    assert "Every one of the 12 networks, fine-tuned again, gave its stored test scores bit for bit" in \
        findings.lr_markdown(table, 5e-4)


def test_re_runs_from_another_cpu_are_said_with_their_largest_gap():
    rows = lr_rows({1e-4: 0.70, 5e-4: 0.74}, {1e-4: 0.70, 5e-4: 0.75})
    rows.loc[0, ["rerun_dice_kaggle", "same_network"]] = [0.9588, False]
    text = findings.lr_markdown(findings.lr_choice(rows), 5e-4)
    assert "11 of the 12 networks gave their stored test scores bit for bit" in text
    assert "the other 1, stored from another CPU" in text and "within 0.0012 test Dice" in text


def test_a_learning_rate_with_other_points_is_refused():
    rows = lr_rows({1e-4: 0.70, 5e-4: 0.74}, {1e-4: 0.70, 5e-4: 0.75})
    with pytest.raises(ValueError, match="same points"):
        findings.lr_choice(rows.drop(index=0))


def post_rows(shift, spread, seeds=5, kaggle_shift=0.0):
    """fpgm at 30 and 50 %: on the re-run network, the re-tuned test score is the reused one plus `shift` plus a
    seed-dependent spread (the stored scores, which differ, must not enter)."""
    return pd.DataFrame([{"criterion": "fpgm", "rate": r, "seed": s, "rerun_dice_positive": 0.75,
                          "retuned_dice_positive": 0.75 + shift + spread * (s - (seeds - 1) / 2),
                          "rerun_dice_kaggle": 0.9,
                          "retuned_dice_kaggle": 0.9 + kaggle_shift + spread * (s - (seeds - 1) / 2) / 4,
                          "dice_positive_after": 0.9, "dice_kaggle_after": 0.9}  # stored: another network's
                         for r in (0.3, 0.5) for s in range(seeds)])


def test_post_processing_that_moves_nothing_is_equivalent_and_a_clear_loss_is_behind():
    same = findings.postprocess_effect(post_rows(0.0, 0.001))
    assert set(same["re-tuned is"]) == {"equivalent"} and len(same) == 4
    assert findings.postprocess_markdown(same).split("** ")[1].startswith("It does not matter")
    worse = findings.postprocess_effect(post_rows(-0.05, 0.002))
    called = worse.set_index(["rate", "score"])["re-tuned is"]
    assert called[(0.3, "dice_positive")] == "behind" and called[(0.3, "dice_kaggle")] == "equivalent"
    text = findings.postprocess_markdown(worse)
    assert "It matters: re-tuning lowers positive-pair Dice." in text and "does not handicap" in text
    assert "Kaggle Dice, which the tuning maximises" not in text  # equivalent there: nothing to say
    trade = findings.postprocess_effect(post_rows(-0.05, 0.002, kaggle_shift=0.04))
    text = findings.postprocess_markdown(trade)
    assert "It matters: re-tuning raises Kaggle Dice and lowers positive-pair Dice." in text
    assert "gains up to +0.040 on average (fpgm at 30%, ahead)" in text
    assert worse.difference[worse.score == "dice_positive"].tolist() == pytest.approx([-0.05, -0.05])
    noisy = findings.postprocess_effect(post_rows(0.0, 0.05, seeds=3))
    assert set(noisy[noisy.score == "dice_positive"]["re-tuned is"]) == {"not separated"}


def test_validation_paragraph_names_each_choice_and_the_split_it_reads():
    table = findings.lr_choice(lr_rows({1e-4: 0.70, 5e-4: 0.74}, {1e-4: 0.70, 5e-4: 0.75}))
    history = pd.DataFrame({"step": [0, 1], "val_dice_kaggle": [0.9, 0.89], "dice_kaggle_after": [0.9, 0.88]})
    history.attrs["chosen_step"] = 1
    text = findings.validation_markdown(table, findings.postprocess_effect(post_rows(0.0, 0.001)), history, 5e-4)
    assert "0.0005 (mean validation positive-pair Dice 0.7410, against 0.7010 at 0.0001)" in text
    assert "the test strips had chosen the same" in text and "(step 1) read the validation strips' Kaggle" in text
    assert "each of 10 fine-tuned networks (fpgm at 30%, 50%)" in text
    assert "Under the rule it does not matter" in text and "so they keep the baseline's post-processing" in text
    old = history.drop(columns="val_dice_kaggle")
    old.attrs["chosen_step"] = 1
    assert "read the test strips'" in findings.validation_markdown(table, findings.postprocess_effect(
        post_rows(0.0, 0.001)), old, 5e-4)


def test_post_processing_points_are_main_grid_points_and_never_a_work_unit():
    d = sweeps.figure5_design(lambda e: int(round(e * 200)), rates=[0.3, 0.5], criteria=["fpgm"], seeds=[0, 1, 2],
                              postprocess_criteria=["fpgm"], postprocess_rates=[0.3, 0.5], postprocess_seeds=[0, 1])
    assert len(d["postprocess"]) == 4 and all(p in d["main"] for p in d["postprocess"])
    assert "postprocess" not in sweeps.GRIDS and len([p for u in sweeps.work_units(d) for p in u]) == 6
