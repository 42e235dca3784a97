"""Shrinking modules in place: keep some output rows and input columns of a conv, norm or Linear.

A conv keeps rows `out` of its weight (and bias) and columns `in_`; a grouped conv must keep the same number in each
group; a norm keeps its per-channel affine and statistics; `mask_kept` zeroes the dropped rows instead (the reference).
Modules whose rule (gmlib.rules) brings its own `shrink` / `mask` are cut and masked by it. A name that is a tensor
rather than a module (a bare per-channel parameter, gmlib.rules.params) keeps entries `out` along its channel dim.
"""
import torch
from torch import nn

from .layers import is_batch_norm

__all__ = ["shrink_module", "shrink_tensor", "tensor_owner", "shrink_named", "apply_kept", "mask_kept", "mask_pruned"]


def _param(t, like):
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def shrink_module(m: nn.Module, out=None, in_=None) -> None:
    """Keep rows `out` (output channels / norm channels) and columns `in_` (input channels) of one module, in place.

    Conv2d (grouped: both index sets must keep the same number in every group; depthwise: `out` only),
    BatchNorm, GroupNorm (whole groups), Linear (`in_` only), and any module whose rule (gmlib.rules) has its own
    `shrink` (ConvTranspose2d, InstanceNorm, PReLU, per-channel modules, users' rules). Every other attribute is
    left as it was.
    """
    from .rules import rule_for
    dev = next(m.parameters()).device if any(True for _ in m.parameters()) else None
    out = None if out is None else torch.as_tensor(out, dtype=torch.long, device=dev)
    in_ = None if in_ is None else torch.as_tensor(in_, dtype=torch.long, device=dev)
    rule = rule_for(m)
    if rule is not None and rule.shrink is not None:
        rule.shrink(m, out, in_)
    elif isinstance(m, nn.Conv2d):
        g, w = m.groups, m.weight
        if g > 1 and g == m.in_channels == m.out_channels:  # depthwise: one index set for both
            idx = out if out is not None else in_
            m.weight = _param(w[idx], w)
            if m.bias is not None:
                m.bias = _param(m.bias[idx], m.bias)
            m.in_channels = m.out_channels = m.groups = len(idx)
            return
        if in_ is not None and g == 1:
            w = (w if out is None else w.index_select(0, out)).index_select(1, in_)
            m.in_channels = len(in_)
        elif in_ is not None:  # grouped: row r reads the kept columns of its own group
            if len(in_) % g or (torch.bincount(in_ // (m.in_channels // g), minlength=g) != len(in_) // g).any():
                raise RuntimeError(f"input channels of grouped conv are not balanced over its {g} groups")
            rows = out if out is not None else torch.arange(m.out_channels, device=w.device)
            cols = in_.view(g, -1) - torch.arange(g, device=w.device)[:, None] * (m.in_channels // g)
            w = w[rows[:, None], cols[rows // (m.out_channels // g)]]
            m.in_channels = len(in_)
        elif out is not None:
            w = w.index_select(0, out)
        if out is not None and g > 1 and (torch.bincount(out // (m.out_channels // g), minlength=g)
                                          != len(out) // g).any():
            raise RuntimeError(f"output channels of grouped conv are not balanced over its {g} groups")
        m.weight = _param(w, m.weight)
        if out is not None:
            if m.bias is not None:
                m.bias = _param(m.bias[out], m.bias)
            m.out_channels = len(out)
    elif is_batch_norm(m):  # nn.BatchNorm*, timm's BatchNormAct2d, frozen BNs (affine kept as buffers)
        for k in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, k, None)
            if isinstance(t, nn.Parameter):
                setattr(m, k, _param(t[out], t))
            elif isinstance(t, torch.Tensor):
                setattr(m, k, t[out].clone())
        m.num_features = len(out)
    elif isinstance(m, nn.GroupNorm):
        size = m.num_channels // m.num_groups
        blocks = out.view(-1, size) if len(out) % size == 0 else None
        if blocks is None or (blocks[:, 0] % size).any() or \
                (blocks != blocks[:, :1] + torch.arange(size, device=out.device)).any():
            raise RuntimeError(f"GroupNorm channels must be removed in whole groups of {size}")
        if m.affine:
            m.weight, m.bias = _param(m.weight[out], m.weight), _param(m.bias[out], m.bias)
        m.num_channels, m.num_groups = len(out), len(out) // size
    elif isinstance(m, nn.Linear):
        m.weight = _param(m.weight[:, in_], m.weight)
        m.in_features = len(in_)
    else:
        raise TypeError(f"cannot shrink a {type(m).__name__}")


def tensor_owner(modules: dict, name: str):
    """(module, attribute) when `name` is a parameter or buffer of one of `modules` (a dotted path), else None."""
    owner, _, attr = name.rpartition(".")
    m = modules.get(owner)
    return (m, attr) if m is not None and (attr in m._parameters or attr in m._buffers) else None


def _drop_mask(n, out, device):
    drop = torch.ones(n, dtype=torch.bool, device=device)
    drop[torch.as_tensor(out, dtype=torch.long, device=device)] = False
    return drop


@torch.no_grad()
def shrink_tensor(m: nn.Module, attr: str, out) -> None:
    """Keep entries `out` of the per-channel tensor `m.<attr>` along its channel dim (its one dim of size > 1)."""
    from .rules.params import channel_dim
    t = getattr(m, attr)
    d = channel_dim(t.shape)
    kept = t.index_select(d, torch.as_tensor(out, dtype=torch.long, device=t.device)).contiguous()
    setattr(m, attr, _param(kept, t) if isinstance(t, nn.Parameter) else kept)


def shrink_named(modules: dict, name: str, k: dict) -> None:
    """shrink_module for a module name, shrink_tensor for a tensor's dotted name (kept indices `k`)."""
    if name in modules:
        shrink_module(modules[name], k.get("out"), k.get("in"))
    elif tensor_owner(modules, name) is not None:
        shrink_tensor(*tensor_owner(modules, name), k["out"])
    else:
        raise ValueError(f"kept indices name module {name!r}, which the model does not have")


def apply_kept(model: nn.Module, kept: dict) -> None:
    """Re-apply a report's (or manifest's) kept indices to an unpruned model of the same architecture."""
    modules = dict(model.named_modules())
    for name, k in kept.items():
        shrink_named(modules, name, k)


@torch.no_grad()
def mask_kept(model: nn.Module, kept: dict) -> nn.Module:
    """Zero, in an unpruned model, every output row that `kept` drops (conv filters, biases, norm affines), in place.

    In eval mode the result computes exactly what the model shrunk by the same `kept` computes, if the pruning is exact.
    """
    from .rules import rule_for
    modules = dict(model.named_modules())
    for name, k in kept.items():
        if name not in modules and tensor_owner(modules, name) is not None:  # a bare per-channel tensor
            from .rules.params import channel_dim
            m, attr = tensor_owner(modules, name)
            t = getattr(m, attr)
            d = channel_dim(t.shape)
            t.index_fill_(d, _drop_mask(t.shape[d], k["out"], t.device).nonzero().flatten(), 0)
            continue
        m = modules[name]
        rule = rule_for(m)
        if k.get("out") is not None and rule is not None and rule.mask is not None:
            rule.mask(m, torch.as_tensor(k["out"], dtype=torch.long))
            continue
        if k.get("out") is None or isinstance(m, nn.Linear) or getattr(m, "weight", None) is None:
            continue  # a norm without affine cannot be zeroed: prune's check then finds the difference
        n = m.weight.shape[0]
        drop = torch.ones(n, dtype=torch.bool, device=m.weight.device)
        drop[torch.as_tensor(k["out"], device=m.weight.device)] = False
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                p[drop] = 0
    return model


def mask_pruned(model: nn.Module, report) -> nn.Module:
    """mask_kept with a PruneReport's indices: the unpruned twin of what `prune` returned (the equivalence check)."""
    return mask_kept(model, report.kept)
