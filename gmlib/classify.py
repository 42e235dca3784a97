"""Training and scoring an image classifier whose classes are ordered grades of one defect (ELPV's 0, 1/3, 2/3, 1).

The network predicts the grades (softmax over K); the primary, binary call is "defective" when the grades at or
above `positive_from` hold at least half the probability. Scores: binary accuracy and balanced accuracy (the mean of
the two classes' recalls), the K-grade accuracy, and the loss.
"""
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .train import random_streams, read_training_state, set_random_states, write_training_state
from .utils import default_device

__all__ = ["balanced_class_weights", "class_probabilities", "classifier_scores", "agreement", "fit_classifier"]


def balanced_class_weights(labels, n_classes: int) -> torch.Tensor:
    """w_k = n / (K n_k): each class weighs as much in the loss as any other (a class without examples gets 0)."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@torch.no_grad()
def class_probabilities(model: nn.Module, loader, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities (N, K), labels (N,)) over `loader`, in eval mode; the model's mode is restored."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    probs, labels = [], []
    try:
        for images, y in loader:
            probs.append(F.softmax(model(images.to(device)).float(), dim=1).cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("loader is empty: nothing to score")
    return torch.cat(probs), torch.cat(labels)


def _binary(probs: torch.Tensor, positive_from: int) -> torch.Tensor:
    return (probs[:, positive_from:].sum(1) >= 0.5).long()


def classifier_scores(probs: torch.Tensor, labels: torch.Tensor, *, positive_from: int = 2,
                      class_weights=None) -> dict:
    """accuracy and balanced_accuracy of the binary call, accuracy_grades (argmax over the K grades) and loss
    (cross-entropy, weighted by `class_weights` when given)."""
    truth, call = (labels >= positive_from).long(), _binary(probs, positive_from)
    recalls = [(call[truth == c] == c).float().mean().item() for c in (0, 1) if (truth == c).any()]
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels, weight=weight).item()
    return {"accuracy": (call == truth).float().mean().item(), "balanced_accuracy": float(np.mean(recalls)),
            "accuracy_grades": (probs.argmax(1) == labels).float().mean().item(), "loss": loss}


def agreement(probs: torch.Tensor, reference: torch.Tensor, *, positive_from: int = 2) -> dict:
    """How much of a reference network's function another keeps, on the same inputs: the share of binary calls and
    of grade calls that agree, and the mean total-variation distance between the two softmax outputs (0 = same)."""
    if probs.shape != reference.shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} and reference {tuple(reference.shape)} differ in shape")
    return {"agree_binary": (_binary(probs, positive_from) == _binary(reference, positive_from)).float().mean().item(),
            "agree_grades": (probs.argmax(1) == reference.argmax(1)).float().mean().item(),
            "tv_distance": 0.5 * (probs - reference).abs().sum(1).mean().item()}


def fit_classifier(model: nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float,
                   weight_decay: float = 1e-4, class_weights=None, positive_from: int = 2, monitor: str =
                   "balanced_accuracy", warmup: float = 0.15, seed: int = 0, device=None,
                   progress: bool = True, resume=None) -> pd.DataFrame:
    """Train in place with AdamW and a one-cycle schedule (linear warm-up over `warmup` of the steps to `lr`, then
    cosine to ~0), weighted cross-entropy over the grades.

    With `val_loader`, every epoch is scored on it and the best epoch by `monitor` (ties keep the earlier) is loaded
    back at the end; without, the last epoch is kept (a fixed budget, as fine-tuning comparisons need). With
    `resume` (a path) the whole state (weights, optimiser, schedule, random streams, history) is written there after
    every epoch, and a call that finds it goes on after its last epoch, ending as an unbroken run would (as
    `gmlib.train.fit`; the caller deletes the file). Returns one row per epoch: epoch, lr, train_loss, seconds, and
    val_<score> with `best` when validated.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if monitor not in ("accuracy", "balanced_accuracy", "accuracy_grades"):
        raise ValueError(f"monitor must be accuracy, balanced_accuracy or accuracy_grades, got {monitor!r}")
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty")
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader),
                                                    pct_start=warmup, anneal_strategy="cos")
    history, best, best_state, done = [], -math.inf, None, 0
    recipe = {"epochs": epochs, "lr": float(lr), "weight_decay": float(weight_decay), "seed": seed, "monitor": monitor,
              "batches": len(train_loader), "validated": val_loader is not None, "warmup": float(warmup)}
    streams = random_streams(train_loader, val_loader)
    if resume is not None and Path(resume).is_file():
        state = read_training_state(resume, recipe)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_random_states(streams, state["random"])
        history, best, best_state, done = state["history"], state["best_score"], state["best_state"], state["epoch"]
    for epoch in tqdm(range(done + 1, epochs + 1), desc="epochs", leave=False, disable=not progress):
        model.train()
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        lr_now = optimizer.param_groups[0]["lr"]
        for images, labels in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
            loss = F.cross_entropy(model(images.to(device)), labels.to(device), weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}; lower lr={lr}")
        row = {"epoch": epoch, "lr": lr_now, "train_loss": loss_sum / seen, "seconds": time.perf_counter() - start}
        if val_loader is not None:
            probs, labels = class_probabilities(model, val_loader, device=device)
            val = classifier_scores(probs, labels, positive_from=positive_from, class_weights=class_weights)
            is_best = best_state is None or val[monitor] > best
            if is_best:
                best = val[monitor]
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            row.update({f"val_{k}": v for k, v in val.items()}, best=is_best)
        history.append(row)
        if resume is not None:
            write_training_state(resume, recipe, epoch, model, optimizer, scheduler, streams, history, best,
                                 best_state)
    if best_state is not None:
        model.load_state_dict(best_state)
    return pd.DataFrame(history)
