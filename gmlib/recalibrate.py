"""BatchNorm recalibration after pruning: re-estimate every norm's running mean and variance on training batches.

With momentum None, BatchNorm keeps the cumulative average over the batches seen: running = mean_b stat_b. Only the
norms run in train mode, no gradient is taken and no weight changes (NNCF's batch-norm adaptation, EagleEye).
"""
import torch
from torch import nn

from .utils import default_device

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, steps: int | None = None, *, device=None) -> nn.Module:
    """Reset the running statistics of every BatchNorm in `model` and re-estimate them from the images of the first
    `steps` batches of `loader` (all of them when None). Other modules stay in eval mode (no dropout); the model's
    mode and each norm's momentum are restored. Returns `model` (changed in place)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be None or an int >= 1, got {steps!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    device = torch.device(device) if device is not None else default_device()
    was_training, momenta = model.training, [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]  # restored on failure
    model.eval().to(device)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for batch in loader:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            seen += 1
            if steps is not None and seen == steps:
                break
        if seen == 0:
            raise ValueError("loader is empty: no batch to recalibrate the BatchNorm statistics on")
    except BaseException:
        for m, buffers in zip(norms, saved):
            for k, v in buffers.items():
                getattr(m, k).copy_(v)
        raise
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model
