"""gmlib.compress end to end on a tiny classification set and a tiny Severstal set, through the API and the CLI.

Oracles: MACs counted by forward hooks (out elements x fan-in per conv / linear, not torch's flop counter), parameters
by numel, scores recomputed on the returned and reloaded networks, ONNX Runtime against PyTorch, file sizes by stat.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gmlib import export, models
from gmlib.builders import build, load_weights, read_state_dict
from gmlib.card import FILES, load_compressed, write_outputs
from gmlib.data import make_synthetic_severstal
from gmlib.folders import layout, open_data
from gmlib.persist import load_pruned
from gmlib.recipe import Target, compress, parse_budget, parse_target
from gmlib.tasks import accuracy, dice
from gmlib.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("red", "green", "blue")


def hook_macs(model: nn.Module, size) -> int:
    """Multiply-accumulates of one forward on (1, *size): conv out elements x in/groups x kh x kw, linear x in."""
    total = []

    def conv(m, _, out):
        total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, _, out):
        total.append(out.numel() * m.in_features)
    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(total)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES)))


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [p.data_ptr() for p in model.parameters()],
            model.training)


def assert_unchanged(model, before):
    state, pointers, training = before
    assert model.training == training
    assert [p.data_ptr() for p in model.parameters()] == pointers
    now = model.state_dict()
    assert set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())


def no_leftovers(folder: Path, out_name: str):
    return not [p.name for p in folder.iterdir() if p.name.startswith(f".{out_name}.")]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """30 images 20 x 20 in three class folders, each class one dominant colour channel."""
    root = tmp_path_factory.mktemp("cls") / "images"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 90, (20, 20, 3)).astype(np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def strips(tmp_path_factory):
    return make_synthetic_severstal(tmp_path_factory.mktemp("seg") / "strips", 10, 0, progress=False)


@pytest.fixture(scope="module")
def trained(images):
    """The tiny CNN trained to tell the colours apart: what a user brings."""
    data = open_data(images, size=16, batch_size=8)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for x, y in data.train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def cls_run(images, trained, tmp_path_factory):
    data = open_data(images, size=16, batch_size=8)
    before = snapshot(trained)
    pruned, report = compress(trained, data, "macs:0.5", budget="4 steps", lr=1e-3, recal_batches=2, round_to=1,
                              progress=False)
    assert_unchanged(trained, before)
    out = tmp_path_factory.mktemp("cls_out") / "out"
    card = write_outputs(out, pruned, report, data, original=trained, builder=tiny_cnn, rounds=2, progress=False)
    assert_unchanged(trained, before)
    return data, pruned, report, out, card


@pytest.fixture(scope="module")
def seg_run(strips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_out")
    weights = folder / "fpn.pt"
    original = models.create("fpn_mobilenet_v2", seed=0).eval()
    torch.save(original.state_dict(), weights)
    data = open_data(strips, scale=0.125, batch_size=4)
    pruned, report = compress("fpn_mobilenet_v2", data, "params:0.4", weights=weights, budget="2 steps",
                              method="uniform", recal_batches=2, progress=False)
    card = write_outputs(folder / "out", pruned, report, data, rounds=2, progress=False)
    return original, data, pruned, report, folder / "out", card


# ------------------------------------------------------------------------------------------------ arguments
def test_targets_and_budgets_parse_or_name_what_is_wrong():
    assert parse_target("macs:0.5") == Target("macs", cut=0.5)
    assert parse_target("Params:0.4") == Target("params", cut=0.4)
    assert parse_target("latency:20ms") == Target("latency", ms=20.0)
    assert parse_target("latency:0.3") == Target("latency", cut=0.3)
    for bad in ("flops:0.5", "macs", "macs:half", "latency:fastms", "latency:-3ms", "macs:1.5", "macs:0"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_target(bad)
    assert parse_budget(7, 10) == 7 and parse_budget("3 steps", 10) == 3 and parse_budget("1 step", 10) == 1
    assert parse_budget("0.5 epochs", 10) == 5 and parse_budget("2 epoch", 3) == 6 and parse_budget("0 epochs", 3) == 0
    for bad in ("3 weeks", "1.5 steps", "-1", "epochs"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad, 10)


def test_layouts_are_told_apart_and_others_named(tmp_path, images, strips):
    assert layout(strips) == "severstal" and layout(images) == "classes"
    split = tmp_path / "split"
    for part in ("train", "val"):
        for name in CLASSES[:2]:
            (split / part / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(split / part / name / "a.png")
    assert layout(split) == "split-classes"
    data = open_data(split, size=8)
    assert data.task == "classification" and data.classes == sorted(CLASSES[:2]) and len(data.val.dataset) == 2
    odd = tmp_path / "odd"
    (odd / "only_one_class").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(odd / "only_one_class" / "a.png")
    (odd / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="odd.*neither layout"):
        open_data(odd)
    with pytest.raises(FileNotFoundError, match="missing"):
        open_data(tmp_path / "missing")


def test_checkpoints_are_read_in_their_usual_wrappings(tmp_path):
    model = build("torchvision:mobilenet_v2", 3)
    state = model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "a.pt")
    assert read_state_dict(tmp_path / "a.pt").keys() == state.keys()
    (tmp_path / "b.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="b.pt.*not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "b.pt")
    other = build("torchvision:mobilenet_v2", 5)
    torch.save(other.state_dict(), tmp_path / "c.pt")
    kept = snapshot(model)
    with pytest.raises(ValueError, match=r"c.pt.*shapes differ.*classifier.1.weight \(5, 1280\) in the file, "
                                         r"\(3, 1280\) in the model"):
        load_weights(model, tmp_path / "c.pt")
    assert_unchanged(model, kept)


# ------------------------------------------------------------------------------------------------ classification
def test_classification_meets_the_target_and_scores_what_it_returns(trained, cls_run):
    data, pruned, report, _, _ = cls_run
    assert report.macs_before == hook_macs(trained, data.input_size)
    assert report.macs_after == hook_macs(pruned, data.input_size)
    assert 0.5 - 0.005 <= report.macs_reduction <= 0.5 + 0.05
    assert report.params_after == sum(p.numel() for p in pruned.parameters())
    assert report.score_before == accuracy(trained, data.val) == pytest.approx(1.0)  # the trained network
    assert report.score_finetuned == accuracy(pruned, data.val)
    assert [s["drops"] for s in report.sets if s["kept"] < s["size"]]  # sensitivity: why each set was cut
    assert not pruned.training


def test_classification_outputs_reload_and_run_in_onnx_runtime(cls_run):
    data, pruned, report, out, card = cls_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES) and no_leftovers(out.parent, out.name)
    x = torch.randn(5, *data.input_size, generator=torch.Generator().manual_seed(1))
    again = load_pruned(out / "pruned.pt", builder=tiny_cnn)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    sess = export.session(out / "model.onnx")
    assert export.max_relative_error(pruned, sess, x) < 1e-4
    assert card["score_onnx"] == accuracy(export.OrtModule(sess), data.val)
    int8 = export.OrtModule(export.session(out / "model.int8.onnx"))
    assert card["score_int8"] == accuracy(int8, data.val)


def test_the_card_holds_what_was_measured(cls_run):
    _, _, report, out, card = cls_run
    assert json.loads((out / "card.json").read_text()) == card
    assert {k: card[k] for k in report.to_dict()} == report.to_dict()
    assert card["files"] == {name: (out / name).stat().st_size for name in FILES[:3]}
    assert set(card["latency_ms"]) == {"pruned", "original"}
    assert all(0 < t["ms_min"] <= t["ms"] <= t["ms_max"] for v in card["latency_ms"].values() for t in v.values())
    text = (out / "card.md").read_text()
    for key in ("score_before", "score_finetuned", "score_int8"):
        assert f"{card[key]:.4f}" in text
    assert f"{card['macs_after']:,}" in text and f"{card['files']['model.onnx']:,}" in text


# ------------------------------------------------------------------------------------------------ segmentation
def test_segmentation_meets_the_target_from_a_builder_and_checkpoint(seg_run):
    original, data, pruned, report, _, _ = seg_run
    assert data.task == "segmentation" and data.input_size == (3, 32, 224)
    params = sum(p.numel() for p in pruned.parameters())
    assert report.params_after == params and report.params_before == sum(p.numel() for p in original.parameters())
    assert 0.4 - 0.005 <= report.params_reduction <= 0.4 + 0.05
    assert report.score_before == dice(original, data.val)  # the checkpoint was loaded, not random weights
    assert report.score_finetuned == dice(pruned, data.val)
    assert report.builder == "fpn_mobilenet_v2" and report.weights.endswith("fpn.pt") and report.data == str(data.root)


def test_segmentation_outputs_reload_and_run_in_onnx_runtime(seg_run):
    _, data, pruned, report, out, card = seg_run
    again, stored = load_compressed(out)
    assert stored == card and card["score_finetuned"] == report.score_finetuned
    x = torch.rand(2, *data.input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    assert export.max_relative_error(pruned, export.session(out / "model.onnx"), x) < 1e-4
    assert card["macs_after"] == report.macs_after and set(card["latency_ms"]) == {"pruned"}


# ------------------------------------------------------------------------------------------------ the command line
def run_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gmlib", "compress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(tmp_path, images):
    weights = tmp_path / "mbv2.pt"
    torch.save(build("torchvision:mobilenet_v2", 3).state_dict(), weights)
    done = run_cli("--builder", "torchvision:mobilenet_v2", "--weights", str(weights), "--data", str(images),
                   "--target", "macs:0.5", "--out", "out", "--size", "64", "--budget", "2 steps", "--method",
                   "uniform", "--rounds", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES) and no_leftovers(tmp_path, "out")
    assert "fine-tune" in done.stderr and "| fine-tuned |" in done.stdout  # progress bars, then the card
    model, card = load_compressed(out)
    assert card["weights"] == str(weights) and card["builder"] == "torchvision:mobilenet_v2"
    assert card["macs_after"] == hook_macs(model, (3, 64, 64))
    assert card["macs_before"] == hook_macs(build("torchvision:mobilenet_v2", 3), (3, 64, 64))
    assert 0.495 <= card["macs_reduction"] <= 0.55
    assert all(s["kept"] % 8 == 0 or s["kept"] == s["size"] for s in card["sets"])  # --round-to 8, the default
    assert card["params_after"] == sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 64, 64)
    assert export.max_relative_error(model, export.session(out / "model.onnx"), x) < 1e-4


@pytest.mark.parametrize("change, flag, says", [
    ({"--builder": "torchvision:no_such_net"}, "--builder", "unknown builder 'torchvision:no_such_net'"),
    ({"--builder": "nope"}, "--builder", "unknown builder 'nope'"),
    ({"--weights": "five"}, "--weights", r"five.pt.*do not fit builder 'torchvision:mobilenet_v2' with 3 "
                                         r"classes.*classifier.1.weight \(5, 1280\) in the file"),
    ({"--weights": "resnet"}, "--weights", "resnet.pt.*keys missing.*features.0.0.weight"),
    ({"--weights": "missing.pt"}, "--weights", "missing.pt.*no such file"),
    ({"--target": "flops:0.5"}, "--target", "unknown target 'flops:0.5'"),
    ({"--target": "macs:2"}, "--target", "macs:2"),
    ({"--budget": "3 weeks"}, "--budget", "3 weeks"),
    ({"--data": "odd"}, "--data", "odd.*neither layout"),
    ({"--data": "absent"}, "--data", "absent.*does not exist"),
    ({"--out": "taken"}, "--out", "taken.*exists already"),
    ({"--metric": "dice_kaggle"}, "--metric", "'dice_kaggle' scores segmentation, but .*images holds classification"),
])
def test_cli_errors_name_the_argument(tmp_path, images, capsys, change, flag, says):
    torch.save(build("torchvision:mobilenet_v2", 5).state_dict(), tmp_path / "five.pt")
    torch.save(build("timm:resnet18", 3).state_dict(), tmp_path / "resnet.pt")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "a.txt").write_text("x")
    (tmp_path / "taken").mkdir()
    args = {"--builder": "torchvision:mobilenet_v2", "--data": str(images), "--target": "macs:0.5",
            "--out": str(tmp_path / "new"), "--budget": "1 step", **change}
    if "--weights" in change:
        args["--weights"] = str(tmp_path / (change["--weights"] + ("" if "." in change["--weights"] else ".pt")))
    for key in ("--data", "--out"):
        if key in change:
            args[key] = str(tmp_path / change[key])
    with pytest.raises(SystemExit) as stop:
        main(["compress", *[s for kv in args.items() for s in kv], "--quiet"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and re.search(says, err), err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------ failures
def test_a_failure_midway_leaves_the_model_as_it_was(trained, images):
    before = snapshot(trained)
    calls = []

    def flaky(model, loader):
        calls.append(1)
        if len(calls) == 2:  # right after pruning
            raise RuntimeError("scorer broke")
        return accuracy(model, loader)
    with pytest.raises(RuntimeError, match="scorer broke"):
        compress(trained, images, "macs:0.5", metric=flaky, method="uniform", size=16, progress=False)
    with pytest.raises(FloatingPointError, match="fine-tuning loss"):
        compress(trained, images, "macs:0.5", loss=lambda out, y: out.sum() * float("nan"), method="uniform",
                 budget="1 step", size=16, progress=False)
    assert_unchanged(trained, before)


def test_a_latency_in_ms_is_measured_and_one_met_already_is_named(trained, images):
    with pytest.raises(ValueError, match=r"latency:10000ms is met already: the model runs in \d+\.\d+ ms"):
        compress(trained, images, "latency:10000ms", method="uniform", size=16, progress=False)


def test_writing_needs_to_know_how_to_rebuild_the_network(tmp_path, cls_run):
    data, pruned, report, _, _ = cls_run
    with pytest.raises(ValueError, match="builder="):
        write_outputs(tmp_path / "out", pruned, report, data, progress=False)  # a plain nn.Sequential, no builder
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")


def test_a_failure_while_writing_leaves_no_out_folder(tmp_path, cls_run, trained, monkeypatch):
    data, pruned, report, _, _ = cls_run

    def broken(*args, **kwargs):
        raise RuntimeError("quantiser broke")
    monkeypatch.setattr(export, "quantize_int8", broken)
    with pytest.raises(RuntimeError, match="quantiser broke"):
        write_outputs(tmp_path / "out", pruned, report, data, builder=tiny_cnn, progress=False)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mine.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="quantiser broke"):  # overwrite: the old folder stays till the new is done
        write_outputs(tmp_path / "old", pruned, report, data, builder=tiny_cnn, overwrite=True, progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["mine.txt"] and no_leftovers(tmp_path, "old")


def test_the_cli_fails_whole(tmp_path, images, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")
    monkeypatch.setattr(export, "to_onnx", broken)  # after the checkpoint is written
    status = main(["compress", "--builder", "torchvision:mobilenet_v2", "--data", str(images), "--out",
                   str(tmp_path / "out"), "--size", "64", "--budget", "1 step", "--method", "uniform", "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and "nothing written" in err and "exporter broke" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path, "out")
