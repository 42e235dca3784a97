"""Channel counts read from shapes: `x.shape[1]`, `x.size(1)` and arithmetic on them depend on the spaces of x.

A count that only sizes dim 1 of a view/reshape of a tensor with the same channels follows the pruning (it is
re-read at run time); anywhere else (a scale `x * x.shape[1] ** -0.5`, the output) it would change what the network
computes, so its spaces are kept. A branch on a count is safe when it holds for every pruning (`C != 0`, `C > 0`).
"""
from torch import fx

from ..normalize import canonical
from .context import flat_nodes as _flat_nodes

__all__ = ["size_dependence", "channel_count_follows", "holds_while_pruned"]


def size_dependence(node, shapes, constants, layout, size_of, raw_channels):
    """The spaces whose channel count a shape-derived value depends on; records x.size(1) / x.shape[1] as raw."""
    name, kw = canonical(node)
    x = kw.get("input")
    rank = len(shapes[x]) if isinstance(x, fx.Node) and shapes.get(x) else 0
    whole = tuple(layout.get(x) or ()) if rank >= 2 else ()
    if name == "getattr" and kw.get("name") == "shape" or name in ("numel", "nelement") \
            or (name == "size" and kw.get("dim") is None):
        return whole
    if name == "size":
        dim = kw["dim"]
        if isinstance(dim, int) and rank and dim % rank == 1:
            raw_channels[node] = x
            return whole
        return ()
    if name == "getitem" and isinstance(x, fx.Node) and x in size_of and x not in raw_channels \
            and isinstance(constants.get(x), tuple):
        source = next((n for n in _flat_nodes(x.args) if shapes.get(n)), None)
        index = kw.get("index")
        try:
            dims = range(len(constants[x]))[index]
        except TypeError:
            return size_of[x]
        dims = dims if isinstance(dims, range) else [dims]
        if 1 not in dims:
            return ()
        if isinstance(index, int) and source is not None:
            raw_channels[node] = source
        return size_of[x]
    return tuple(s for n in _flat_nodes((node.args, node.kwargs)) for s in size_of.get(n, ()))


def channel_count_follows(name, kw, x, layout, raw_channels, counts, sp):
    """A channel count read from a shape may only size dim 1 of a view/reshape of a tensor with the same channels."""
    if name not in ("view", "reshape") or x is None or not isinstance(kw.get("shape"), (tuple, list)):
        return False
    shape = kw["shape"]
    source = raw_channels.get(shape[1]) if len(shape) > 1 and isinstance(shape[1], fx.Node) else None
    same = source is not None and [sp.find(s) for s in layout.get(source) or ()] == \
        [sp.find(s) for s in layout.get(x) or ()]
    return same and counts == [shape[1]]


def holds_while_pruned(guard, raw_channels):
    """`x.shape[1] != 0` or `> 0` (smp's skip check): true for every pruning, which keeps a channel in each space."""
    name, kw = canonical(guard)
    return guard.op == "call_function" and name in ("ne", "gt") and kw.get("input") in raw_channels \
        and kw.get("arg1") == 0 and not isinstance(kw.get("arg1"), bool)
