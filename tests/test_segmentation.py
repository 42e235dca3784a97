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
