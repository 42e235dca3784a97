"""Dice scores for multi-label defect masks, the Kaggle way and the honest way, and threshold + min-area cleanup.

dice(p, t) = 2|p∩t| / (|p| + |t|) per (image, class) pair, := 1 when both are empty.
dice_kaggle: mean over all pairs (an all-empty prediction already scores high). dice_positive: mean over pairs whose
target is non-empty. Per class: a tensor of C values, NaN for a class with no pair to average (no positive target).
"""
import torch

__all__ = ["dice_pairs", "dice_kaggle", "dice_positive", "postprocess", "DiceMeter"]


def _as_binary(x, name):
    x = torch.as_tensor(x)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.bool and not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (binarise probabilities with postprocess first)")
    return x.bool()


def dice_pairs(pred, target):
    """(N, C, H, W) 0/1 pred and target -> (dice (N, C) float64, positive (N, C) bool: target non-empty)."""
    p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    inter = (p & t).sum((2, 3), dtype=torch.float64)  # (N, C)
    total = p.sum((2, 3), dtype=torch.float64) + t.sum((2, 3), dtype=torch.float64)
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return dice, t.any(3).any(2)


def _mean(dice, keep, per_class):
    keep = keep.to(dice.dtype)
    if per_class:
        return (dice * keep).sum(0) / keep.sum(0)  # (C,), NaN where a class has no pair (0 / 0)
    return float((dice * keep).sum() / keep.sum())


def dice_kaggle(pred, target, *, per_class=False):
    """Mean Dice over every (image, class) pair, empty-vs-empty = 1. float, or a (C,) tensor with per_class."""
    dice, _ = dice_pairs(pred, target)
    return _mean(dice, torch.ones_like(dice, dtype=torch.bool), per_class)


def dice_positive(pred, target, *, per_class=False):
    """Mean Dice over pairs whose target is non-empty. float (NaN if none), or a (C,) tensor with NaN gaps."""
    dice, positive = dice_pairs(pred, target)
    return _mean(dice, positive, per_class)


def postprocess(probs, threshold=0.5, min_area=None):
    """(N, C, H, W) probabilities -> float 0/1 masks: p > threshold, then a class is dropped from an image when its
    predicted area is below min_area[c] pixels (an int for every class, or a sequence of C ints; None: keep all).

    Areas are counted at the resolution of `probs` (scale real-data minimum areas when images are downscaled).
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 4:
        raise ValueError(f"probs must have shape (N, C, H, W), got {tuple(probs.shape)}")
    if not probs.is_floating_point() or probs.isnan().any() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be floating-point probabilities in [0, 1] (apply sigmoid to logits first)")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    masks = (probs > threshold).float()
    if min_area is None:
        return masks
    n_classes = probs.shape[1]
    areas = torch.as_tensor([min_area] * n_classes if isinstance(min_area, (int, float)) else list(min_area))
    if areas.shape != (n_classes,) or (areas < 0).any():
        raise ValueError(f"min_area must be a non-negative number or {n_classes} of them, got {min_area!r}")
    keep = masks.sum((2, 3)) >= areas.to(masks)  # (N, C)
    return masks * keep[:, :, None, None]


class DiceMeter:
    """Accumulates per-pair Dice over batches; .compute() -> dict of kaggle/positive Dice, overall and per class."""

    def __init__(self):
        self.dice, self.positive = [], []

    def update(self, pred, target):
        dice, positive = dice_pairs(pred, target)
        self.dice.append(dice.cpu())
        self.positive.append(positive.cpu())

    def compute(self) -> dict:
        if not self.dice:
            raise ValueError("DiceMeter.compute() called before any update()")
        dice, positive = torch.cat(self.dice), torch.cat(self.positive)
        every = torch.ones_like(positive)
        return {"dice_kaggle": _mean(dice, every, False), "dice_positive": _mean(dice, positive, False),
                "dice_kaggle_per_class": _mean(dice, every, True).tolist(),
                "dice_positive_per_class": _mean(dice, positive, True).tolist()}
