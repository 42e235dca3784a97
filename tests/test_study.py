"""gmlib.study: the baseline is trained once, saved under a key of its configuration and data, reloaded by the same
configuration (same weights, scores and post-processing) and never confused with another configuration's file."""
import dataclasses

import pytest
import torch

import gmlib
from gmlib.study import PROFILES, BaselineConfig, FinetuneConfig, Study

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = (BaselineConfig(arch="fpn_resnest14d", n_images=16, data_seed=1, val_fraction=0.25, scale=0.25,
                       crop=(64, 128), batch_size=4, epochs=1, lr=1e-3, weight_decay=1e-4, pos_weight=5.0,
                       defect_oversampling=3.0, monitor="dice_positive", seed=0),
        FinetuneConfig(steps=2, lr=1e-4))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return Study(TINY, root / "data", root / "results", device="cpu", progress=False)


def test_baseline_is_trained_once_then_loaded_by_its_key(study):
    first = study.baseline()
    assert first.trained_now and first.path.is_file() and first.path.name == f"fpn_resnest14d-{first.key}.pt"
    assert study.baseline() is first  # kept in memory
    again = Study(TINY, study.data_dir, study.results_dir, device="cpu", progress=False).baseline()
    assert not again.trained_now and again.key == first.key
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert again.postprocess == first.postprocess and again.history.equals(first.history)
    assert again.scores["dice_kaggle"] == pytest.approx(study.evaluate(again.model)["dice_kaggle"])
    assert len(first.postprocess["threshold"]) == len(first.postprocess["min_area"]) == 4


def test_another_configuration_gets_another_checkpoint(study):
    other = (dataclasses.replace(TINY[0], lr=2e-3), TINY[1])
    s = Study(other, study.data_dir, study.results_dir, device="cpu", progress=False)
    assert s.key() != study.key() and s.checkpoint_path() != study.checkpoint_path()
    assert not s.checkpoint_path().exists()  # it would be trained, not loaded from the first one's file


def test_a_checkpoint_whose_key_does_not_match_is_refused(study, tmp_path):
    study.baseline()
    blob = torch.load(study.checkpoint_path(), weights_only=True)
    blob["key"] = "0" * 12
    s = Study(TINY, study.data_dir, tmp_path, device="cpu", progress=False)
    s.checkpoint_path().parent.mkdir(parents=True)
    torch.save(blob, s.checkpoint_path())
    with pytest.raises(ValueError, match="delete it to retrain"):
        s.baseline()


def test_finetune_is_a_fixed_seeded_budget(study):
    base = study.baseline()
    runs = []
    for _ in range(2):
        model = base.copy()
        history = study.finetune(model, seed=3)
        runs.append(model.state_dict())
        assert len(history) == 1
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], v) for k, v in base.model.state_dict().items())  # it did train


def test_validation_split_and_example_input(study):
    assert set(study.train_ids).isdisjoint(study.val_ids)
    assert study.example_input().shape == (1, 3, 64, 416)  # a 64 x 400 strip padded to a multiple of 32


def test_profiles_and_bad_input(tmp_path):
    assert PROFILES["paper"][0].arch == "fpn_resnest50" and PROFILES["quick"][0].arch == "fpn_resnest14d"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        Study("fast", tmp_path / "d", tmp_path / "r")
    with pytest.raises(ValueError, match="arch 'vgg'"):
        Study((dataclasses.replace(TINY[0], arch="vgg"), TINY[1]), tmp_path / "d", tmp_path / "r")


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
    report = gmlib.prune(model, study.example_input(), 0.3, criterion="bn", count_macs=False,
                         **study.prune_kwargs("bn", model))
    assert report.params_after < report.params_before
