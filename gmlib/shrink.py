"""Cutting a network by kept indices: each module is cut, or for the masked reference zeroed, by its rule.

Step 6 of 9, one filter from its score to its removal (README, Layout): its row cut from its conv and norm and its
column from every reader, each by its module's rule; what was kept is recorded on the model (`remember`).

`kept[name] = {"out": rows, "in": columns}` names modules, or the tensors of bare per-channel parameters
(gmlib.rules.params); `apply_kept` cuts them all (the surgery, and `load_pruned` re-applying a manifest), `mask_kept`
zeroes what they drop instead (in eval mode an exact pruning computes the same), `counted` says the parameters and
the share of each module's MACs a cut would leave without cutting (a plan's sizes after). How a module is cut,
masked or counted is its rule's business (gmlib.rules: `shrink`, `mask`, `shapes_after`, `macs_share`); this file
finds each name's owner, and owns what a pruned model remembers of its cuts (`kept_of`, `remember`: the indices
relative to the unpruned original).
"""
import math

import torch
from torch import nn

from .rules import ModuleRule, rule_for
from .rules.base import counts
from .rules.params import mask_parameter, parameter_shape_after, shrink_parameter, tensor_owner

__all__ = ["shrink_module", "shrink_named", "apply_kept", "mask_kept", "mask_pruned", "counted", "kept_of",
           "remember"]


_ANY = ModuleRule()  # a module no rule names (a user's block's part): its weight and bias rows are zeroed


def _indices(idx, m):
    if idx is None:
        return None
    p = next(m.parameters(), None)
    return torch.as_tensor(idx, dtype=torch.long, device=None if p is None else p.device)


def shrink_module(m: nn.Module, out=None, in_=None) -> None:
    """Keep rows `out` (output / norm channels) and columns `in_` (input channels) of one module, in place, as its
    rule cuts it (convs: a grouped conv keeps the same number in every group, a depthwise one takes `out` only;
    norms: GroupNorm in whole groups; Linear: `in_` only). Every other attribute is left as it was."""
    rule = rule_for(m, "shrink")
    if rule is None:
        raise TypeError(f"cannot shrink a {type(m).__name__}: no rule (gmlib.rules) handles it")
    rule.shrink(m, _indices(out, m), _indices(in_, m))


def shrink_named(modules: dict, name: str, k: dict) -> None:
    """shrink_module for a module name, shrink_parameter for a tensor's dotted name (kept indices `k`)."""
    if name in modules:
        shrink_module(modules[name], k.get("out"), k.get("in"))
    elif tensor_owner(modules, name) is not None:
        shrink_parameter(*tensor_owner(modules, name), k["out"])
    else:
        raise ValueError(f"kept indices name module {name!r}, which the model does not have")


def apply_kept(model: nn.Module, kept: dict) -> None:
    """Cut `model` in place by kept indices: the surgery, or a report's (manifest's) indices re-applied to an
    unpruned model of the same architecture."""
    modules = dict(model.named_modules())
    for name, k in kept.items():
        shrink_named(modules, name, k)


@torch.no_grad()
def mask_kept(model: nn.Module, kept: dict) -> nn.Module:
    """Zero, in an unpruned model, every output row that `kept` drops (conv filters, biases, norm affines), in place.

    In eval mode the result computes exactly what the model shrunk by the same `kept` computes, if the pruning is exact.
    A module is zeroed by its rule's `mask`, a tensor named by its dotted name along its channel dim: both through
    gmlib.rules.zero_dropped.
    """
    modules = dict(model.named_modules())
    for name, k in kept.items():
        if k.get("out") is None:
            continue
        if name in modules:
            (rule_for(modules[name], "mask") or _ANY).mask(modules[name], _indices(k["out"], modules[name]))
        elif tensor_owner(modules, name) is not None:
            mask_parameter(*tensor_owner(modules, name), k["out"])
        else:
            raise ValueError(f"kept indices name module {name!r}, which the model does not have")
    return model


def counted(model: nn.Module, kept: dict):
    """(parameters, {module name: (kept, of) share of its MACs}) that cutting `model` by `kept` would leave, counted
    from each rule's `shapes_after` and `macs_share` without cutting; None where a module's rule cannot say (a user's
    rule that cuts without counting) or no rule cuts it (then `apply_kept` would refuse it)."""
    modules = dict(model.named_modules())
    after, shares = {}, {}  # id(parameter) -> numel after; module name -> MACs share
    for name, k in kept.items():
        if name in modules:
            m = modules[name]
            rule = rule_for(m, "shrink")
            if rule is None or not counts(rule):
                return None
            out, in_ = _indices(k.get("out"), m), _indices(k.get("in"), m)
            for attr, shape in rule.shapes_after(m, out, in_).items():
                after[id(m._parameters[attr])] = math.prod(shape)
            shares[name] = tuple(rule.macs_share(m, out, in_))
        elif tensor_owner(modules, name) is not None:
            m, attr = tensor_owner(modules, name)
            if attr in m._parameters:
                after[id(m._parameters[attr])] = math.prod(parameter_shape_after(m._parameters[attr], k["out"]))
        else:
            raise ValueError(f"kept indices name module {name!r}, which the model does not have")
    params = {id(p): p.numel() for p in model.parameters()}
    return sum(after.get(i, n) for i, n in params.items()), shares


def kept_of(model: nn.Module) -> dict:
    """The kept indices, relative to its unpruned original, that a pruned `model` remembers ({}: never pruned)."""
    return getattr(model, "_gmlib_kept", None) or {}


def remember(model: nn.Module, kept: dict) -> None:
    """Record on `model` that it was cut by `kept` (lists of indices) after whatever it remembers: pruned twice, the
    indices relative to the original are previous[new]. The one owner of what a pruned model knows of itself."""
    out = {n: {d: list(v) for d, v in k.items()} for n, k in kept_of(model).items()}
    for name, k in kept.items():
        for d, idx in k.items():
            base = out.get(name, {}).get(d)
            out.setdefault(name, {})[d] = [base[i] for i in idx] if base is not None else list(idx)
    model._gmlib_kept = out


def mask_pruned(model: nn.Module, report) -> nn.Module:
    """mask_kept with a PruneReport's indices: the unpruned twin of what `prune` returned (the equivalence check)."""
    return mask_kept(model, report.kept)
