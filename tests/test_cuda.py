"""On a GPU (skipped without CUDA): prune and its float64 self-check on CUDA, a few fit steps under bf16 autocast
and channels_last, and evaluation. `scripts/gpu_check.py` measures speed; this only checks the paths work."""
import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import gmlib
from gmlib import train
from gmlib.verify import check_exact, fingerprint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_prune_and_its_check_run_on_cuda():
    original = fingerprint(gmlib.models.create("fpn_resnest14d", seed=0).double().eval().cuda())
    x = torch.randn(1, 3, 64, 256, dtype=torch.float64, device="cuda")
    pruned = copy.deepcopy(original)
    report = gmlib.prune(pruned, x, 0.4, policy="coupled")  # verify=True: the check runs on the GPU
    assert report.params_reduction > 25 and next(pruned.parameters()).is_cuda
    assert check_exact(original, pruned, x) < 1e-9


def test_fit_under_autocast_and_channels_last_then_evaluate():
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(16, 3, 64, 256, generator=g), (torch.rand(16, 4, 64, 256, generator=g) > 0.9).float()
    loader = DataLoader(TensorDataset(images, masks), batch_size=4, pin_memory=True)
    model = gmlib.models.create("fpn_resnest14d", seed=0)
    history = train.fit(model, loader, loader, epochs=2, lr=1e-3, device="cuda", channels_last=True, progress=False)
    assert history.train_loss.notna().all() and history.train_loss.iloc[-1] < history.train_loss.iloc[0] + 0.5
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in float32
    scores = train.evaluate(model, loader, device="cuda")
    assert 0 <= scores["dice_kaggle"] <= 1
