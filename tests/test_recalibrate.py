"""recalibrate_bn: the running statistics become the average of the batch statistics, nothing else changes, and a
failure leaves the model as it was."""
import pytest
import torch
from torch import nn

from gmlib.recalibrate import recalibrate_bn


def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(),
                          nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    return model.eval()


def test_running_stats_are_the_mean_of_the_batch_stats():
    model = net()
    batches = [(torch.randn(5, 3, 8, 8) * (i + 1), None) for i in range(3)]
    weights = {k: v.clone() for k, v in model.named_parameters()}
    recalibrate_bn(model, batches, device="cpu")
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0), atol=1e-5)
    n = feats[0].numel() / feats[0].shape[1]
    unbiased = [f.var((0, 2, 3), unbiased=False) * n / (n - 1) for f in feats]
    assert torch.allclose(model[1].running_var, torch.stack(unbiased).mean(0), atol=1e-4)
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in weights.items())
    assert not model.training and model[1].momentum == 0.1 and int(model[1].num_batches_tracked) == 3


def test_steps_limits_the_batches_and_bad_input_is_named():
    model = net()
    recalibrate_bn(model, [(torch.randn(2, 3, 4, 4),)] * 5, steps=2, device="cpu")
    assert int(model[1].num_batches_tracked) == 2
    with pytest.raises(ValueError, match="steps must be None or an int >= 1, got 0"):
        recalibrate_bn(model, [], steps=0)


def test_failure_restores_the_statistics():
    model = net()
    model[1].running_mean.fill_(0.25)

    def batches():
        yield torch.randn(2, 3, 4, 4)
        raise RuntimeError("disk gone")
    with pytest.raises(RuntimeError, match="disk gone"):
        recalibrate_bn(model, batches(), device="cpu")
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.25)) and model[1].momentum == 0.1
    with pytest.raises(ValueError, match="loader is empty"):
        recalibrate_bn(model, [], device="cpu")
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.25))
