"""Training and scoring an image classifier whose classes are ordered grades of one defect (ELPV's 0, 1/3, 2/3, 1).

Two heads: K outputs (softmax over the grades; "defective" when the grades from `positive_from` on hold at least
half the probability), or one output (a sigmoid regressing the grade's defect probability g / (K - 1), trained with
binary cross-entropy on that soft target; "defective" when it is at least 0.5, the grade call its nearest grade).
Scores: binary accuracy and balanced accuracy (the mean of the two classes' recalls), grade accuracy, and the loss.
"""
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .train import random_streams, resume_training, write_training_state
from .utils import default_device

__all__ = ["balanced_class_weights", "class_probabilities", "defect_probability", "grade_call", "classifier_scores",
           "agreement", "classifier_loss", "fit_classifier"]


def balanced_class_weights(labels, n_classes: int) -> torch.Tensor:
    """w_k = n / (K n_k): each class weighs as much in the loss as any other (a class without examples gets 0)."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _normalise(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else F.softmax(logits, dim=1)


@torch.no_grad()
def class_probabilities(model: nn.Module, loader, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, labels (N,)) over `loader` in eval mode (the model's mode is restored): outputs are softmax
    probabilities (N, K) of a K-output head, or the defect probability (N, 1) of a one-output head."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    probs, labels = [], []
    try:
        for images, y in loader:
            probs.append(_normalise(model(images.to(device)).float()).cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("loader is empty: nothing to score")
    return torch.cat(probs), torch.cat(labels)


def defect_probability(probs: torch.Tensor, positive_from: int = 2) -> torch.Tensor:
    """(N,): the one-output head's probability, or the K-output head's mass on the grades from `positive_from`."""
    return probs[:, 0] if probs.shape[1] == 1 else probs[:, positive_from:].sum(1)


def grade_call(probs: torch.Tensor, grades: int = 4) -> torch.Tensor:
    """(N,) grade indices: the argmax of a K-output head, the nearest grade of a one-output head's probability."""
    return (probs[:, 0] * (grades - 1)).round().long() if probs.shape[1] == 1 else probs.argmax(1)


def classifier_loss(outputs: torch.Tensor, labels: torch.Tensor, class_weights=None, *, positive_from: int = 2,
                    grades: int = 4, logits: bool = True) -> torch.Tensor:
    """Cross-entropy over the grades (weighted by `class_weights`, one per grade), or for a one-output head binary
    cross-entropy against the soft target g / (grades - 1), each cell weighted by `class_weights` of its binary class
    (two weights: not defective, defective)."""
    if outputs.shape[1] > 1:
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32,
                                                                     device=outputs.device)
        log_p = F.log_softmax(outputs, 1) if logits else torch.log(outputs.clamp_min(1e-12))
        return F.nll_loss(log_p, labels, weight=weight)
    target = labels.float() / (grades - 1)
    if logits:
        per_cell = F.binary_cross_entropy_with_logits(outputs[:, 0], target, reduction="none")
    else:
        per_cell = F.binary_cross_entropy(outputs[:, 0].clamp(1e-7, 1 - 1e-7), target, reduction="none")
    if class_weights is None:
        return per_cell.mean()
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=outputs.device)
    weight = weights[(labels >= positive_from).long()]
    return (per_cell * weight).sum() / weight.sum()


def classifier_scores(probs: torch.Tensor, labels: torch.Tensor, *, positive_from: int = 2, grades: int = 4,
                      class_weights=None) -> dict:
    """accuracy and balanced_accuracy of the binary call, accuracy_grades and loss (`classifier_loss`)."""
    truth, call = (labels >= positive_from).long(), (defect_probability(probs, positive_from) >= 0.5).long()
    recalls = [(call[truth == c] == c).float().mean().item() for c in (0, 1) if (truth == c).any()]
    loss = classifier_loss(probs, labels, class_weights, positive_from=positive_from, grades=grades, logits=False)
    return {"accuracy": (call == truth).float().mean().item(), "balanced_accuracy": float(np.mean(recalls)),
            "accuracy_grades": (grade_call(probs, grades) == labels).float().mean().item(), "loss": loss.item()}


def agreement(probs: torch.Tensor, reference: torch.Tensor, *, positive_from: int = 2, grades: int = 4) -> dict:
    """How much of a reference network's function another keeps, on the same inputs: the share of binary calls and
    of grade calls that agree, and the mean total-variation distance between the two outputs (0 = the same)."""
    if probs.shape != reference.shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} and reference {tuple(reference.shape)} differ in shape")
    same = (defect_probability(probs, positive_from) >= 0.5) == (defect_probability(reference, positive_from) >= 0.5)
    tv = (probs - reference).abs()[:, 0] if probs.shape[1] == 1 else 0.5 * (probs - reference).abs().sum(1)
    return {"agree_binary": same.float().mean().item(),
            "agree_grades": (grade_call(probs, grades) == grade_call(reference, grades)).float().mean().item(),
            "tv_distance": tv.mean().item()}


def fit_classifier(model: nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float,
                   weight_decay: float = 1e-4, class_weights=None, positive_from: int = 2, monitor: str =
                   "balanced_accuracy", warmup: float = 0.15, grades: int = 4, seed: int = 0, device=None,
                   progress: bool = True, resume=None) -> pd.DataFrame:
    """Train in place with AdamW and a one-cycle schedule (warm-up over `warmup` of the steps to `lr`, then cosine to
    ~0), with `classifier_loss` (its form follows the head's width).

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
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader),
                                                    pct_start=warmup, anneal_strategy="cos")
    recipe = {"epochs": epochs, "lr": float(lr), "weight_decay": float(weight_decay), "seed": seed, "monitor": monitor,
              "batches": len(train_loader), "validated": val_loader is not None, "warmup": float(warmup)}
    streams = random_streams(train_loader, val_loader)
    history, best, best_state, done = resume_training(resume, recipe, model, optimizer, scheduler, streams,
                                                      ([], -math.inf, None, 0))
    for epoch in tqdm(range(done + 1, epochs + 1), desc="epochs", leave=False, disable=not progress):
        model.train()
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        lr_now = optimizer.param_groups[0]["lr"]
        for images, labels in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
            loss = classifier_loss(model(images.to(device)), labels.to(device), class_weights,
                                   positive_from=positive_from, grades=grades)
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
            val = classifier_scores(probs, labels, positive_from=positive_from, grades=grades,
                                    class_weights=class_weights)
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
