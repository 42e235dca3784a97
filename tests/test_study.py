"""gmlib.book.study on the smoke profile: the baseline is trained once into the store (fp16 weights), read back by the
same configuration, never confused with another; every experiment path (pruned, fine-tuned, scratch) runs end to end,
is stored, and is read back instead of recomputed; a read-only store refuses to compute."""
import dataclasses

import numpy as np
import pytest
import torch

import gmlib
from gmlib.store import MissingRecord
from gmlib.book.study import PROFILES, Study, plateaued

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return Study("smoke", root / "data", root / "results", store_dir=root / "store", device="cpu", progress=False)


def fresh(study, **kw):
    return Study("smoke", study.data_dir, study.results_dir, store_dir=study.store.root, device="cpu",
                 progress=False, **kw)


def test_baseline_is_trained_once_then_read_from_the_store(study):
    first = study.baseline()
    assert first.trained_now and first.path.is_file() and first.path.parent.name == "baseline"
    assert study.resume_path().parent.name == "training" and not study.resume_path().exists()  # done with it
    assert study.baseline() is first  # kept in memory
    again = fresh(study).baseline()
    assert not again.trained_now and again.key == first.key
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    # the weights every experiment uses are the fp16-rounded ones
    w = again.model.encoder.conv1[0].weight
    assert torch.equal(w, w.half().float())
    assert again.postprocess == first.postprocess and again.history.equals(first.history)
    now = study.evaluate(again.model)  # test split
    assert {k: again.scores[k] for k in ("loss", "dice_kaggle")} == pytest.approx({k: now[k] for k in ("loss", "dice_kaggle")})
    assert again.val_scores["dice_kaggle"] == pytest.approx(study.evaluate(again.model, split="val")["dice_kaggle"])


def test_another_configuration_gets_another_record(study):
    other = fresh(study, lr=2e-3)
    assert other.key() != study.key()
    assert study.store.get("baseline", other.baseline_config()) is None


def test_three_way_split_is_disjoint_and_example_input(study):
    parts = [set(study.train_ids), set(study.val_ids), set(study.test_ids)]
    assert all(p for p in parts) and sum(map(len, parts)) == len(set().union(*parts)) == 24
    assert study.example_input().shape == (1, 3, 32, 224)  # a 32 x 200 strip padded to a multiple of 32


def test_points_are_stored_and_read_back(study, monkeypatch):
    rows = study.points([dict(criterion="fpgm", rate=0.3, seed=s) for s in (0, 1)]
                        + [dict(criterion="random", rate=0.3, seed=0)])
    assert list(rows["seed"]) == [0, 1, 0]
    for col in ("dice_kaggle_before", "dice_kaggle_recal", "dice_kaggle_after", "macs_reduction", "params"):
        assert rows[col].notna().all(), col
    assert rows.loc[0, "dice_kaggle_before"] == rows.loc[1, "dice_kaggle_before"]  # one pruned record, two seeds
    assert len(study.store.records("pruned")) == 2 and len(study.store.records("finetuned")) == 3
    monkeypatch.setattr(gmlib.book.study, "prune_and_score", lambda *a, **k: pytest.fail("recomputed a stored point"))
    again = fresh(study).points([dict(criterion="fpgm", rate=0.3, seed=1)])
    assert again.iloc[0].to_dict() == rows.iloc[1].to_dict()


def test_recalibration_changes_only_norm_statistics(study):
    model = study.baseline().copy()
    gmlib.prune(model, study.example_input(), 0.5, count_macs=False)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    means = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    study.recalibrate(model)
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in weights.items())
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.equal(a, b) for a, b in zip(means, after))


def test_full_recipe_scratch_control_trains_once_for_every_budget(study):
    a = study.scratch_point("fpgm", 0.4, steps=1, recipe="full")
    b = study.scratch_point("fpgm", 0.4, steps=2, recipe="full")
    assert a["criterion"] == "scratch" and {"dice_kaggle_after", "dice_positive_after"} <= set(a)
    assert len(study.store.records("scratch")) == 1 and a != b


def test_budget_scratch_control_trains_only_for_the_budget(study, monkeypatch):
    calls = []
    real = study.finetune
    monkeypatch.setattr(study, "finetune", lambda m, seed, steps=None, lr=None: calls.append((steps, lr)) or
                        real(m, seed, steps=steps, lr=lr))
    p = dict(kind="scratch", criterion="fpgm", rate=0.4, seed=1, steps=3)
    assert not study.is_stored(p)
    row = study.scratch_point("fpgm", 0.4, seed=1, steps=3)
    assert calls == [(3, study.config.lr)] and row["recipe"] == "budget" and study.is_stored(p)
    assert study.scratch_point("fpgm", 0.4, seed=1, steps=3) == row and len(calls) == 1  # read back
    with pytest.raises(ValueError, match="recipe must be"):
        study.scratch_point("fpgm", 0.4, recipe="fresh")


def test_sweeps_collect_every_grid_and_reseed(study, monkeypatch):
    from gmlib.book import sweeps
    design = sweeps.figure5_design(study.epoch_steps, rates=[0.3], criteria=["fpgm"], seeds=[0], budgets=[0.25],
                                   budget_rates=[0.3], budget_criteria=["fpgm"], budget_seeds=[0])
    frames = sweeps.collect(study, design)
    assert len(frames["main"]) == 1 and len(frames["budgets"]) == 1 and len(frames["scratch"]) == 1
    assert frames["main"].iloc[0]["dice_kaggle_after"] == frames["budgets"].iloc[0]["dice_kaggle_after"]
    assert frames["scratch"].iloc[0]["criterion"] == "scratch"
    other = study.reseeded(3)
    assert other.config.seed == 3 and other.key() != study.key() and other.store.root == study.store.root


def test_iterative_run_is_stored_with_three_scores_per_step(study, monkeypatch):
    history = study.iterative_run([0.3, 0.6], tolerance=1.0)
    assert list(history.step) == [0, 1, 2] and history.attrs["chosen_step"] == 2
    assert {"dice_kaggle_before", "dice_kaggle_recal", "dice_kaggle_after"} <= set(history.columns)
    # the end condition reads validation scores: step 0's are the baseline's own
    base = study.baseline()
    assert history.val_dice_kaggle.iloc[0] == base.val_scores["dice_kaggle"]
    assert history.dice_kaggle_after.iloc[0] == base.scores["dice_kaggle"]
    tight = study.iterative_run([0.3, 0.6], tolerance=0.0)
    within = tight.val_dice_kaggle >= tight.val_dice_kaggle.iloc[0]
    assert tight.within_tolerance.tolist() == within.tolist()[:len(tight)]
    monkeypatch.setattr(gmlib.book.study, "iterative", lambda *a, **k: pytest.fail("recomputed a stored run"))
    assert fresh(study).iterative_run([0.3, 0.6], tolerance=1.0).equals(history)


def test_evaluate_many_gives_evaluate_s_numbers_under_each_post_processing(study):
    model = study.baseline().model
    other = {"threshold": [0.6] * 4, "min_area": [0, 10, 0, 10]}
    tuner = gmlib.metrics.PostprocessTuner(thresholds=gmlib.book.study.THRESHOLDS, min_areas=study.min_areas())
    many = study.evaluate_many(model, {"base": study.baseline().postprocess, "other": other}, "val", tuner=tuner)
    for name, post in (("base", None), ("other", other)):
        one = study.evaluate(model, post, split="val")
        assert many[name].keys() == one.keys()
        for key, value in one.items():  # the same numbers, NaN (a class without a positive pair) included
            np.testing.assert_array_equal(many[name][key], value)
    post = tuner.compute()
    assert {"threshold": post["threshold"], "min_area": post["min_area"]} == study.tune_postprocess(model)


def test_finetuned_validation_recomputes_the_stored_network_and_refuses_another(study, monkeypatch):
    stored = study.finetuned_point("fpgm", 0.3, seed=1)
    val = study.finetuned_validation("fpgm", 0.3, seed=1)
    assert {k: val["test"][k] for k in ("loss_after", "dice_kaggle_after", "dice_positive_after")} == \
        {k: stored[k] for k in ("loss_after", "dice_kaggle_after", "dice_positive_after")}
    assert set(val) == {"val", "test", "retuned", "same_network"} and val["same_network"] is True  # this CPU's
    assert {"loss_after", "dice_positive_after"} <= set(val["val"])
    config = study.records.finetuned(study.key(), "fpgm", 0.3, "or-merge", 1, *study.records.budget(None, None))
    record = study.store.get("finetuned_val", config)
    assert record.kind == "finetuned_val" and record.key != study.store.get("finetuned", record.config).key
    assert record.config == study.store.get("finetuned", record.config).config  # keyed by the point's own config
    post = val["retuned"]["postprocess"]
    assert len(post["threshold"]) == 4 and set(post["threshold"]) <= set(gmlib.book.study.THRESHOLDS)
    # read back, not recomputed
    monkeypatch.setattr(Study, "finetune", lambda *a, **k: pytest.fail("recomputed a stored record"))
    assert fresh(study).finetuned_validation("fpgm", 0.3, seed=1) == val
    monkeypatch.undo()
    # a stored fine-tuned score far from the recomputed network's (beyond another CPU's rounding): an error
    config = study.records.finetuned(study.key(), "fpgm", 0.3, "or-merge", 2, *study.records.budget(None, None))
    study.finetuned_point("fpgm", 0.3, seed=2)
    tuned = study.store.get("finetuned", config)
    study.store.put("finetuned", config, {**tuned.result, "dice_kaggle_after": 0.123}, seconds=tuned.seconds)
    with pytest.raises(RuntimeError, match="not the stored network"):
        study.finetuned_validation("fpgm", 0.3, seed=2)
    assert study.store.get("finetuned_val", config) is None


def test_read_only_store_refuses_missing_points(study, monkeypatch):
    study.baseline()
    monkeypatch.setenv("GMLIB_STORE_READONLY", "1")
    s = fresh(study)
    with pytest.raises(MissingRecord, match="no pruned record .*\"rate\":0.7"):
        s.point("l1", 0.7)


def test_plateau_rule():
    import pandas as pd
    assert plateaued(pd.DataFrame({"s": [0.1, 0.5, 0.6, 0.601]}), "s")
    assert not plateaued(pd.DataFrame({"s": [0.1, 0.5, 0.6, 0.65]}), "s")
    assert not plateaued(pd.DataFrame({"s": [0.5]}), "s")


def test_profiles_and_bad_input(tmp_path):
    assert PROFILES["paper"][0].arch == "fpn_resnest50" and PROFILES["quick"][0].arch == "fpn_resnest14d"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        Study("fast", tmp_path / "d", tmp_path / "r")
    with pytest.raises(ValueError, match="arch 'vgg'"):
        Study((dataclasses.replace(PROFILES["smoke"][0], arch="vgg"), PROFILES["smoke"][1]), tmp_path / "d",
              tmp_path / "r")
    with pytest.raises(ValueError, match="unknown BaselineConfig field"):
        Study("smoke", tmp_path / "d", tmp_path / "r", epochz=3)


def test_scratch_like_has_the_pruned_shapes_and_fresh_weights(study):
    pruned = study.baseline().copy()
    gmlib.prune(pruned, study.example_input(), 0.4, count_macs=False)
    scratch = study.scratch_like(pruned, seed=5)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in scratch.state_dict().items()} == shapes
    assert not torch.equal(scratch.encoder.conv1[0].weight, pruned.encoder.conv1[0].weight)
    assert scratch._gmlib_kept == pruned._gmlib_kept  # so save_pruned can write it


def test_prune_kwargs_leave_convs_without_a_norm_to_the_bn_criterion(study):
    model = study.baseline().copy()
    assert study.prune_kwargs("fpgm", model) == {}
    ignored = study.prune_kwargs("bn", model)["ignored_layers"]
    assert "decoder.p5" in ignored and "decoder.p2.skip_conv" in ignored
    assert not any(name.startswith("encoder.") for name in ignored)  # every encoder conv has a BatchNorm after it


def test_a_warm_restart_trains_on_top_of_the_first_cycle_record(study):
    first = study.baseline()
    restarted = fresh(study, restart_epochs=2, restart_lr=1e-4)
    assert restarted.key() != study.key()
    assert "restart_epochs" not in study.baseline_config()["config"]  # older keys stay valid
    base = restarted.baseline()
    assert base.trained_now and list(base.history.epoch) == [1, 2, 3, 4]
    assert base.history.iloc[:2].drop(columns="best").equals(first.history.drop(columns="best"))
    assert base.history.best.iloc[0] and base.seconds > first.seconds
    best = base.history.val_dice_positive.astype(float)
    assert base.history.best.sum() == sum(best.iloc[i] > best.iloc[:i].max() for i in range(1, 4)) + 1


def test_seeded_draws_give_the_same_batches_with_or_without_loader_workers(study):
    """With draw_seeds every crop carries its own seed, so two worker processes make the batches one process
    makes; without it, workers are refused (one generator draws the crops in turn)."""
    drawn = [fresh(study, draw_seeds=True, **({"workers": w} if w else {})) for w in (0, 2)]
    assert drawn[0].key() != study.key()  # another configuration
    batches = [list(s.train_loader(seed=4, n_batches=3)) for s in drawn]
    for (a, am), (b, bm) in zip(*batches):
        assert torch.equal(a, b) and torch.equal(am, bm)
    first = [img for img, _ in batches[0]]
    assert not all(torch.equal(first[0][0], x) for x in first[0][1:])  # distinct crops within a batch
    with pytest.raises(ValueError, match="workers=2 needs draw_seeds=True"):
        fresh(study, workers=2)


def test_allocated_points_meet_their_macs_cut_and_come_back_from_the_store(study):
    """Chapter 12's path: a stored sensitivity table, the three allocations at one MACs cut, each pruned,
    recalibrated and fine-tuned into the store; a second study reads every record instead of computing."""
    table = study.sensitivity_table("l1")
    assert list(table.columns) == ["set", "member", "rate", "score", "drop", "monotone_drop"]
    assert len(table) == 4 * table["set"].nunique() and isinstance(table.attrs["baseline_score"], float)
    assert (study.results_dir / "sensitivity").is_dir()  # the resumable cache of the table
    methods = gmlib.allocation.METHODS
    rows = [study.allocated_point(m, 0.3, criterion="l1") for m in methods]
    for row in rows:
        assert 0.3 - 0.005 <= row["reached"] <= 0.33
        assert row["macs_reduction"] / 100 == pytest.approx(row["reached"], abs=1e-9)
        assert {"dice_positive_before", "dice_positive_recal", "dice_positive_after"} <= set(row)
    assert len(set(study.allocation("uniform", 0.3, criterion="l1")["rates"].values())) == 1
    assert study.allocation("random", 0.3, criterion="l1", seed=1) != study.allocation("random", 0.3, criterion="l1")
    again = fresh(study)
    before = {kind: len(list(study.store.root.glob(f"{kind}/*.json"))) for kind in ("pruned", "finetuned")}
    assert [again.allocated_point(m, 0.3, criterion="l1") for m in methods] == rows
    assert before == {kind: len(list(study.store.root.glob(f"{kind}/*.json"))) for kind in ("pruned", "finetuned")}
