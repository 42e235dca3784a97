"""segmentation_models_pytorch networks (random init) prune exactly, judged by value (gmlib.verify), both policies."""
import copy
import warnings

import pytest
import torch

import gmlib
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL

smp = pytest.importorskip("segmentation_models_pytorch")
pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["Unet", "FPN", "UnetPlusPlus", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "UPerNet"]
X = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_smp_architecture_prunes_exactly(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = fingerprint(getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=2)
                               .double().eval())
    for policy, least in (("or-merge", 15), ("coupled", 25)):
        pruned = copy.deepcopy(original)
        report = gmlib.prune(pruned, X, 0.3, policy=policy, count_macs=False)  # smp checks x.shape[-2:] in forward
        assert check_exact(original, pruned, X) < EXACT_TOL, arch
        assert report.params_reduction >= least, (arch, policy, report.frozen_reason)


# encoders and decoders that need the newer rules: smp's same-padding convs (efficientnet), torch.stack(...).sum(0)
# (FPN's merge), ConvTranspose2d (Linknet), scSE gates over the decoder's concatenations (Unet attention)
NEWER_RULES = [("Unet", "efficientnet-b0", {"decoder_attention_type": "scse"}), ("FPN", "efficientnet-b0", {}),
               ("Linknet", "mobilenet_v2", {}), ("UnetPlusPlus", "resnet18", {"decoder_attention_type": "scse"})]


@pytest.mark.parametrize("arch, encoder, kwargs", NEWER_RULES)
def test_smp_networks_that_need_the_newer_rules_prune_exactly(arch, encoder, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = fingerprint(getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=2, **kwargs)
                               .double().eval())
        pruned = copy.deepcopy(original)
        report = gmlib.prune(pruned, X, 0.3, policy="coupled", count_macs=False)
    assert check_exact(original, pruned, X) < EXACT_TOL
    assert report.coverage > 0.99 and report.params_reduction >= 25, report.frozen  # before these rules: 2-98 %


# torchvision's four segmentation models (random init); benchmarks/bench_segmentation.py times them against
# Torch-Pruning
TORCHVISION = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_segmentation_model_prunes_exactly(name):
    from torchvision.models import segmentation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = fingerprint(getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=2)
                               .double().eval())
    for policy in ("or-merge", "coupled"):
        pruned = copy.deepcopy(original)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = gmlib.prune(pruned, X, 0.3, policy=policy, count_macs=False)
        assert check_exact(original, pruned, X) < EXACT_TOL, (name, policy)
        assert report.params_reduction > 5, (name, policy, report.frozen_reason)
