"""Filter scores (lower = pruned first) and the selection of filters to keep.

Step 3 of 9, one filter from its score to its removal (README, Layout): the filter's score (its rule hands over the
weight rows and the norm after them).

"fpgm":      ||w_j - GM(w)||, the distance to the layer's exact geometric median (He et al., CVPR 2019): filters near
             the median are the ones the others can represent, so they go first.
"fpgm-sum":  sum_i ||w_i - w_j||, the relaxation used by the FPGM paper, NNI and Torch-Pruning.
"l1", "l2":  the filter's norm (Li et al. 2017);  "random": seeded uniform;  "bn": |gamma| of the following norm layer.
A criterion of your own is a callable (weight, module, name) -> one score per filter (`fpgm`, `l1`, ... below are
the built-ins in that form); `taylor(model, inputs, targets, loss_fn)` makes a data-driven one:
"taylor":    sum over a filter's entries of (w * dL/dw)^2, first-order Taylor importance (Molchanov et al. 2019).
"""
import pandas as pd
import torch
from torch import nn

from .median import all_finite, distance_sums, distances_to, geometric_median

__all__ = ["CRITERIA", "filter_scores", "select_filters", "norm_conditions", "pruned_sets", "fpgm", "fpgm_sum", "l1",
           "l2", "taylor", "is_criterion"]

CRITERIA = ("fpgm", "fpgm-sum", "l1", "l2", "random", "bn")


def _filters(weight, groups):
    """(C_out, ...) weight -> (groups, C_out // groups, D) float filters."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor (a conv or linear weight), got {type(weight).__name__}")
    if weight.dim() < 2 or weight.numel() == 0:
        raise ValueError(f"weight must have shape (C_out, C_in, ...) with no empty dimension, got {tuple(weight.shape)}")
    if not all_finite(weight):
        raise ValueError("weight contains NaN or inf")
    _check_groups(groups, weight.shape[0], "weight's output channels")
    w = weight.detach()
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) or not w.is_floating_point() else w
    return w.reshape(groups, weight.shape[0] // groups, -1)


def _check_groups(groups, n, what):
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if n % groups:
        raise ValueError(f"groups={groups} does not divide the {n} {what}")


def is_criterion(criterion) -> bool:
    """A built-in name (CRITERIA) or a callable (weight, module, name) -> scores."""
    return callable(criterion) or criterion in CRITERIA


def filter_scores(weight, criterion="fpgm", *, groups: int = 1, bn=None, generator=None, module=None, name=None):
    """One score per output filter of a conv/linear weight (C_out, C_in/groups, k, k); lower = pruned first.

    With groups > 1 (a grouped conv: its filter groups see different inputs) the median and the distance sums are
    taken within each group. "random" uses `generator` (default: seed 0, so it is reproducible); "bn" needs `bn`,
    the BatchNorm/GroupNorm-like module (or its weight tensor) that follows, one gamma per filter.
    A callable criterion gets (weight, module, name) and must return C_out finite scores.
    Returns a float tensor of shape (C_out,) on the weight's device.
    """
    if callable(criterion):
        scores = torch.as_tensor(criterion(weight, module, name)).detach()
        if scores.shape != (weight.shape[0],) or not all_finite(scores):
            raise ValueError(f"it must return {weight.shape[0]} finite scores, one per filter, got shape "
                             f"{tuple(scores.shape)}")
        return scores.float().to(weight.device)
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    w = _filters(weight, groups)  # (g, n, D)
    if criterion == "fpgm":
        gm = geometric_median(w)  # (g, D)
        return distances_to(w, gm).flatten()
    if criterion == "fpgm-sum":
        return distance_sums(w).flatten()
    if criterion == "l1":
        return w.abs().sum(-1).flatten()
    if criterion == "l2":
        return torch.linalg.vector_norm(w, dim=-1).flatten()
    if criterion == "random":
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        return torch.rand(weight.shape[0], generator=generator).to(w.device)
    # "bn"
    if bn is None:
        raise ValueError("criterion 'bn' needs bn=, the BatchNorm that follows this layer")
    gamma = bn.weight if isinstance(bn, nn.Module) else bn
    if not isinstance(gamma, torch.Tensor):
        raise TypeError(f"bn must be a norm module with an affine weight or a tensor, got {type(bn).__name__}")
    if gamma.dim() != 1 or gamma.shape[0] != weight.shape[0]:
        raise ValueError(f"bn has {tuple(gamma.shape)} gammas, expected one per filter ({weight.shape[0]})")
    return gamma.detach().abs().float().to(w.device)


def select_filters(scores, rate: float, *, groups: int = 1, round_to: int = 1):
    """Indices (sorted, int64) of the filters to KEEP: the highest scores, floor(rate * n) pruned as NNI does.

    With groups > 1 every group of n/groups consecutive filters loses the same number, floor(rate * n / groups),
    chosen by score inside the group, so a grouped conv stays valid; no group is ever emptied. `round_to` rounds the
    kept count up to a multiple of it where possible (hardware-friendly widths). Ties go to the lower index.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    if scores.numel() == 0:
        raise ValueError("scores is empty: nothing to select from")
    if not all_finite(scores):
        raise ValueError("scores contain NaN or inf")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    n = scores.numel()
    _check_groups(groups, n, "scores")
    per_group = n // groups
    keep = per_group - min(int(rate * per_group + 1e-9), per_group - 1)
    while (keep * groups) % round_to and keep < per_group:
        keep += 1
    s = scores.detach().reshape(groups, per_group)
    order = torch.sort(-s, dim=1, stable=True).indices[:, :keep]  # (g, keep): best first, ties to lower index
    offsets = torch.arange(groups, device=s.device)[:, None] * per_group
    return (order + offsets).flatten().sort().values.to(torch.int64)


def _convs(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layer")
    return convs


@torch.no_grad()
def norm_conditions(model: nn.Module) -> pd.DataFrame:
    """Per Conv2d, the two conditions norm criteria need (He et al. 2019): spread = std(||w_j||) / mean(||w_j||)
    (large: norms tell filters apart) and smallest = min ||w_j|| / mean ||w_j|| (near 0: a filter contributes little).

    Returns one row per conv in forward-definition order: layer, filters, spread, smallest.
    """
    rows = []
    for name, conv in _convs(model):
        norms = torch.linalg.vector_norm(conv.weight.detach().flatten(1).float(), dim=1)  # (C_out,)
        mean = norms.mean().clamp_min(1e-30)
        rows.append({"layer": name, "filters": conv.out_channels, "spread": float(norms.std() / mean),
                     "smallest": float(norms.min() / mean)})
    return pd.DataFrame(rows)


def pruned_sets(model: nn.Module, rate: float, criteria, *, norm_after=None) -> dict:
    """The filters each criterion would prune at `rate` in every Conv2d, layer by layer (no coupling, no surgery).

    `norm_after` maps a conv's name to the norm module right after it, for "bn" (layers without one are skipped
    for that criterion). Returns {layer: {"n": filters, criterion: set of pruned filter indices, ...}}.
    """
    criteria = list(criteria)
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criterion {unknown[0]!r}; choose from {', '.join(CRITERIA)}")
    norm_after = norm_after or {}
    out = {}
    for name, conv in _convs(model):
        n = conv.out_channels
        out[name] = {"n": n}
        for c in criteria:
            if c == "bn" and name not in norm_after:
                continue
            scores = filter_scores(conv.weight, c, groups=conv.groups, bn=norm_after.get(name))
            kept = set(select_filters(scores, rate, groups=conv.groups).tolist())
            out[name][c] = set(range(n)) - kept
    return out


# ----------------------------------------------------------------------------------------------------- callables

def _builtin(criterion):
    def score(weight, module=None, name=None):
        return filter_scores(weight, criterion, groups=getattr(module, "groups", 1))
    score.__name__ = criterion.replace("-", "_")
    return score


fpgm, fpgm_sum, l1, l2 = (_builtin(c) for c in ("fpgm", "fpgm-sum", "l1", "l2"))


def taylor(model: nn.Module, inputs, targets, loss_fn):
    """A criterion from one batch: loss_fn(model(inputs), targets) is back-propagated once (the model's own gradients
    are left as they were), and a filter scores sum (w * dL/dw)^2 over its entries: the first-order estimate of the
    loss change when it is removed (Molchanov et al., CVPR 2019). Returns the callable (weight, module, name); it
    finds a module's gradient by its name, so it also scores a copy of `model` (the same names)."""
    params = dict(model.named_parameters())
    saved = {n: p.grad for n, p in params.items()}
    try:
        for p in params.values():
            p.grad = None
        loss_fn(model(inputs), targets).backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    finally:
        for n, p in params.items():
            p.grad = saved[n]
    by_id = {id(p): n for n, p in params.items()}

    def score(weight, module=None, name=None):
        key = f"{name}.weight" if f"{name}.weight" in grads else by_id.get(id(getattr(module, "weight", None)))
        if key not in grads:
            raise ValueError(f"taylor: no gradient for {name!r} (the batch's loss does not reach it)")
        g = grads[key]
        if g.shape != weight.shape and g.dim() > 1 and g.transpose(0, 1).shape == weight.shape:
            g = g.transpose(0, 1)  # a rule that scores the weight in another layout (ConvTranspose2d)
        return (weight.detach() * g).pow(2).flatten(1).sum(1)
    score.__name__ = "taylor"
    return score
