"""What a task is scored and trained by: the built-in metrics and losses of `compress`, and its fine-tuning loop.

A metric is `metric(model, loader) -> float`, higher is better, in eval mode (the model's mode is restored); a loss
is `loss(outputs, targets) -> scalar`. Fine-tuning: AdamW for a fixed number of optimiser steps, lr cosine to 0,
the last weights kept (no choice on validation: the scores after it stay honest).
"""
import math
from functools import partial
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import train
from .utils import default_device

__all__ = ["METRICS", "LOSSES", "DEFAULTS", "TASK_OF", "accuracy", "dice", "finetune", "resolve"]


@torch.no_grad()
def accuracy(model: nn.Module, loader, *, device=None) -> float:
    """Share of images whose argmax output is their label."""
    device = torch.device(device) if device is not None else default_device()
    was_training, right, seen = model.training, 0, 0
    model.eval().to(device)
    try:
        for images, labels in loader:
            right += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
            seen += len(labels)
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("loader is empty: nothing to score")
    return right / seen


def dice(model: nn.Module, loader, *, device=None, kind: str = "dice_kaggle") -> float:
    """gmlib.train.evaluate's Dice (threshold 0.5, no minimum area) of a 4-mask segmentation network."""
    return float(train.evaluate(model, loader, device=device)[kind])


METRICS = {"accuracy": accuracy, "dice_kaggle": dice, "dice_positive": partial(dice, kind="dice_positive")}
LOSSES = {"cross_entropy": F.cross_entropy,
          "bce_dice": partial(train.bce_dice_loss, pos_weight=5.0)}  # the study's segmentation loss
TASK_OF = {"accuracy": "classification", "dice_kaggle": "segmentation", "dice_positive": "segmentation"}
DEFAULTS = {"classification": ("accuracy", "cross_entropy"), "segmentation": ("dice_kaggle", "bce_dice")}


def resolve(value, table: dict, what: str):
    """(name, callable) of a built-in's name or of a callable; ValueError naming `what` for an unknown name."""
    if callable(value):
        return getattr(value, "__name__", type(value).__name__), value
    if value not in table:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(table)} or pass a callable")
    return value, table[value]


def _forever(loader):
    """The loader's batches, pass after pass (itertools.cycle would keep a whole pass in memory)."""
    while True:
        seen = 0
        for batch in loader:
            seen += 1
            yield batch
        if not seen:
            raise ValueError("the training loader is empty: nothing to fine-tune on")


def finetune(model: nn.Module, loader, loss, steps: int, lr: float, *, weight_decay: float = 1e-4, seed: int = 0,
             device=None, progress: bool = True) -> list:
    """Train `model` in place for `steps` AdamW steps over `loader` (cycled), lr_t = lr (1 + cos(pi t / steps)) / 2;
    returns the loss of every step. FloatingPointError when the loss stops being finite."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    losses, batches = [], _forever(loader)
    try:
        for step in tqdm(range(steps), desc="fine-tune", leave=False, disable=not progress or not steps):
            inputs, targets = next(batches)
            value = loss(model(inputs.to(device)), targets.to(device))
            if not torch.isfinite(value):
                raise FloatingPointError(f"fine-tuning loss became {value.item()} at step {step}; lower lr={lr}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            losses.append(value.item())
    finally:
        model.eval()
    return losses
