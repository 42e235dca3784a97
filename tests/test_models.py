"""gmlib.models: the paper's networks start from a local timm weight file when given one (nothing downloads), and a
missing or mismatched file is an error naming it."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from gmlib import models
from gmlib.book.study import PROFILES, Study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A resnest14d classifier's weights, written by the test (as a user's ImageNet file would be)."""
    torch.manual_seed(123)
    encoder = timm.create_model("resnest14d", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnest14d.pth"
    torch.save(encoder.state_dict(), path)
    return path, encoder.state_dict()


def test_fpn_encoder_starts_from_the_file_and_the_decoder_stays_random(encoder_file):
    path, weights = encoder_file
    model = models.create("fpn_resnest14d", seed=0, pretrained=path)
    encoder = model.encoder.state_dict()
    assert encoder and all(torch.equal(encoder[k], weights[k]) for k in encoder)  # every encoder tensor
    fresh = models.create("fpn_resnest14d", seed=0)
    assert not torch.equal(fresh.encoder.conv1[0].weight, model.encoder.conv1[0].weight)
    assert torch.equal(fresh.decoder.p5.weight, model.decoder.p5.weight)  # same seed: same random decoder


def test_classifier_from_a_safetensors_file_keeps_its_own_head(tmp_path):
    reference = timm.create_model("resnet50", pretrained=False)  # 1000 classes
    save_file(reference.state_dict(), tmp_path / "resnet50.safetensors")
    model = models.create("resnet50", pretrained=tmp_path / "resnet50.safetensors")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 4


def test_a_missing_or_mismatched_file_is_named(tmp_path, encoder_file):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        models.create("fpn_resnest14d", pretrained=tmp_path / "nothing.pth")
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"resnet18\.pth' do not fit resnest14d"):
        models.create("fpn_resnest14d", pretrained=tmp_path / "resnet18.pth")


def test_the_study_keys_the_weights_by_content_not_by_path(tmp_path, encoder_file):
    path, _ = encoder_file
    copy = tmp_path / "elsewhere.pth"
    copy.write_bytes(path.read_bytes())
    def study(**kw):
        return Study("smoke", tmp_path / "data", tmp_path / "results", store_dir=tmp_path / "store", device="cpu",
                     progress=False, **kw)
    random, here, there = study(), study(pretrained=str(path)), study(pretrained=str(copy))
    assert here.key() == there.key() != random.key()
    assert "pretrained" not in random.baseline_config()["config"]  # older keys stay valid
    assert PROFILES["smoke"][0].pretrained == ""
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        study(pretrained=str(tmp_path / "missing.pth")).key()
