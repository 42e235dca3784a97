"""Functions and tensor methods (by gmlib.normalize's canonical name): what each does to the channel layout.

Elementwise ops (gmlib.layers.ELEMENTWISE) unify the spaces of their operands: y[c] = f(a[c], b[c]) means a's
channel c and b's channel c are removed together. An operand broadcast over space, (N, C, 1, 1) times (N, C, H, W),
is a gate (squeeze-excite): its convs follow the channels it scales. `cat` on dim 1 lays layouts side by side
(elsewhere it unifies them), `stack` then a sum over the new dim is an add, reductions over space, a flatten or view
of (N, C, 1, 1) and whole slices keep the layout, and anything else is `Context.unknown` (its channels are kept).
"""
import math

from torch import fx

from ..layers import ELEMENTWISE, PASS_FUNCTIONS, PASS_METHODS, REDUCTIONS
from ..normalize import canonical
from .context import flat_nodes as _flat_nodes
from .shapes import channel_count_follows

__all__ = ["analyse_function"]


def analyse_function(ctx, node, size_of, raw_channels):
    """The layout of a call_function / call_method node's output (None: no channels)."""
    layout, shapes, sp, unknown = ctx.layout, ctx.shapes, ctx.sp, ctx.unknown
    out_shape = shapes.get(node)
    name, kw = canonical(node)
    x = kw.get("input") if isinstance(kw.get("input"), fx.Node) else None
    ctx.input = x
    lin = layout.get(x) if x is not None else None
    operands = [n for n in _flat_nodes((node.args, node.kwargs)) if layout.get(n)]
    counts = [n for n in _flat_nodes((node.args, node.kwargs)) if size_of.get(n)]
    if counts and not channel_count_follows(name, kw, x, layout, raw_channels, counts, sp):
        for n in counts:
            sp.freeze(size_of[n], f"channel count read from the shape ({node.name})")
    if not operands:
        return ctx.fresh(node, f"untracked tensor from {name} ({node.name})") if out_shape else None
    if name in ELEMENTWISE:
        return _elementwise(ctx, node, [kw.get(k) for k in ELEMENTWISE[name]], operands)
    if (node.op == "call_function" and node.target in PASS_FUNCTIONS) or \
            (node.op == "call_method" and name in PASS_METHODS):
        donor = name in ("to", "type_as")  # x.type_as(y): y only lends its dtype
        passes = lin and all(o is x or donor for o in operands) and out_shape is not None and len(out_shape) >= 2
        return lin if passes else unknown(node, name)
    if name in ("getattr", "size", "dim") and out_shape is None:
        return None
    if name == "cat":
        tensors, dim = kw.get("tensors"), kw.get("dim", 0)
        lays = [layout.get(t) for t in tensors] if isinstance(tensors, (tuple, list)) else [None]
        if any(lay is None for lay in lays) or not isinstance(dim, int) or not out_shape or len(out_shape) < 2:
            return unknown(node, "torch.cat")
        if dim % len(out_shape) == 1:
            return tuple(s for lay in lays for s in lay)
        result = lays[0]
        for lay in lays[1:]:
            result = ctx.unify(result, lay, node.name)
        return result
    if name == "stack":
        return _stack(ctx, node, kw)
    if name in ("expand_as", "expand") and x is not None and lin:
        return _expand(ctx, node, name, kw, x, operands)
    if name in ("sum", "mean", "amax", "amin") and x in ctx.stacked and operands == [x]:
        dims = kw.get("dim")
        whole = dims == 0 or (isinstance(dims, (tuple, list)) and list(dims) == [0])
        return lin if whole and not kw.get("keepdim", False) else unknown(node, f"{name} of a stack")
    if name == "flatten" and x is not None and operands == [x]:
        return lin if kw.get("start_dim", 0) == 1 and ctx.spatial_one(x) else unknown(node, "flatten")
    if name in ("view", "reshape") and x is not None and operands == [x] and out_shape \
            and len(out_shape) >= 2 and shapes[x][:2] == out_shape[:2] \
            and math.prod(shapes[x][2:]) == math.prod(out_shape[2:]) == 1:
        return lin if _channel_size_follows(kw.get("shape")) \
            else unknown(node, "reshape to a channel count fixed in the code")
    if name == "getitem" and x is not None and lin and operands == [x]:
        return lin if _keeps_all_channels(kw.get("index"), shapes[x]) else unknown(node, "slice of the channels")
    if name in REDUCTIONS and x is not None and operands == [x]:
        return lin if out_shape and len(out_shape) >= 2 and _keeps_channels(kw.get("dim"), shapes[x]) \
            else unknown(node, name)
    return unknown(node, name)


def _stack(ctx, node, kw):
    """torch.stack(tensors) on dim 0, read only by a sum / mean / max / min over dim 0: y[c] = f(a[c], b[c], ...),
    an elementwise op over the stacked tensors (smp's FPN merge), so their spaces are unified."""
    tensors, dim = kw.get("tensors"), kw.get("dim", 0)
    lays = [ctx.layout.get(t) for t in tensors] if isinstance(tensors, (tuple, list)) else [None]
    readers_reduce = all(u.op in ("call_function", "call_method") and canonical(u)[0] in ("sum", "mean", "amax",
                                                                                          "amin")
                         and canonical(u)[1].get("input") is node for u in node.users)
    shapes = [ctx.shapes.get(t) for t in tensors] if isinstance(tensors, (tuple, list)) else [None]
    if dim != 0 or not readers_reduce or any(lay is None for lay in lays) or len(set(shapes)) != 1:
        return ctx.unknown(node, "stack")
    result = lays[0]
    for lay in lays[1:]:
        result = ctx.unify(result, lay, node.name)
    ctx.stacked.add(node)
    return result


def _expand(ctx, node, name, kw, x, operands):
    """g.expand_as(y) / g.expand(-1, -1, h, w) of an (N, C, ...) tensor without spreading it over channels: the
    channels stay g's; y only lends its shape, but their channel counts must still agree after pruning."""
    out, shape = ctx.shapes.get(node), ctx.shapes.get(x)
    if name == "expand_as":
        other = kw.get("other")
        donor_ok = operands in ([x], [x, other], [other, x])
    else:
        sizes = kw.get("size", kw.get("arg1"))
        sizes = sizes if isinstance(sizes, (tuple, list)) else None
        donor_ok = operands == [x] and sizes is not None and len(sizes) > 1 and sizes[1] in (-1, shape[1])
        other = None
    if not donor_ok or out is None or shape is None or len(out) != len(shape) or out[1] != shape[1]:
        return ctx.unknown(node, name)
    if isinstance(other, fx.Node) and ctx.layout.get(other):
        ctx.agree.append((ctx.layout[x], ctx.layout[other], node.name))
    ctx.gate_shapes[node] = ctx.gate_shapes.get(x, shape)
    return ctx.layout[x]


def _keeps_channels(dims, shape):
    """A reduction over `dims` that leaves dims 0 and 1 alone."""
    if dims is None or not isinstance(dims, (int, tuple, list)) or not shape:
        return False
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if not all(isinstance(d, int) for d in dims):
        return False
    dims = [d % len(shape) for d in dims]
    return 0 not in dims and 1 not in dims


def _elementwise(ctx, node, candidates, operands):
    """Elementwise op over `candidates` (its tensor parameters, canonical order): operands that carry the channel
    dim are unified; broadcast ones (size 1 there) pass; a channel-carrying argument elsewhere is not understood.

    An operand broadcast over space, (N, C, 1, 1) against (N, C, H, W), is a channel gate (squeeze-excite): its
    convs follow the channels it scales instead of voting on them (also when `expand_as` spread it over space).
    """
    shapes, layout, unknown = ctx.shapes, ctx.layout, ctx.unknown
    out = shapes[node]
    if out is None or len(out) < 2 or any(n not in candidates for n in operands):
        return unknown(node, str(node.target))
    found = []
    for a in candidates:
        if not isinstance(a, fx.Node) or shapes.get(a) is None:
            continue
        shape = shapes[a]
        cdim = len(shape) - len(out) + 1  # which of a's dims lines up with the output's dim 1
        if cdim < 0 or shape[cdim] == 1:
            continue
        if (cdim != 1 and a not in ctx.params) or layout.get(a) is None:
            return unknown(node, f"broadcast {node.target}")
        spread = ctx.gate_shapes.get(a, shape)
        found.append((layout[a], a not in ctx.params and math.prod(spread[2:]) == 1 < math.prod(out[2:])))
    if not found:
        return unknown(node, f"broadcast {node.target}")
    if len(found) == 2 and found[0][1] != found[1][1]:
        ctx.sp.follow(found[0][0] if found[0][1] else found[1][0])
    result = found[0][0]
    for lay, _ in found[1:]:
        result = ctx.unify(result, lay, node.name)
    return result


def _channel_size_follows(sizes):
    """view/reshape whose dim-1 size is computed from the input (x.size(1) or -1), not a constant that pruning
    would leave stale."""
    return isinstance(sizes, (tuple, list)) and len(sizes) > 1 and (isinstance(sizes[1], fx.Node) or sizes[1] == -1)


def _keeps_all_channels(index, shape):
    """x[index] keeps dims 0 and 1 whole (a slice there is a constant in the code: pruning would shift it)."""
    index = index if isinstance(index, tuple) else (index,)
    if index and index[0] is Ellipsis:
        return False  # x[..., k]: which dim it hits depends on the rank
    for d, i in enumerate(index[:2]):
        if i is Ellipsis:
            return True
        if not isinstance(i, slice) or any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)) \
                or i.start not in (None, 0) or i.step not in (None, 1) or (i.stop is not None and i.stop < shape[d]):
            return False
    return True
