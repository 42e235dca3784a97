"""Dice scores for multi-label defect masks, the Kaggle way and the honest way, and threshold + min-area cleanup.

dice(p, t) = 2|p∩t| / (|p| + |t|) per (image, class) pair, := 1 when both are empty.
dice_kaggle: mean over all pairs (an all-empty prediction already scores high). dice_positive: mean over pairs whose
target is non-empty. Per class: a tensor of C values, NaN for a class with no pair to average (no positive target).
"""
import torch

__all__ = ["dice_pairs", "dice_kaggle", "dice_positive", "postprocess", "tune_postprocess", "PostprocessTuner",
           "DiceMeter"]

THRESHOLDS, MIN_AREAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), (0, 10, 20, 40, 80, 160)  # tune_postprocess's default grids


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


def _per_class(value, n_classes, name, lo, hi):
    """A number or a sequence of n_classes numbers in [lo, hi] -> float64 tensor (n_classes,)."""
    values = torch.as_tensor([value] * n_classes if isinstance(value, (int, float)) else list(value),
                             dtype=torch.float64)
    if values.shape != (n_classes,) or values.isnan().any() or (values < lo).any() or (values > hi).any():
        raise ValueError(f"{name} must be a number in [{lo}, {hi}] or {n_classes} of them, got {value!r}")
    return values


def postprocess(probs, threshold=0.5, min_area=None):
    """(N, C, H, W) probabilities -> float 0/1 masks: p > threshold[c], then a class is dropped from an image when
    its predicted area is below min_area[c] pixels (None: keep all). Both take one number for every class or C.

    Areas are counted at the resolution of `probs` (scale real-data minimum areas when images are downscaled).
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 4:
        raise ValueError(f"probs must have shape (N, C, H, W), got {tuple(probs.shape)}")
    if not probs.is_floating_point() or probs.isnan().any() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be floating-point probabilities in [0, 1] (apply sigmoid to logits first)")
    n_classes = probs.shape[1]
    thresholds = _per_class(threshold, n_classes, "threshold", 0.0, 1.0).to(probs)
    masks = (probs > thresholds[:, None, None]).float()
    if min_area is None:
        return masks
    areas = _per_class(min_area, n_classes, "min_area", 0, float("inf"))
    keep = masks.sum((2, 3)) >= areas.to(masks)  # (N, C)
    return masks * keep[:, :, None, None]


def tune_postprocess(probs, target, thresholds=THRESHOLDS, min_areas=MIN_AREAS):
    """Per class c, the (threshold, min_area) from the grids that maximises the class's Kaggle Dice on
    (probs, target): the post-processing of the strong Severstal solutions. Ties go to the earlier grid entry.

    Returns {"threshold": [C floats], "min_area": [C ints], "dice_kaggle_per_class": [C floats at that choice]}.
    Tuning and scoring on the same images is optimistic; with 8 numbers chosen on hundreds of images, slightly.
    The same from batches, without holding every probability: `PostprocessTuner`.
    """
    tuner = PostprocessTuner(thresholds, min_areas)
    tuner.update(probs, target)
    return tuner.compute()


class PostprocessTuner:
    """`tune_postprocess` batch by batch. Per image, class and threshold it keeps three numbers (predicted area,
    overlap with the target, target area), because a min_area only decides whether the predicted area is kept:
    memory grows with the number of strips by 4 x T numbers each, not with their pixels."""

    def __init__(self, thresholds=THRESHOLDS, min_areas=MIN_AREAS):
        if not thresholds or not min_areas:
            raise ValueError("thresholds and min_areas must each hold at least one value")
        self.grid_t = _per_class(list(thresholds), len(thresholds), "thresholds", 0.0, 1.0)
        self.grid_a = _per_class(list(min_areas), len(min_areas), "min_areas", 0, float("inf"))
        self.area, self.inter, self.n_true = [], [], []  # per batch: (N, C, T), (N, C, T), (N, C)

    def update(self, probs, target):
        probs = torch.as_tensor(probs)
        t = _as_binary(target, "target")
        if probs.shape != t.shape:
            raise ValueError(f"probs and target shapes differ: {tuple(probs.shape)} vs {tuple(t.shape)}")
        postprocess(probs[:1])  # validates the probabilities' range and shape
        truth = t.flatten(2)  # (N, C, HW)
        area, inter = [], []
        for thr in self.grid_t.tolist():
            pred = probs.flatten(2) > thr
            area.append(pred.sum(2, dtype=torch.float64))
            inter.append((pred & truth).sum(2, dtype=torch.float64))
        self.area.append(torch.stack(area, 2).cpu())
        self.inter.append(torch.stack(inter, 2).cpu())
        self.n_true.append(truth.sum(2, dtype=torch.float64).cpu())

    def compute(self) -> dict:
        if not self.area:
            raise ValueError("PostprocessTuner.compute() called before any update()")
        area_all, inter_all, n_true_all = torch.cat(self.area), torch.cat(self.inter), torch.cat(self.n_true)
        out = {"threshold": [], "min_area": [], "dice_kaggle_per_class": []}
        for c in range(area_all.shape[1]):
            n_true = n_true_all[:, c]  # (N,)
            best = (-1.0, 0, 0)
            for i in range(len(self.grid_t)):
                area, inter = area_all[:, c, i], inter_all[:, c, i]  # (N,)
                keep = area[None, :] >= self.grid_a[:, None]  # (A, N): which images keep the class at each min_area
                total = area * keep + n_true  # (A, N)
                dice = torch.where(total > 0, 2 * inter * keep / total.clamp_min(1), torch.ones_like(total))
                score = dice.mean(1)  # (A,)
                j = int(score.argmax())
                if score[j] > best[0]:
                    best = (float(score[j]), i, j)
            out["threshold"].append(float(self.grid_t[best[1]]))
            out["min_area"].append(int(self.grid_a[best[2]]))
            out["dice_kaggle_per_class"].append(best[0])
        return out


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
