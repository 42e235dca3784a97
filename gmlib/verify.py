"""An independent check of any structured pruning (gmlib's or another tool's): find the survivors by value.

`fingerprint` makes every parameter entry unique; after pruning, each pruned tensor is located inside its original
by value, which gives the kept output channels (dim 0) of every module without trusting the pruner's report.
`masked_reference` hands them to `gmlib.check`, which zeroes the dropped rows in a copy of the original and judges
(`check_exact`) as it does for `prune`'s own check: an exact pruning computes the same function.
"""
import torch
from torch import nn

from .check import masked, outputs, relative_error

__all__ = ["fingerprint", "survivors", "masked_reference", "check_exact"]


@torch.no_grad()
def fingerprint(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm a random affine and running statistics, and every parameter distinct entries, in place.

    Norm gammas in [0.5, 1.5], betas and means in [-0.1, 0.1], variances in [0.5, 1.5]; weights are redrawn
    uniformly with their own standard deviation (a zero init gets 1/sqrt(fan_in)). Use a float64 model.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_((lo + (hi - lo) * torch.rand(t.shape, generator=g, dtype=torch.float64)).to(t.dtype))

    for m in model.modules():
        for name, lo, hi in (("running_mean", -0.1, 0.1), ("running_var", 0.5, 1.5)):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                uniform(t, lo, hi)
    for name, p in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                     if n.endswith((".weight", ".bias"))]:
        if not p.is_floating_point() or p.numel() == 0:
            continue
        if p.dim() == 1 and name.endswith(".weight"):      # norm / layer-scale gammas
            uniform(p, 0.5, 1.5)
        elif p.dim() == 1:                                 # biases
            uniform(p, -0.1, 0.1)
        else:  # redrawn in float64 at the init's own spread (float32 inits repeat values; zero inits are all equal)
            scale = 3 ** 0.5 * float(p.double().std()) or 1.0 / max(1, p[0].numel()) ** 0.5
            uniform(p, -scale, scale)
    return model


def _rows(name, before, after):
    """Original dim-0 index of every row of `after`, found by locating its entries in `before` by value.

    Only dims 0 and 1 may shrink (channel pruning); the entries at kernel position 0 are enough to place each row.
    """
    if after.dim() != before.dim() or after.shape[2:] != before.shape[2:] \
            or after.shape[1:2] > before.shape[1:2]:
        raise ValueError(f"{name}: shape {tuple(after.shape)} is not a channel sub-grid of {tuple(before.shape)}")
    at0 = (slice(None), slice(None)) + (0,) * (before.dim() - 2)
    b, a = (before[at0], after[at0]) if before.dim() > 1 else (before, after)
    b, a = b.detach().double(), a.detach().double()
    if a.dim() == 2:  # fast path: one column places the rows, one row places the columns, one gather checks all
        rows, cols = _locate(b[:, _column_of(b, a[0, 0])], a[:, 0]), None
        if rows is not None:
            cols = _locate(b[rows[0]], a[0])
        if cols is not None and torch.equal(b[rows][:, cols], a):
            return rows
    values, order = b.flatten().sort()
    if (values[1:] == values[:-1]).any():
        raise ValueError(f"{name}: the original has repeated entries; call fingerprint() before pruning")
    flat = a.flatten().contiguous()
    pos = torch.searchsorted(values, flat).clamp_max(len(values) - 1)
    if not (values[pos] == flat).all():
        raise ValueError(f"{name}: pruned entries that the original does not contain (changed, not just pruned)")
    rows = torch.unravel_index(order[pos], b.shape)[0].view(a.shape[0], -1)
    if (rows != rows[:, :1]).any():
        raise ValueError(f"{name}: a pruned row mixes entries of several original rows")
    return rows[:, 0]


def _column_of(b, value):
    hit = (b == value).nonzero()
    return int(hit[0, 1]) if len(hit) == 1 else 0


def _locate(haystack, needles):
    """Index in the 1-D `haystack` of each needle, or None when one is missing or the haystack repeats a value."""
    values, order = haystack.sort()
    if (values[1:] == values[:-1]).any():
        return None
    pos = torch.searchsorted(values, needles.contiguous()).clamp_max(len(values) - 1)
    return order[pos] if (values[pos] == needles).all() else None


def survivors(original: nn.Module, pruned: nn.Module) -> dict:
    """{tensor name: original indices of the kept rows (dim 0)} for every parameter or buffer that lost rows.

    Both models must have the same module names; `original` must have been fingerprinted (distinct entries).
    """
    before = dict(original.named_parameters())
    before.update(original.named_buffers())
    out = {}
    tensors = list(pruned.named_parameters()) + list(pruned.named_buffers())
    for name, t in tensors:
        if name not in before:
            raise ValueError(f"the pruned model has a tensor {name!r} that the original does not")
        b = before[name]
        if t.shape == b.shape:
            if t.is_floating_point() and not torch.equal(t.detach().cpu(), b.detach().cpu()):
                raise ValueError(f"{name}: same shape as the original but different values")
            continue
        if t.dim() == 0 or not t.is_floating_point():
            raise ValueError(f"{name}: a non-float or scalar tensor changed shape")
        if name.endswith(("running_var", "num_batches_tracked")):
            continue
        rows = _rows(name, b, t) if t.shape[0] < b.shape[0] else None
        if rows is not None:
            out[name] = rows
    return out


def masked_reference(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """A copy of `original` with the rows `pruned` dropped set to zero (weights, biases, norm affines)."""
    tensors = {n for n, _ in original.named_parameters()}
    tensors.update(n for n, _ in original.named_buffers() if n.endswith((".weight", ".bias")))
    # running statistics are left: harmless once the affine is zero
    return masked(original, {n: {"out": rows} for n, rows in survivors(original, pruned).items() if n in tensors})


@torch.no_grad()
def check_exact(original: nn.Module, pruned: nn.Module, example_inputs) -> float:
    """Largest |pruned(x) - masked_reference(x)| relative to the reference's largest |value|, in eval mode.

    Run it in float64: an exact surgery then agrees to ~1e-12, where float32 reordering alone gives ~1e-5.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    ref = masked_reference(original, pruned)
    was = pruned.training
    try:
        a, b = outputs(pruned, example_inputs, "eval"), outputs(ref, example_inputs, "eval")
    finally:
        pruned.train(was)
    if [t.shape for t in a] != [t.shape for t in b]:
        raise ValueError(f"output shapes differ: {[tuple(t.shape) for t in a]} vs {[tuple(t.shape) for t in b]}")
    return relative_error(b, a)
