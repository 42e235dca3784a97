"""Norms: per-channel statistics shrink with the channels they read; statistics over channels keep them.

BatchNorm, y[c] = g[c] (x[c] - m[c]) / sqrt(v[c] + eps) + b[c]: channel c out depends on channel c in only, so it
keeps rows k of (g, b, m, v). GroupNorm normalises over blocks of C / G channels: removing part of a block changes
the block's mean for the channels left, so only whole blocks go (`unit` = C / G). InstanceNorm normalises each
channel over space alone: per-channel like BatchNorm. LayerNorm / RMSNorm over C mix every channel: kept.
A cut keeps the rows of the per-channel tensors (GroupNorm: whole groups); masking zeroes the dropped affine rows;
a norm has no multiply-accumulates to count.
"""
import torch
from torch import nn

from ..layers import found, timm_types
from .base import ModuleRule
from .channelwise import is_pass
from .conv import param_like

__all__ = ["Norm", "InstanceNorm", "MixingNorm", "is_batch_norm", "is_group_norm", "norm_act_problem",
           "mixes_channels", "FROZEN_BN", "CHANNEL_MIXING_NORMS"]

_NORM_ACT = timm_types("norm_act", "BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "GroupNormAct",
                       "GroupNorm1Act")
FROZEN_BN = timm_types("norm", "FrozenBatchNorm2d") + timm_types("norm_act", "FrozenBatchNormAct2d") \
    + found("torchvision.ops", "FrozenBatchNorm2d")
CHANNEL_MIXING_NORMS = (nn.LayerNorm,) + timm_types("norm", "RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d") \
    + timm_types("norm_act", "RmsNormAct", "RmsNormAct2d")


def is_batch_norm(m: nn.Module) -> bool:
    """Per-channel statistics and affine (BatchNorm, frozen and sync variants, timm's BatchNormAct)."""
    return isinstance(m, (nn.modules.batchnorm._BatchNorm,) + FROZEN_BN)


def is_group_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.GroupNorm)


def norm_act_problem(m: nn.Module) -> str:
    """'' when a norm-act layer's activation and dropout are elementwise, else why its channels are kept."""
    if not isinstance(m, _NORM_ACT):
        return ""
    for part in ("act", "drop"):
        sub = getattr(m, part, None)
        if sub is not None and not is_pass(sub):
            return f"norm-act layer with a {type(sub).__name__} {part}"
    return ""


def mixes_channels(m: nn.Module) -> str:
    """Why a norm's statistics mix channels ('' if they do not): removing one channel changes the others."""
    if isinstance(m, CHANNEL_MIXING_NORMS):
        return f"{type(m).__name__} normalises over channels"
    return ""


@torch.no_grad()
def _keep_channels(m, out):
    """Per-channel statistics and affine (BatchNorm, InstanceNorm, frozen BNs with the affine kept as buffers)."""
    for k in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, k, None)
        if isinstance(t, nn.Parameter):
            setattr(m, k, param_like(t[out], t))
        elif isinstance(t, torch.Tensor):
            setattr(m, k, t[out].clone())
    m.num_features = len(out)


def _affine_after(m, out):
    """The shapes of a per-channel norm's learnt affine once rows `out` are kept (frozen BNs keep it as buffers)."""
    return {k: (len(out),) for k in ("weight", "bias") if isinstance(m._parameters.get(k), nn.Parameter)}


def _feeds_from_conv(ctx):
    """The conv right before the current norm, when the norm is its only reader (the "bn" criterion's norm)."""
    from .registry import rule_for
    x = ctx.input
    if x.op == "call_module" and len(x.users) == 1 and getattr(rule_for(ctx.modules[x.target]), "is_conv", False):
        return x.target
    return None


class Norm(ModuleRule):
    """BatchNorm (and frozen, sync and timm norm-act variants) and GroupNorm (whole groups)."""

    def matches(self, m):
        return is_batch_norm(m) or is_group_norm(m)

    def analyse(self, ctx, name, m, lin):
        problem = norm_act_problem(m)
        if problem:
            ctx.freeze(lin, f"{problem} ({name})")
        if is_group_norm(m):
            unit = m.num_channels // m.num_groups
            if all(ctx.sp.size[s] % unit == 0 for s in lin):
                for s in lin:
                    ctx.constrain(s, unit=unit)
            else:
                ctx.freeze(lin, f"GroupNorm groups straddle concatenated channels ({name})")
        ctx.read(name, "norm", lin)
        conv = _feeds_from_conv(ctx)
        if conv is not None:
            ctx.norm_after[conv] = name
        return lin

    def nonzero(self, m, incoming):
        """Without affine a zeroed channel becomes -mean / std (its own or its group's): not zero."""
        return "" if getattr(m, "weight", None) is not None else type(m).__name__

    def shapes_after(self, m, out=None, in_=None):
        return _affine_after(m, out)

    def macs_share(self, m, out=None, in_=None):
        return 1, 1

    @torch.no_grad()
    def shrink(self, m, out=None, in_=None):
        if not is_group_norm(m):
            return _keep_channels(m, out)
        size = m.num_channels // m.num_groups
        blocks = out.view(-1, size) if len(out) % size == 0 else None
        if blocks is None or (blocks[:, 0] % size).any() or \
                (blocks != blocks[:, :1] + torch.arange(size, device=out.device)).any():
            raise RuntimeError(f"GroupNorm channels must be removed in whole groups of {size}")
        if m.affine:
            m.weight, m.bias = param_like(m.weight[out], m.weight), param_like(m.bias[out], m.bias)
        m.num_channels, m.num_groups = len(out), len(out) // size


class InstanceNorm(ModuleRule):
    """nn.InstanceNorm1d/2d/3d, affine or not, with or without running statistics."""

    def matches(self, m):
        return isinstance(m, nn.modules.instancenorm._InstanceNorm)

    def analyse(self, ctx, name, m, lin):
        ctx.read(name, "norm", lin)
        conv = _feeds_from_conv(ctx)
        if conv is not None and m.affine:
            ctx.norm_after[conv] = name
        return lin

    def shrink(self, m, out=None, in_=None):
        _keep_channels(m, out)

    shapes_after, macs_share = Norm.shapes_after, Norm.macs_share


class MixingNorm(ModuleRule):
    """A norm whose statistics run over channels: what it reads and what it writes are kept."""

    def matches(self, m):
        return bool(mixes_channels(m))

    def analyse(self, ctx, name, m, lin):
        ctx.freeze(lin, f"{mixes_channels(m)} ({name})")
        return ctx.fresh(ctx.node, f"{mixes_channels(m)} ({name})")


NORM, INSTANCE_NORM, MIXING_NORM = Norm(), InstanceNorm(), MixingNorm()
