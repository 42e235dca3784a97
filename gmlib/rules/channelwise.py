"""Modules that act on each channel alone: y[c] = f_c(x[c]), so the output carries the input's spaces unchanged.

Pass-through modules (`is_pass`: activations, pooling, resizing, dropout, padding) have no per-channel
state. `PerChannel` modules hold a parameter per channel (PReLU's slopes a[c], a layer scale's gamma[c]): they keep
entries k of those parameters when channels k are kept. Flatten of an (N, C, 1, 1) tensor keeps the channels.
"""
import torch
from torch import nn

from ..layers import timm_types
from .base import ModuleRule, zero_dropped

__all__ = ["Pass", "Flatten", "PerChannel", "PASS_MODULES", "is_pass", "zero_stays_zero"]

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish, nn.Hardtanh, nn.Mish,
                nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout,
                nn.Dropout2d, nn.AlphaDropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.ZeroPad2d,
                nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d) \
    + timm_types("activations", "Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU",
                 "GELUTanh", "QuickGELU") \
    + timm_types("drop", "DropPath", "DropBlock2d")  # identity in eval; per-sample or per-position masks in training
_NONZERO_AT_ZERO = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus) + timm_types("activations", "Sigmoid", "HardSigmoid")


def is_pass(m: nn.Module) -> bool:
    """An elementwise / per-channel module; PReLU only with one shared slope."""
    return isinstance(m, PASS_MODULES) or (isinstance(m, nn.PReLU) and m.num_parameters == 1)


def zero_stays_zero(m: nn.Module) -> bool:
    """f(0) = 0 for a pass-through module: a removed (zeroed) channel stays zero, so its readers see nothing.
    Sigmoid-like maps, ConstantPad with a non-zero value and a Hardtanh whose range excludes 0 give a removed
    channel a value that a conv reading it would add up."""
    if isinstance(m, _NONZERO_AT_ZERO):
        return False
    if isinstance(m, nn.ConstantPad2d) and m.value != 0:
        return False
    return not (isinstance(m, nn.Hardtanh) and not (m.min_val <= 0 <= m.max_val))


class Pass(ModuleRule):
    """An elementwise / per-channel module without parameters."""
    once = False
    needs_input = False

    def matches(self, m):
        return is_pass(m)

    def analyse(self, ctx, name, m, lin):
        return lin

    def nonzero(self, m, incoming):
        return incoming if zero_stays_zero(m) else type(m).__name__


class Flatten(ModuleRule):
    """nn.Flatten(start_dim=1) of an (N, C, 1, ..., 1) tensor: channel c stays at position c."""
    once = False

    def matches(self, m):
        return isinstance(m, nn.Flatten)

    def analyse(self, ctx, name, m, lin):
        if m.start_dim == 1 and ctx.spatial_one(ctx.input):
            return lin
        return ctx.unknown(ctx.node, f"flatten {name!r}")


class PerChannel(ModuleRule):
    """A module whose output channel c is f(x[c], p[c] for p in `params`): the named parameters (or buffers),
    each with one entry per channel along dim 0, lose the entries of the removed channels.

    The module must also satisfy f(0) = 0 when its own entries are zeroed (the masked reference zeroes them), as
    PReLU and y = gamma * x do; `prune`'s self-check refuses a module that does not.
    """

    def __init__(self, *params, count=None, types=()):
        if not params or not all(isinstance(p, str) for p in params):
            raise TypeError("PerChannel needs the names of its per-channel parameters, e.g. PerChannel('gamma')")
        self.params, self.count, self.types = params, count, tuple(types)

    def matches(self, m):
        return isinstance(m, self.types) and self._ok(m)

    def _ok(self, m):
        return all(isinstance(getattr(m, p, None), torch.Tensor) for p in self.params)

    def analyse(self, ctx, name, m, lin):
        n = sum(ctx.sp.size[s] for s in lin)
        if not self._ok(m) or any(getattr(m, p).dim() == 0 or getattr(m, p).shape[0] != n for p in self.params):
            return ctx.unknown(ctx.node, f"module {name!r} ({type(m).__name__}): per-channel parameters do not "
                                         f"have one entry per channel")
        ctx.read(name, "norm", lin)
        return lin

    def nonzero(self, m, incoming):
        return incoming

    @torch.no_grad()
    def shrink(self, m, out=None, in_=None):
        idx = out if out is not None else in_
        for p in self.params:
            t = getattr(m, p)
            kept = t.index_select(0, idx.to(t.device)).contiguous()
            setattr(m, p, nn.Parameter(kept, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else kept)
        if self.count:
            setattr(m, self.count, len(idx))

    def shapes_after(self, m, out=None, in_=None):
        n = len(out if out is not None else in_)
        return {p: (n, *m._parameters[p].shape[1:]) for p in self.params
                if isinstance(m._parameters.get(p), nn.Parameter)}

    def macs_share(self, m, out=None, in_=None):
        return 1, 1

    def mask(self, m, out):
        for p in self.params:
            zero_dropped(getattr(m, p), 0, out)


def _layer_scale_types():
    try:
        from timm.layers import LayerScale2d
        return (LayerScale2d,)
    except ImportError:  # pragma: no cover - timm is a project dependency
        return ()


class _PReLU(PerChannel):
    """nn.PReLU(num_parameters=C): y[c] = max(0, x[c]) + a[c] min(0, x[c]); one shared slope is a Pass."""

    def matches(self, m):
        return isinstance(m, nn.PReLU) and m.num_parameters > 1


PASS, FLATTEN = Pass(), Flatten()
PRELU = _PReLU("weight", count="num_parameters", types=(nn.PReLU,))
LAYER_SCALE = PerChannel("gamma", types=_layer_scale_types())  # timm's LayerScale2d: y = gamma[c] x[c]
