"""save_pruned / load_pruned: state_dict + JSON manifest, no pickled code, identical outputs after a round trip."""
import json
import os

import pytest
import timm
import torch

import gmlib
from gmlib import models

pytestmark = pytest.mark.usefixtures("one_thread")


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def outputs(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize("name,policy", [("resnet50", "or-merge"), ("fpn_resnest50", "coupled")])
def test_round_trip_identical_outputs(tmp_path, name, policy):
    model = models.create(name, seed=0).eval()
    report = gmlib.prune(model, X, 0.4, policy=policy)
    path = tmp_path / "pruned.pt"
    gmlib.save_pruned(model, path)  # models.create records the architecture name
    assert os.listdir(tmp_path) == ["pruned.pt"]  # written atomically: no temp file left behind
    loaded = gmlib.load_pruned(path)
    assert torch.equal(outputs(loaded), outputs(model))
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    # the file is plain tensors and a JSON string: loadable with weights_only=True
    blob = torch.load(path, weights_only=True)
    manifest = json.loads(blob["manifest"])
    assert manifest["arch"] == name and manifest["num_classes"] == 4
    assert manifest["kept"] == report.kept


def test_metadata_travels_with_the_model(tmp_path):
    model = models.create("resnet50", seed=0)
    gmlib.prune(model, X, 0.3, count_macs=False)
    meta = {"step": 2, "scores": {"dice": 0.75, "per_class": [0.5, float("nan")]}, "note": None}
    gmlib.save_pruned(model, tmp_path / "m.pt", metadata=meta)
    loaded, back = gmlib.load_pruned(tmp_path / "m.pt", with_metadata=True)
    assert back["step"] == 2 and back["scores"]["dice"] == 0.75 and back["note"] is None
    assert back["scores"]["per_class"][0] == 0.5 and back["scores"]["per_class"][1] != back["scores"]["per_class"][1]
    assert torch.equal(outputs(loaded), outputs(model))
    with pytest.raises(ValueError, match="JSON"):
        gmlib.save_pruned(model, tmp_path / "bad.pt", metadata={"tensor": torch.zeros(1)})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        gmlib.save_pruned(model, tmp_path / "bad.pt", metadata=[1, 2])
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # the refused writes left nothing behind


def test_pruning_twice_composes_indices(tmp_path):
    model = models.create("resnest50d", seed=0).eval()
    gmlib.prune(model, X, 0.3)
    gmlib.prune(model, X, 0.3, policy="coupled")
    gmlib.save_pruned(model, tmp_path / "twice.pt", arch="resnest50d")
    loaded = gmlib.load_pruned(tmp_path / "twice.pt")
    assert torch.equal(outputs(loaded), outputs(model))
    gmlib.save_pruned(loaded, tmp_path / "again.pt")  # arch remembered by load_pruned
    assert torch.equal(outputs(gmlib.load_pruned(tmp_path / "again.pt")), outputs(model))


def test_unpruned_model_round_trips(tmp_path):
    model = models.create("resnet50", num_classes=7, seed=1)
    gmlib.save_pruned(model, tmp_path / "plain.pt", arch="resnet50")
    loaded = gmlib.load_pruned(tmp_path / "plain.pt")
    assert loaded.fc.out_features == 7 and torch.equal(outputs(loaded), outputs(model))


def test_save_errors(tmp_path):
    model = models.create("resnet50")
    gmlib.prune(model, X, 0.3)
    foreign = timm.create_model("resnet18", pretrained=False, num_classes=4)  # not built by models.create
    with pytest.raises(ValueError, match="arch="):
        gmlib.save_pruned(foreign, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="unknown arch"):
        gmlib.save_pruned(model, tmp_path / "m.pt", arch="vgg16")
    with pytest.raises(ValueError, match="resnext50_32x4d"):
        gmlib.save_pruned(model, tmp_path / "m.pt", arch="resnext50_32x4d")
    with pytest.raises(TypeError, match="model"):
        gmlib.save_pruned({"not": "a model"}, tmp_path / "m.pt", arch="resnet50")
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        gmlib.load_pruned(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        gmlib.load_pruned(tmp_path / "junk.pt")
    torch.save({"manifest": json.dumps({"format": "other"}), "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        gmlib.load_pruned(tmp_path / "other.pt")


# ------------------------------------------------------------------------------------------------ any network

def _pruned(model, x):
    gmlib.prune(model, x, 0.3)
    return model.eval()


@pytest.mark.parametrize("builder", ["timm:resnet18", "smp:Unet:resnet18"])
def test_a_timm_or_smp_network_saves_and_loads_by_its_builder_string(tmp_path, builder):
    pytest.importorskip("segmentation_models_pytorch")
    import segmentation_models_pytorch as smp
    import timm
    torch.manual_seed(0)
    original = timm.create_model("resnet18", pretrained=False, num_classes=3) if builder.startswith("timm") else \
        smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3)
    x = torch.randn(1, 3, 64, 64)
    model = _pruned(original, x)
    gmlib.save_pruned(model, tmp_path / "m.pt", builder=builder, metadata={"note": "x"})
    back, meta = gmlib.load_pruned(tmp_path / "m.pt", with_metadata=True)
    assert meta == {"note": "x"} and torch.allclose(back(x), model(x), atol=1e-6)
    gmlib.save_pruned(back, tmp_path / "again.pt")  # the loaded model remembers its builder
    assert gmlib.load_pruned(tmp_path / "again.pt").state_dict().keys() == model.state_dict().keys()


def test_a_callable_builder_is_passed_again_and_a_wrong_builder_writes_nothing(tmp_path):
    import timm

    def build():
        return timm.create_model("resnet18", pretrained=False, num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    model = _pruned(build(), x)
    gmlib.save_pruned(model, tmp_path / "m.pt", builder=build)
    with pytest.raises(ValueError, match="pass it again"):
        gmlib.load_pruned(tmp_path / "m.pt")
    assert torch.allclose(gmlib.load_pruned(tmp_path / "m.pt", builder=build)(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="does not fit 'timm:resnet34'|does not match 'timm:resnet34'"):
        gmlib.save_pruned(model, tmp_path / "wrong.pt", builder="timm:resnet34")
    with pytest.raises(ValueError, match="unknown builder 'keras:resnet18'"):
        gmlib.save_pruned(model, tmp_path / "wrong.pt", builder="keras:resnet18")
    assert not (tmp_path / "wrong.pt").exists()
