"""A tensor the graph reads itself (get_attr) rather than through a module's call: a per-channel scale written as a
bare parameter, torchvision ConvNeXt's `self.layer_scale * x` with layer_scale of shape (C, 1, 1).

y[:, c] = gamma[c] * x[:, c]: channel c of the product is zero when x's is, so removing channels k of x and entries
k of gamma is the masked original (the masked reference zeroes gamma's removed entries too). Accepted when the
tensor has one dim of size C > 1 that lines up with the channel dim of every product it feeds, every reader is such
a product, and no rule's module owns it (a module's parameters read outside its call are refused elsewhere).
Its kept indices are recorded under the tensor's dotted name (role "param"): `shrink_parameter` keeps those entries
along its channel dim, `mask_parameter` zeroes the others (the masked reference).
"""
import torch
from torch import fx, nn

from ..normalize import canonical
from .base import zero_dropped
from .registry import rule_for

__all__ = ["analyse_parameter", "channel_dim", "tensor_owner", "shrink_parameter", "mask_parameter",
           "parameter_shape_after"]


def channel_dim(shape) -> int:
    """The dim of a per-channel tensor that carries the channels: its one dim of size > 1 (0 when there is none)."""
    return next((d for d, n in enumerate(shape) if n > 1), 0)


def tensor_owner(modules: dict, name: str):
    """(module, attribute) when `name` is a parameter or buffer of one of `modules` (a dotted path), else None."""
    owner, _, attr = name.rpartition(".")
    m = modules.get(owner)
    return (m, attr) if m is not None and (attr in m._parameters or attr in m._buffers) else None


@torch.no_grad()
def shrink_parameter(m: nn.Module, attr: str, out) -> None:
    """Keep entries `out` of the per-channel tensor `m.<attr>` along its channel dim."""
    t = getattr(m, attr)
    kept = t.index_select(channel_dim(t.shape), torch.as_tensor(out, dtype=torch.long, device=t.device)).contiguous()
    setattr(m, attr, nn.Parameter(kept, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else kept)


def mask_parameter(m: nn.Module, attr: str, out) -> None:
    """Zero, in place, the entries of `m.<attr>` along its channel dim that keeping `out` drops."""
    t = getattr(m, attr)
    zero_dropped(t, channel_dim(t.shape), out)


def parameter_shape_after(t: torch.Tensor, out) -> tuple:
    """The shape `shrink_parameter` leaves `t` with: `len(out)` entries along its channel dim."""
    shape = list(t.shape)
    shape[channel_dim(shape)] = len(out)
    return tuple(shape)


def analyse_parameter(ctx, node):
    """The layout of a get_attr node: one prunable space for a per-channel scale, else a fresh frozen one."""
    shape = ctx.shapes.get(node)
    if node.target in ctx.param_layout:  # the same tensor read twice is one space
        return ctx.param_layout[node.target] if ctx.param_layout[node.target] and _scales(ctx, node, shape) \
            else _refuse(ctx, node)
    owner = ctx.modules.get(node.target.rpartition(".")[0])
    if shape is None or owner is None or rule_for(owner) is not None or sum(n > 1 for n in shape) != 1 \
            or not _scales(ctx, node, shape):
        return _refuse(ctx, node)
    lay = (ctx.new_space(shape[channel_dim(shape)]),)
    ctx.read(node.target, "param", lay)
    ctx.params.add(node)
    ctx.param_layout[node.target] = lay
    return lay


def _refuse(ctx, node):
    lay = ctx.param_layout.get(node.target)
    if lay:  # read once as a scale and once otherwise: keep its channels
        ctx.freeze(lay, f"parameter {node.target} is read other than as a per-channel scale")
    ctx.param_layout[node.target] = None
    return ctx.fresh(node, f"parameter/buffer {node.target}")


def _scales(ctx, node, shape):
    """Every reader multiplies `node` with a channel-carrying tensor, `node`'s channel dim on the product's dim 1."""
    if shape is None or not node.users:
        return False
    d = channel_dim(shape)
    for u in node.users:
        if u.op not in ("call_function", "call_method"):
            return False
        name, kw = canonical(u)
        out = ctx.shapes.get(u)
        operands = [kw.get("input"), kw.get("other")]
        if name != "mul" or node not in operands or out is None or len(out) < 2 \
                or len(out) - len(shape) + d != 1 or out[1] != shape[d]:
            return False
        other = operands[1 - operands.index(node)]
        if not isinstance(other, fx.Node) or ctx.shapes.get(other) != tuple(out):
            return False
    return True
