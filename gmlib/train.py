"""Training and evaluation of a segmentation network with 4 sigmoid outputs (one per defect class).

loss = BCE(z, y) + mean_c [c in y] (1 - (2 Σ σ(z) y + 1) / (Σ σ(z) + Σ y + 1)), sums per class over batch and
pixels; [c in y] = class c present in the batch, so absent classes are left to the BCE term.
`fit` runs AdamW with a per-step cosine schedule and keeps the best weights by validation Dice; it takes any
nn.Module (a pruned network is just one with smaller layers), so the same call serves fine-tuning after pruning.
"""
import math
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import metrics
from .utils import atomic_open, default_device, release_freed_memory

__all__ = ["bce_dice_loss", "weighted_bce", "soft_dice", "class_sums", "dice_from_sums", "dice_term", "fit", "evaluate",
           "predict", "predictions", "padded_forward", "save_checkpoint", "MONITORS", "random_streams",
           "resume_training", "set_random_states", "write_training_state", "read_training_state"]

# Validation numbers `fit` can select the best epoch by.
MONITORS = ("dice_kaggle", "dice_positive")


def class_sums(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(3, C): per class Σ p y, Σ p, Σ y over batch and pixels, p = sigmoid(logits): what soft Dice is made of
    (sums, so a data-parallel run can add them over ranks)."""
    probs = torch.sigmoid(logits).flatten(2).transpose(0, 1).flatten(1)  # (C, N*H*W)
    target = target.flatten(2).transpose(0, 1).flatten(1).to(probs.dtype)  # (C, N*H*W)
    return torch.stack([(probs * target).sum(1), probs.sum(1), target.sum(1)])


def dice_from_sums(sums: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(C,) soft Dice (2 Σ p y + s) / (Σ p + Σ y + s) from `class_sums`."""
    return (2 * sums[0] + smooth) / (sums[1] + sums[2] + smooth)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-class soft Dice (2 Σ p y + s) / (Σ p + Σ y + s), p = sigmoid(logits), sums over batch and pixels.

    Returns a (C,) tensor; a class absent from target and prediction scores 1 (the `smooth` term).
    """
    return dice_from_sums(class_sums(logits, target), smooth)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight=None) -> torch.Tensor:
    """Mean BCE-with-logits; `pos_weight` (a number or one per class) multiplies the BCE of defect pixels."""
    target = target.to(logits.dtype)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
        if pos_weight.dim() == 1:  # one per class: broadcast over (N, C, H, W)
            pos_weight = pos_weight.view(-1, *([1] * (logits.dim() - 2)))
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def dice_term(sums: torch.Tensor) -> torch.Tensor:
    """Mean over classes of [class present] (1 - soft Dice), from `class_sums` (present: Σ y > 0)."""
    return ((1 - dice_from_sums(sums)) * (sums[2] > 0)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, pos_weight=None) -> torch.Tensor:
    """bce_weight * mean BCE-with-logits + dice_weight * mean over classes of [present] (1 - `soft_dice`); a scalar.

    `pos_weight` (a number or one per class) multiplies the BCE of defect pixels: defects cover ~1-8 % of a strip,
    and without it a network from random init first learns to predict no defect anywhere.

    The Dice term skips (counts as 0) classes absent from the batch's target: their soft Dice 1 / (Σ p + 1) would
    otherwise pull every probability of a rare class to 0 long before the network has learnt what it looks like.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits and target must have the same shape, got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    return bce_weight * weighted_bce(logits, target, pos_weight) + dice_weight * dice_term(class_sums(logits, target))


def padded_forward(model: nn.Module, images: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """model(images) on images padded (edge-replicated, bottom and right) to a multiple of `multiple` in H and W,
    logits cropped back to (N, C, H, W): an FPN needs sides divisible by its stride 32, a 1/4-scale strip is 400 wide.
    """
    h, w = images.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), mode="replicate")
    return model(images)[..., :h, :w]


def _check_threshold(threshold):
    values = [threshold] if isinstance(threshold, (int, float)) else list(threshold)
    if not values or not all(isinstance(t, (int, float)) and 0.0 < t < 1.0 for t in values):
        raise ValueError(f"threshold must lie in (0, 1) (one number or one per class), got {threshold!r}")


def _check_loader(loader, name):
    try:
        n = len(loader)
    except TypeError:
        raise ValueError(f"{name} must be a sized iterable of (image, mask) batches such as a DataLoader") from None
    if n == 0:
        raise ValueError(f"{name} is empty: it yields no batches")


def predict(model: nn.Module, loader_or_batch, *, device=None, pad_to: int = 32) -> torch.Tensor:
    """Sigmoid probabilities (N, C, H, W) on the CPU for an image batch (N, 3, H, W) or a loader of (image, mask).

    Inputs are padded to a multiple of `pad_to` for the forward pass (see `padded_forward`); 1 turns that off.
    All of them at once: for a large set, stream the batches with `predictions`.
    """
    batches = [(loader_or_batch, None)] if isinstance(loader_or_batch, torch.Tensor) else loader_or_batch
    probs = [p for p, _ in predictions(model, batches, device=device, pad_to=pad_to)]
    if not probs:
        raise ValueError("loader_or_batch is empty: it yields no batches")
    return torch.cat(probs)


def predictions(model: nn.Module, loader, *, device=None, pad_to: int = 32):
    """Yields (sigmoid probabilities on the CPU, masks) per (image, mask) batch of `loader`, in eval mode."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    try:
        for images, masks in loader:
            with torch.no_grad():
                probs = torch.sigmoid(padded_forward(model, images.to(device), pad_to)).float().cpu()
            yield probs, masks
            del probs, images, masks
            release_freed_memory()  # a streamed pass stays flat (see utils.release_freed_memory)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device=None, threshold=0.5, min_area=None,
             loss_fn=bce_dice_loss, progress: bool = False, pad_to: int = 32) -> dict:
    """Mean loss and Dice over a loader of (image, mask) batches; masks come from `metrics.postprocess` with
    `threshold` and `min_area` (one for every class, or one per class, e.g. from `metrics.tune_postprocess`).

    dice_kaggle averages every (image, class) pair (empty-empty = 1); dice_positive only pairs with a defect.
    Returns floats: loss, dice_kaggle, dice_positive and per-class lists dice_kaggle_per_class,
    dice_positive_per_class (NaN for a class with no positive pair in the loader).
    Inputs are padded to a multiple of `pad_to` for the forward pass (see `padded_forward`).
    """
    _check_loader(loader, "loader")
    _check_threshold(threshold)
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    loss_sum, n_images, meter = 0.0, 0, metrics.DiceMeter()
    for images, masks in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, masks = images.to(device), masks.to(device)
        logits = padded_forward(model, images, pad_to)
        loss_sum += loss_fn(logits, masks.float()).item() * len(images)
        n_images += len(images)
        meter.update(metrics.postprocess(torch.sigmoid(logits), threshold=threshold, min_area=min_area), masks > 0.5)
        del images, masks, logits
        release_freed_memory()
    model.train(was_training)
    return {"loss": loss_sum / n_images, **meter.compute()}


def save_checkpoint(path, model: nn.Module, **metadata) -> Path:
    """Write {"state_dict": ..., **metadata} atomically: a temp file in the same folder, then os.replace.

    A crash mid-write leaves the previous checkpoint intact; the file loads with torch.load(weights_only=True).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_open(path) as f:
        torch.save({"state_dict": state, **metadata}, f)
    return Path(path)


def fit(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float, weight_decay: float = 1e-4,
        device=None, checkpoint=None, seed: int = 0, arch: str | None = None, monitor: str = "dice_kaggle",
        threshold: float = 0.5, min_area=None, loss_fn=bce_dice_loss, max_grad_norm: float | None = None,
        restore_best: bool = True, resume=None, amp: bool | None = None, channels_last: bool = False,
        progress: bool = True) -> pd.DataFrame:
    """Train `model` in place with AdamW and a per-step cosine schedule lr_t = lr (1 + cos(π t / T)) / 2.

    After every epoch the model is evaluated on `val_loader`; the epoch with the highest val `monitor` is kept:
    written to `checkpoint` (if given, atomically, with epoch, monitor, val Dice and `arch`) and, with
    `restore_best`, loaded back into `model` at the end. With `val_loader=None` nothing is evaluated and the last
    epoch is the one kept (a fixed budget, as fine-tuning comparisons need). `seed` seeds torch's global RNG
    (dropout, and loader shuffling unless the loader has its own generator). The model is moved to `device`
    (default: CUDA if present). `threshold`/`min_area` go to `evaluate` (one number or one per class).

    On CUDA the forward runs under bf16 autocast (`amp`, default on there; the loss's sums stay float32), with
    `channels_last` the model and batches use that memory format, and nothing waits for the GPU within an epoch
    (the loss is summed on the device and checked for inf/NaN once per epoch). On CPU nothing of this changes.

    With `resume` (a path), the whole state of training (weights, optimiser, schedule, every random stream the
    loader and torch draw from, history, best epoch so far) is written there atomically after each epoch, and a
    call that finds the file goes on after its last finished epoch: a run killed at any moment, run again, ends
    with the same weights and history as one that was never stopped. The file is left in place (delete it once
    the result is safe); one written by another recipe (epochs, lr, seed, ...) is an error naming it.

    Returns one row per epoch: epoch, lr, train_loss, seconds (training wall time), and with a val_loader
    val_loss, val_dice_kaggle, val_dice_positive, best.
    """
    _check_loader(train_loader, "train_loader")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    _check_threshold(threshold)
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else default_device()
    amp = device.type == "cuda" if amp is None else bool(amp)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    arch = arch or type(model).__name__
    history, best_score, best_state = [], -math.inf, None
    recipe = {"epochs": epochs, "lr": float(lr), "weight_decay": float(weight_decay), "seed": seed, "monitor": monitor,
              "batches": len(train_loader), "validated": val_loader is not None}
    streams = random_streams(train_loader, val_loader)
    history, best_score, best_state, done = resume_training(resume, recipe, model, optimizer, scheduler, streams,
                                                            (history, best_score, best_state, 0))
    epoch_bar = tqdm(range(done + 1, epochs + 1), desc="epochs", leave=False, disable=not progress)
    for epoch in epoch_bar:
        model.train()
        loss_sum, n_images = torch.zeros((), dtype=torch.float64, device=device), 0
        lr_now = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        for images, masks in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
            images = images.to(device, non_blocking=True, memory_format=layout)
            masks = masks.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
            loss = loss_fn(logits.float(), masks.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(images)  # float64, as Python's sum of .item()s was
            n_images += len(images)
        train_loss = loss_sum.item() / n_images  # the epoch's one wait for the device
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}; lower lr={lr}")
        row = {"epoch": epoch, "lr": lr_now, "train_loss": train_loss, "seconds": time.perf_counter() - start}
        if val_loader is None:
            history.append(row)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, epoch=epoch, arch=arch)
            if resume is not None:
                write_training_state(resume, recipe, epoch, model, optimizer, scheduler, streams, history,
                                      best_score, best_state)
            epoch_bar.set_postfix(loss=f"{row['train_loss']:.3f}")
            continue
        val = evaluate(model, val_loader, device=device, threshold=threshold, min_area=min_area, loss_fn=loss_fn)
        score = -math.inf if math.isnan(val[monitor]) else val[monitor]
        is_best = best_state is None or score > best_score  # ties keep the earlier epoch
        if is_best:
            best_score = score
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, epoch=epoch, arch=arch, monitor=monitor,
                                val_dice_kaggle=val["dice_kaggle"], val_dice_positive=val["dice_positive"])
        history.append({**row, "val_loss": val["loss"], "val_dice_kaggle": val["dice_kaggle"],
                        "val_dice_positive": val["dice_positive"], "best": is_best})
        if resume is not None:
            write_training_state(resume, recipe, epoch, model, optimizer, scheduler, streams, history, best_score,
                                  best_state)
        epoch_bar.set_postfix(loss=f"{row['train_loss']:.3f}", dice=f"{val[monitor]:.3f}")
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return pd.DataFrame(history)


def random_streams(*loaders) -> list:  # also gmlib.classify's: one way to make a training resumable
    """The torch.Generators the loaders draw from (their own, their samplers', their datasets'), each once."""
    found = {}
    owners = [o for loader in loaders for o in (loader, getattr(loader, "sampler", None), getattr(loader, "dataset", None))]
    for owner in owners:
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def resume_training(path, recipe, model, optimizer, scheduler, streams, fresh):
    """(history, best score, best state, epochs done) from the training state at `path`, with the model, optimiser,
    schedule and random streams put back as they were after that epoch; `fresh` when there is none to resume."""
    if path is None or not Path(path).is_file():
        return fresh
    state = read_training_state(path, recipe)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_random_states(streams, state["random"])
    return state["history"], state["best_score"], state["best_state"], state["epoch"]


def set_random_states(streams, states):
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states.get("cuda"):
        torch.cuda.set_rng_state_all(states["cuda"])
    for g, s in zip(streams, states["streams"], strict=True):
        g.set_state(s)


def write_training_state(path, recipe, epoch, model, optimizer, scheduler, streams, history, best_score, best_state):
    random = {"torch": torch.get_rng_state(), "streams": [g.get_state() for g in streams],
              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    state = {"recipe": recipe, "epoch": epoch, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "random": random,
             "history": history, "best_score": best_score, "best_state": best_state}
    with atomic_open(path) as f:
        torch.save(state, f)


def read_training_state(path, recipe) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which one, and what to do
        raise ValueError(f"cannot resume from {path}: not a training state ({type(e).__name__}: {e}); "
                         f"delete it to train from the start") from e
    if not isinstance(state, dict) or state.get("recipe") != recipe:
        found = state.get("recipe") if isinstance(state, dict) else None
        raise ValueError(f"cannot resume from {path}: it was written by another recipe ({found}, this one is "
                         f"{recipe}); delete it or pass another resume path")
    return state
