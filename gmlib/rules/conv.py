"""Weight layers: Conv2d (plain, grouped, depthwise), convs whose maths is not plain (kept), ConvTranspose2d, Linear.

Conv2d, y[o] = sum_i W[o, i] * x[i] + b[o]: reads its input spaces (columns i) and opens a space of its outputs
(rows o), which it produces and scores. Grouped (g groups): output block j reads only input block j, so both sides
must lose the same number in every block (`groups=g`). Depthwise (g = C_in = C_out): channel c out is channel c in.
ConvTranspose2d stores W as (C_in, C_out, kh, kw): the same maths with the roles of dims 0 and 1 swapped.
Each cuts its own weight (`shrink`), zeroes the filters it drops for the masked reference (`mask`), and counts
what a cut leaves (`shapes_after`, `macs_share`: a conv's multiply-accumulates are out * in / groups per position).
"""
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import timm_types
from .base import ModuleRule, Producer, scores_of, zero_dropped

__all__ = ["Conv", "FrozenConv", "ConvTranspose", "Linear", "param_like", "conv_kind"]

_SAFE_CONVS = (nn.Conv2d,) + timm_types("conv2d_same", "Conv2dSame")          # same maths, padding computed per call
# segmentation_models_pytorch's efficientnet convs: zero padding (static module or F.pad), then F.conv2d with their
# own weight, bias, stride, dilation, groups: a plain conv. Looked up only where smp is already imported.
_SMP_SAME_CONVS = ("segmentation_models_pytorch.encoders._efficientnet",
                   ("Conv2dStaticSamePadding", "Conv2dDynamicSamePadding"))
_STD_CONVS = timm_types("std_conv", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def conv_kind(m: nn.Module) -> str:
    """'conv' (plain maths), 'std' (weight-standardised: each filter normalised over its inputs), 'computed' (weight
    made by a parametrization or weight_norm's hook: its norms mix rows or columns), 'custom' (own forward), ''."""
    if isinstance(m, _STD_CONVS):
        return "std"
    if isinstance(m, nn.Conv2d) and (parametrize.is_parametrized(m) or "weight" not in m._parameters):
        return "computed"
    if type(m) in _SAFE_CONVS or _smp_same_conv(m):
        return "conv"
    if isinstance(m, nn.Conv2d):
        plain = type(m).forward is nn.Conv2d.forward and type(m)._conv_forward is nn.Conv2d._conv_forward
        return "conv" if plain else "custom"
    return ""


def _smp_same_conv(m) -> bool:
    module, names = _SMP_SAME_CONVS
    if type(m).__module__ != module or type(m).__name__ not in names:
        return False
    pad = getattr(m, "static_padding", None)
    return pad is None or type(pad) in (nn.ZeroPad2d, nn.Identity)


def param_like(t, like):
    """`t` as a contiguous Parameter with `like`'s requires_grad (cut tensors replace, never overwrite, the old)."""
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


_param = param_like


def _depthwise(m) -> bool:
    """Channel c in is channel c out (groups = C_in = C_out): one index set cuts both, and the groups follow it."""
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _own(m, shapes):
    """The entries of `shapes` that name parameters of `m` (a computed weight is not one)."""
    return {k: v for k, v in shapes.items() if isinstance(m._parameters.get(k), nn.Parameter)}


class Conv(ModuleRule):
    """nn.Conv2d with plain maths (conv_kind == "conv").

    Its output space may be split into pieces (a gate conv over a concatenation): piece (offset, n) is rows
    offset..offset+n, scored by those rows' scores; its kept rows are then those of all its pieces laid side by
    side (gmlib.planning puts them together)."""
    is_conv = True
    splits = True

    def matches(self, m):
        return conv_kind(m) == "conv"

    def analyse(self, ctx, name, m, lin):
        g = m.groups
        if _depthwise(m):  # channel c in is channel c out
            ctx.read(name, "depthwise", lin)
            result = lin
        else:
            if g > 1:
                s = ctx.single(lin, ctx.node, f"grouped conv {name!r}")
                if s is not None:
                    ctx.constrain(s, groups=g)
            ctx.read(name, "conv_in", lin)
            result = (ctx.new_space(m.out_channels, producer=Producer("conv", name, self), groups=g),)
        ctx.conv_out[name] = result
        return result

    def scores(self, graph, producer, criterion, generator):
        s = super().scores(graph, producer, criterion, generator)
        return s[producer.part[0]:producer.part[0] + producer.part[1]] if producer.part else s

    def layer(self, m):
        return ("conv (groups=%d)" % m.groups if m.groups > 1 else "conv"), m.in_channels, m.out_channels, \
            "follows its input"

    def shapes_after(self, m, out=None, in_=None):
        rows, cols = _kept_widths(m, out, in_)
        groups = rows if _depthwise(m) else m.groups
        return _own(m, {"weight": (rows, cols // groups, *m.weight.shape[2:]), "bias": (rows,)})

    def macs_share(self, m, out=None, in_=None):
        """out' * (in' / groups') of out * (in / groups) per output position (a depthwise conv's groups follow)."""
        rows, cols = _kept_widths(m, out, in_)
        return rows * cols * m.groups, m.out_channels * m.in_channels * (rows if _depthwise(m) else m.groups)

    @torch.no_grad()
    def shrink(self, m, out=None, in_=None):
        """Rows `out`, columns `in_`; grouped: both must keep the same number in every group; depthwise: one set."""
        g, w = m.groups, m.weight
        if _depthwise(m):  # one index set for both
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


class FrozenConv(ModuleRule):
    """A conv whose filters are normalised over their inputs, computed, or run by its own forward: neither its
    inputs nor its outputs can shrink exactly, so both are kept."""

    def matches(self, m):
        return conv_kind(m) not in ("", "conv")

    def analyse(self, ctx, name, m, lin):
        why = {"std": "weight-standardised conv: each filter is normalised over its inputs",
               "computed": "conv whose weight is computed (parametrization, weight_norm or a hook)"}.get(
            conv_kind(m), f"{type(m).__name__} has its own forward")
        ctx.freeze(lin, f"{why} ({name})")
        result = (ctx.new_space(m.out_channels, producer=Producer("conv", name, self), frozen=f"{why} ({name})"),)
        ctx.conv_out[name] = result
        return result

    # never cut by a plan (its channels are kept), but a conv's tensors
    shrink, layer, shapes_after, macs_share = Conv.shrink, Conv.layer, Conv.shapes_after, Conv.macs_share


class ConvTranspose(ModuleRule):
    """nn.ConvTranspose2d (groups=1), weight (C_in, C_out, kh, kw): its inputs are dim 0, its filters dim 1."""
    is_conv = True

    def matches(self, m):
        return isinstance(m, nn.ConvTranspose2d)

    def analyse(self, ctx, name, m, lin):
        why = ""
        if parametrize.is_parametrized(m) or "weight" not in m._parameters:
            why = "conv whose weight is computed (parametrization, weight_norm or a hook)"
        elif type(m).forward is not nn.ConvTranspose2d.forward:
            why = f"{type(m).__name__} has its own forward"
        elif m.groups != 1:
            why = "grouped ConvTranspose2d"
        if why:
            ctx.freeze(lin, f"{why} ({name})")
        else:
            ctx.read(name, "conv_in", lin)
        result = (ctx.new_space(m.out_channels, producer=Producer("conv", name, self),
                                frozen=f"{why} ({name})" if why else None),)
        ctx.conv_out[name] = result
        return result

    def scores(self, graph, producer, criterion, generator):
        m = graph.modules[producer.name]
        norm = graph.modules.get(graph.norm_after.get(producer.name))
        return scores_of(m, criterion, norm, producer.name, generator, weight=m.weight.transpose(0, 1))

    def layer(self, m):
        kind, cin, cout, note = Conv.layer(self, m)
        return "transposed " + kind, cin, cout, note

    def shapes_after(self, m, out=None, in_=None):
        cols, rows = _kept_widths(m, out, in_)[::-1]
        return _own(m, {"weight": (cols, rows, *m.weight.shape[2:]), "bias": (rows,)})

    def macs_share(self, m, out=None, in_=None):
        rows, cols = _kept_widths(m, out, in_)
        return rows * cols, m.out_channels * m.in_channels

    @torch.no_grad()
    def shrink(self, m, out=None, in_=None):
        w = m.weight
        if in_ is not None:
            w = w.index_select(0, in_)
            m.in_channels = len(in_)
        if out is not None:
            w = w.index_select(1, out)
            if m.bias is not None:
                m.bias = _param(m.bias[out], m.bias)
            m.out_channels = len(out)
        m.weight = _param(w, m.weight)

    def mask(self, m, out):
        zero_dropped(m.weight, 1, out)
        if m.bias is not None:
            zero_dropped(m.bias, 0, out)


class Linear(ModuleRule):
    """nn.Linear on a (N, C) tensor reads its input spaces (columns); its outputs are not pruned."""

    def matches(self, m):
        return isinstance(m, nn.Linear)

    def analyse(self, ctx, name, m, lin):
        shape = ctx.shapes[ctx.input]
        if len(shape) == 2:
            ctx.read(name, "linear_in", lin)
        else:
            ctx.freeze(lin, f"Linear on a {len(shape)}-d tensor ({name})")
        return ctx.fresh(ctx.node, f"Linear outputs are not pruned ({name})")

    def layer(self, m):
        return "linear", m.in_features, m.out_features, "outputs kept"

    @torch.no_grad()
    def shrink(self, m, out=None, in_=None):
        m.weight = _param(m.weight[:, in_], m.weight)
        m.in_features = len(in_)

    def shapes_after(self, m, out=None, in_=None):
        return _own(m, {"weight": (m.out_features, m.in_features if in_ is None else len(in_))})

    def macs_share(self, m, out=None, in_=None):
        return (m.in_features if in_ is None else len(in_)), m.in_features

    def mask(self, m, out):
        pass  # its outputs are never pruned


def _kept_widths(m, out, in_):
    """(output channels, input channels) a cut to rows `out` and columns `in_` leaves (depthwise: one index set)."""
    if _depthwise(m):
        n = len(out if out is not None else in_)
        return n, n
    return (m.out_channels if out is None else len(out)), (m.in_channels if in_ is None else len(in_))


CONV, FROZEN_CONV, CONV_TRANSPOSE, LINEAR = Conv(), FrozenConv(), ConvTranspose(), Linear()
