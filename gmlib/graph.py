"""Channel spaces of a traced network: which filters must be removed together, and who reads them.

A Conv2d output opens a *space* of channels; pass-through ops (gmlib.layers: norms, activations, pooling, resizing,
dropout) keep it, elementwise `+`/`*` unify spaces (union-find; a (N, C, 1, 1) gate's convs join as followers that do
not vote), `torch.cat` on dim 1 lays spaces side by side, and consumers (next convs, norms, Linear) record which
spaces they read. Constraints travel with a space: `groups` (prune the same number in each of `groups` equal blocks:
grouped convs), `unit` (remove whole blocks: GroupNorm groups) and `frozen` (never pruned, with the reason: it
reaches the output, is the model input, or meets an op that removing a channel would change elsewhere).
"""
import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .layers import (ELEMENTWISE, NONZERO_AT_ZERO_FUNCTIONS, NONZERO_AT_ZERO_METHODS, PASS_FUNCTIONS, PASS_METHODS,
                     REDUCTIONS, conv_kind, is_batch_norm, is_group_norm, is_pass, mixes_channels, norm_act_problem,
                     zero_stays_zero)
from .normalize import bind_module_call, canonical
from .trace import trace

__all__ = ["ChannelGroup", "ChannelGraph", "Use", "analyse", "channel_groups", "split_attn_type"]


def selective_kernel_type():
    """timm's SelectiveKernel (SKNet), traced as one leaf and handled by a dedicated rule; None without timm."""
    try:
        from timm.layers.selective_kernel import SelectiveKernel
        return SelectiveKernel
    except ImportError:  # pragma: no cover - timm is a project dependency
        return None


def split_attn_type():
    """timm's SplitAttn (ResNeSt), traced as one leaf and handled by a dedicated rule; None without timm."""
    try:
        from timm.layers.split_attn import SplitAttn
        return SplitAttn
    except ImportError:  # pragma: no cover - timm is a project dependency
        return None


@dataclass
class Use:
    """A module that reads channels: `role` in conv_in, norm, linear_in, depthwise; `layout` = spaces along dim 1."""
    module: str
    role: str
    layout: tuple


@dataclass
class ChannelGroup:
    """One coupling set (public, for teaching): channels that must be kept or removed together."""
    size: int                 # channels in the set
    producers: list           # modules whose output filters are these channels (all lose the same channels)
    consumers: list           # modules that read them (next convs' inputs, norms, Linear)
    groups: int = 1           # prune the same number in each of `groups` equal blocks (grouped convs)
    unit: int = 1             # channels are removed in whole blocks of `unit` (GroupNorm groups)
    frozen: str = ""          # why it is never pruned ("" when prunable)


class _Spaces:
    """Union-find over channel spaces, each with a size, producers and constraints."""

    def __init__(self):
        self.parent, self.size, self.producers, self.groups, self.unit, self.frozen = [], [], [], [], [], []

    def new(self, size, producer=None, frozen=None, groups=1):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.producers.append([producer] if producer else [])
        self.groups.append(int(groups))
        self.unit.append(1)
        self.frozen.append([frozen] if frozen else [])
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        a, b = min(a, b), max(a, b)  # the older space stays the root: producers listed in graph order
        self.parent[b] = a
        self.producers[a] += self.producers[b]
        self.groups[a] = math.lcm(self.groups[a], self.groups[b])
        self.unit[a] = math.lcm(self.unit[a], self.unit[b])
        self.frozen[a] += self.frozen[b]

    def freeze(self, layout, reason):
        for s in layout or ():
            self.frozen[self.find(s)].append(reason)

    def follow(self, layout):
        """Its convs become followers: they lose the channels the space loses but do not vote (gates)."""
        for s in layout:
            r = self.find(s)
            self.producers[r] = [("gate", n) if k == "conv" else (k, n) for k, n in self.producers[r]]

    def constrain(self, s, groups=1, unit=1):
        s = self.find(s)
        self.groups[s] = math.lcm(self.groups[s], int(groups))
        self.unit[s] = math.lcm(self.unit[s], int(unit))

    def roots(self):
        return sorted({self.find(i) for i in range(len(self.parent))})


@dataclass
class ChannelGraph:
    """Result of `analyse`: spaces (union-find), the uses of each module and the norm right after each conv."""
    spaces: _Spaces
    uses: list
    norm_after: dict
    modules: dict
    warnings: list = field(default_factory=list)
    conv_out: dict = field(default_factory=dict)  # conv name -> the spaces of its output (for coverage)
    layouts: dict = field(default_factory=dict)   # module name -> the spaces of its (first) output


def _flat_nodes(a):
    """fx.Nodes inside (possibly nested) args."""
    out = []
    fx.node.map_arg(a, out.append)
    return out


def analyse(model: nn.Module, example_inputs) -> ChannelGraph:
    """Trace `model` on `example_inputs` (a tensor or tuple of tensors) and build its channel spaces.

    Raises TypeError if it cannot be traced (naming the module) and ValueError if the inputs do not run through it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TypeError(f"example_inputs must be a tensor or a non-empty tuple of tensors, "
                        f"got {type(example_inputs).__name__}")
    traced = trace(model, tuple(example_inputs))
    graph, shapes, opaque, constants = traced.graph, traced.shapes, traced.opaque, traced.constants
    modules = dict(model.named_modules())
    sp = _Spaces()
    uses, norm_after, warnings, layout, seen, conv_out, layouts = [], {}, [], {}, set(), {}, {}
    size_of = {}  # shape-derived node -> the spaces whose channel count its value depends on
    raw_channels = {}  # node that is exactly x.size(1) / x.shape[1] -> x
    nonzero = {}  # node -> the op (truthy) that may give its removed channels a non-zero value in the masked original
    split_attn, selective_kernel = split_attn_type(), selective_kernel_type()

    def fresh(node, reason):
        shape = shapes.get(node)
        return (sp.new(shape[1], frozen=reason),) if shape is not None and len(shape) >= 2 else None

    def unknown(node, what, kind="unsupported"):
        ins = [layout[a] for a in _flat_nodes((node.args, node.kwargs)) if layout.get(a)]
        if ins:
            warnings.append(f"{kind} {what} at node {node.name!r}: the channels it touches are left unpruned")
        for lay in ins:
            sp.freeze(lay, f"feeds {kind} {what} ({node.name})")
        return fresh(node, f"output of {kind} {what} ({node.name})")

    def unify(a, b, where):
        if [sp.size[s] for s in a] == [sp.size[s] for s in b]:
            for x, y in zip(a, b):
                sp.union(x, y)
        else:  # cat boundaries that do not line up: keep everything involved
            sp.freeze(a + b, f"misaligned channel concatenations meet ({where})")
        return a

    def single(lay, node, reason):
        """The one space of `lay`, or None after freezing a multi-space layout that cannot carry `reason`."""
        if len(lay) == 1:
            return lay[0]
        sp.freeze(lay, f"{reason} over concatenated channels ({node.name})")
        return None

    def spatial_one(x):
        shape = shapes.get(x) if isinstance(x, fx.Node) else None
        return shape is not None and math.prod(shape[2:]) == 1

    for node in graph.nodes:
        n_uses = len(uses)
        args = node.args
        x = args[0] if args and isinstance(args[0], fx.Node) else None
        lin = layout.get(x) if x is not None else None
        out_shape = shapes.get(node)
        result = None
        if node.op == "placeholder":
            result = fresh(node, "model input")
        elif node.op == "get_attr":
            result = fresh(node, f"parameter/buffer {node.target}")
        elif node.op == "output":
            for a in _flat_nodes(args):
                sp.freeze(layout.get(a), "reaches the model output")
                sp.freeze(size_of.get(a), "its channel count reaches the model output")
            continue
        elif node.op == "call_module":
            name, m = node.target, modules[node.target]
            bound = bind_module_call(m, args, node.kwargs)
            x = bound[0] if bound and isinstance(bound[0], fx.Node) else None
            lin = layout.get(x) if x is not None else None
            if bound is None:
                result = unknown(node, f"call of module {name!r} with keyword arguments")
            elif name in seen:  # a parameterised module used twice: its channels would have to agree twice
                result = unknown(node, f"second call of module {name!r}")
                for u in uses:
                    if u.module == name or u.module.startswith(name + "."):
                        sp.freeze(u.layout, f"module {name!r} is called twice")
                for s in range(len(sp.parent)):
                    if any(p[1] == name for p in sp.producers[s]):
                        sp.freeze((s,), f"module {name!r} is called twice")
            elif name in opaque:
                result = unknown(node, f"module {name!r} ({type(m).__name__})", "untraceable")
            elif lin is None and not is_pass(m):
                result = unknown(node, f"module {name!r} ({type(m).__name__})")
            elif conv_kind(m) == "conv":
                seen.add(name)
                g = m.groups
                if g > 1 and g == m.in_channels == m.out_channels:  # depthwise: channel c in is channel c out
                    uses.append(Use(name, "depthwise", lin))
                    result = lin
                else:
                    if g > 1:
                        s = single(lin, node, f"grouped conv {name!r}")
                        if s is not None:
                            sp.constrain(s, groups=g)
                    uses.append(Use(name, "conv_in", lin))
                    result = (sp.new(m.out_channels, producer=("conv", name), groups=g),)
                conv_out[name] = result
            elif conv_kind(m):  # weight-standardised or with its own forward: neither side can shrink exactly
                seen.add(name)
                why = {"std": "weight-standardised conv: each filter is normalised over its inputs",
                       "computed": "conv whose weight is computed (parametrization, weight_norm or a hook)"}.get(
                    conv_kind(m), f"{type(m).__name__} has its own forward")
                sp.freeze(lin, f"{why} ({name})")
                result = conv_out[name] = (sp.new(m.out_channels, producer=("conv", name), frozen=f"{why} ({name})"),)
            elif is_batch_norm(m) or is_group_norm(m):
                seen.add(name)
                problem = norm_act_problem(m)
                if problem:
                    sp.freeze(lin, f"{problem} ({name})")
                if is_group_norm(m):
                    unit = m.num_channels // m.num_groups
                    if all(sp.size[s] % unit == 0 for s in lin):
                        for s in lin:
                            sp.constrain(s, unit=unit)
                    else:
                        sp.freeze(lin, f"GroupNorm groups straddle concatenated channels ({name})")
                uses.append(Use(name, "norm", lin))
                if x.op == "call_module" and conv_kind(modules[x.target]) == "conv" and len(x.users) == 1:
                    norm_after[x.target] = name
                result = lin
            elif mixes_channels(m):
                seen.add(name)
                sp.freeze(lin, f"{mixes_channels(m)} ({name})")
                result = fresh(node, f"{mixes_channels(m)} ({name})")
            elif isinstance(m, nn.Linear):
                seen.add(name)
                if len(shapes[x]) == 2:
                    uses.append(Use(name, "linear_in", lin))
                else:
                    sp.freeze(lin, f"Linear on a {len(shapes[x])}-d tensor ({name})")
                result = fresh(node, f"Linear outputs are not pruned ({name})")
            elif split_attn is not None and isinstance(m, split_attn):
                seen.add(name)
                result = _split_attn_rule(sp, uses, norm_after, node, name, m, lin, single, warnings)
                conv_out[f"{name}.conv"] = result
            elif selective_kernel is not None and isinstance(m, selective_kernel):
                seen.add(name)
                result = _selective_kernel_rule(sp, uses, norm_after, conv_out, name, m, lin, single, node)
            elif isinstance(m, nn.Flatten):
                result = lin if (m.start_dim == 1 and spatial_one(x)) else unknown(node, f"flatten {name!r}")
            elif is_pass(m):
                result = lin
            else:
                result = unknown(node, f"module {name!r} ({type(m).__name__})")
        elif node in traced.shape_nodes:  # arithmetic on sizes: no channels, but it may depend on channel counts
            size_of[node] = _size_dependence(node, shapes, constants, layout, size_of, raw_channels)
            result = None
        else:  # call_function / call_method
            name, kw = canonical(node)
            x = kw.get("input") if isinstance(kw.get("input"), fx.Node) else None
            lin = layout.get(x) if x is not None else None
            operands = [n for n in _flat_nodes((args, node.kwargs)) if layout.get(n)]
            counts = [n for n in _flat_nodes((args, node.kwargs)) if size_of.get(n)]
            if counts and not _channel_count_follows(name, kw, x, layout, raw_channels, counts, sp):
                for n in counts:
                    sp.freeze(size_of[n], f"channel count read from the shape ({node.name})")
            if not operands:
                result = fresh(node, f"untracked tensor from {name} ({node.name})") if out_shape else None
            elif name in ELEMENTWISE:
                result = _elementwise(node, [kw.get(k) for k in ELEMENTWISE[name]], operands, shapes, layout,
                                      unify, unknown, sp.follow)
            elif (node.op == "call_function" and node.target in PASS_FUNCTIONS) or \
                    (node.op == "call_method" and name in PASS_METHODS):
                donor = name in ("to", "type_as")  # x.type_as(y): y only lends its dtype
                passes = lin and all(o is x or donor for o in operands) and out_shape is not None \
                    and len(out_shape) >= 2
                result = lin if passes else unknown(node, name)
            elif name in ("getattr", "size", "dim") and out_shape is None:
                result = None
            elif name == "cat":
                tensors, dim = kw.get("tensors"), kw.get("dim", 0)
                lays = [layout.get(t) for t in tensors] if isinstance(tensors, (tuple, list)) else [None]
                if any(lay is None for lay in lays) or not isinstance(dim, int) or not out_shape \
                        or len(out_shape) < 2:
                    result = unknown(node, "torch.cat")
                elif dim % len(out_shape) == 1:
                    result = tuple(s for lay in lays for s in lay)
                else:
                    result = lays[0]
                    for lay in lays[1:]:
                        result = unify(result, lay, node.name)
            elif name == "flatten" and x is not None and operands == [x]:
                result = lin if kw.get("start_dim", 0) == 1 and spatial_one(x) else unknown(node, "flatten")
            elif name in ("view", "reshape") and x is not None and operands == [x] and out_shape \
                    and len(out_shape) >= 2 and shapes[x][:2] == out_shape[:2] \
                    and math.prod(shapes[x][2:]) == math.prod(out_shape[2:]) == 1:
                result = lin if _channel_size_follows(kw.get("shape")) \
                    else unknown(node, "reshape to a channel count fixed in the code")
            elif name == "getitem" and x is not None and lin and operands == [x]:
                result = lin if _keeps_all_channels(kw.get("index"), shapes[x]) else unknown(node, "slice of the channels")
            elif name in REDUCTIONS and x is not None and operands == [x]:
                result = lin if out_shape and len(out_shape) >= 2 and _keeps_channels(kw.get("dim"), shapes[x]) \
                    else unknown(node, name)
            else:
                result = unknown(node, name)
        layout[node] = result
        if result:
            nonzero[node] = _nonzero(node, modules, nonzero, x)
        if x is not None and nonzero.get(x) and any(u.role in ("conv_in", "linear_in") and u.layout is lin
                                                    for u in uses[n_uses:]):
            sp.freeze(lin, f"a map with f(0) != 0 ({nonzero[x]}) between removed channels and their reader")
        if node.op == "call_module":
            layouts.setdefault(node.target, result)
    read_elsewhere = {n.target.rsplit(".", 1)[0] for n in graph.nodes if n.op == "get_attr" and "." in n.target}
    for name in read_elsewhere & set(modules):  # F.conv2d(x, self.conv.weight): that use would not shrink with it
        for lay in [u.layout for u in uses if u.module == name] + [conv_out.get(name)]:
            sp.freeze(lay, f"parameters of module {name!r} are also read outside its call")
    for g in traced.guards:  # the trace took the branch this channel count gives: pruning could take another
        if not _holds_while_pruned(g, raw_channels):
            sp.freeze(size_of.get(g), f"control flow on the channel count ({g.name})")
    return ChannelGraph(sp, uses, norm_after, modules, warnings, conv_out, layouts)


def _holds_while_pruned(guard, raw_channels):
    """`x.shape[1] != 0` or `> 0` (smp's skip check): true for every pruning, which keeps a channel in each space."""
    name, kw = canonical(guard)
    return guard.op == "call_function" and name in ("ne", "gt") and kw.get("input") in raw_channels \
        and kw.get("arg1") == 0 and not isinstance(kw.get("arg1"), bool)


def _nonzero(node, modules, nonzero, x):
    """Whether the removed channels of `node`'s output may be non-zero in the masked original (then the op's name).

    Convs and norms with affine give zero (their rows are zeroed); f(0) != 0 maps, scalar offsets, and ops over an
    operand that is non-zero there pass it on; a product is zero when any channel-carrying factor is.
    """
    if node.op == "call_module":
        m = modules[node.target]
        if conv_kind(m) or isinstance(m, nn.Linear) or not zero_stays_zero(m):
            return "" if zero_stays_zero(m) else type(m).__name__
        return nonzero.get(x, "") if is_pass(m) else ""
    if node.op not in ("call_function", "call_method"):
        return ""
    name, kw = canonical(node)
    if (node.op == "call_function" and node.target in NONZERO_AT_ZERO_FUNCTIONS) or \
            (node.op == "call_method" and name in NONZERO_AT_ZERO_METHODS):
        return name
    tensors = [a for a in _flat_nodes((node.args, node.kwargs)) if a in nonzero]
    if name in ("add", "sub", "where", "maximum", "minimum", "fmax", "fmin", "clamp") and any(
            isinstance(kw.get(k), (int, float)) and kw.get(k) != 0 and not isinstance(kw.get(k), bool)
            for k in ("input", "other", "min", "max")):
        return f"{name} of a constant"
    if name in ("add", "sub", "where", "maximum", "minimum", "fmax", "fmin", "clamp") and any(
            isinstance(kw.get(k), fx.Node) and kw[k] not in nonzero for k in ("input", "other", "min", "max")):
        return f"{name} of a tensor without channels"
    if name == "div" and not isinstance(kw.get("input"), fx.Node):
        return "division of a constant"
    if name == "mul":
        return "mul" if tensors and all(nonzero[a] for a in tensors) else ""
    if name == "div":
        return nonzero.get(kw.get("input"), "")
    return next((nonzero[a] for a in tensors if nonzero[a]), "")


def _keeps_channels(dims, shape):
    """A reduction over `dims` that leaves dims 0 and 1 alone."""
    if dims is None or not isinstance(dims, (int, tuple, list)) or not shape:
        return False
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if not all(isinstance(d, int) for d in dims):
        return False
    dims = [d % len(shape) for d in dims]
    return 0 not in dims and 1 not in dims


def _elementwise(node, candidates, operands, shapes, layout, unify, unknown, follow):
    """Elementwise op over `candidates` (its tensor parameters, canonical order): operands that carry the channel
    dim are unified; broadcast ones (size 1 there) pass; a channel-carrying argument elsewhere is not understood.

    An operand broadcast over space, (N, C, 1, 1) against (N, C, H, W), is a channel gate (squeeze-excite): its
    convs follow the channels it scales instead of voting on them.
    """
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
        if cdim != 1 or layout.get(a) is None:
            return unknown(node, f"broadcast {node.target}")
        found.append((layout[a], math.prod(shape[2:]) == 1 < math.prod(out[2:])))
    if not found:
        return unknown(node, f"broadcast {node.target}")
    if len(found) == 2 and found[0][1] != found[1][1]:
        follow(found[0][0] if found[0][1] else found[1][0])
    result = found[0][0]
    for lay, _ in found[1:]:
        result = unify(result, lay, node.name)
    return result


def _channel_size_follows(sizes):
    """view/reshape whose dim-1 size is computed from the input (x.size(1) or -1), not a constant that pruning
    would leave stale."""
    return isinstance(sizes, (tuple, list)) and len(sizes) > 1 and (isinstance(sizes[1], fx.Node) or sizes[1] == -1)


def _size_dependence(node, shapes, constants, layout, size_of, raw_channels):
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


def _channel_count_follows(name, kw, x, layout, raw_channels, counts, sp):
    """A channel count read from a shape may only size dim 1 of a view/reshape of a tensor with the same channels."""
    if name not in ("view", "reshape") or x is None or not isinstance(kw.get("shape"), (tuple, list)):
        return False
    shape = kw["shape"]
    source = raw_channels.get(shape[1]) if len(shape) > 1 and isinstance(shape[1], fx.Node) else None
    same = source is not None and [sp.find(s) for s in layout.get(source) or ()] == \
        [sp.find(s) for s in layout.get(x) or ()]
    return same and counts == [shape[1]]


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


def _split_attn_rule(sp, uses, norm_after, node, name, m, lin, single, warnings):
    """timm SplitAttn: conv (groups*radix) -> bn0 -> act -> radix sum -> fc1 -> bn1 -> act -> fc2 -> r-softmax.

    Output channel j is conv rows r*C + j for every radix branch r: one space of C channels produced by the block.
    fc1's hidden channels are their own space (producer fc1, read by bn1 and fc2).
    """
    radix, card = m.radix, m.fc1.groups
    if not (type(m.conv) is nn.Conv2d and type(m.fc1) is nn.Conv2d and type(m.fc2) is nn.Conv2d
            and isinstance(m.bn0, (nn.BatchNorm2d, nn.Identity)) and isinstance(m.bn1, (nn.BatchNorm2d, nn.Identity))):
        warnings.append(f"SplitAttn {name!r} has unexpected sub-modules: its channels are left unpruned")
        sp.freeze(lin, f"SplitAttn {name!r} not understood")
        return (sp.new(m.conv.out_channels // radix, frozen=f"SplitAttn {name!r} not understood"),)
    s = single(lin, node, f"SplitAttn {name!r} (grouped conv)")
    if s is not None:
        sp.constrain(s, groups=m.conv.groups)
    uses.append(Use(f"{name}.conv", "conv_in", lin))
    out = sp.new(m.conv.out_channels // radix, producer=("splitattn", name), groups=card)
    uses.append(Use(f"{name}.fc1", "conv_in", (out,)))
    hidden = sp.new(m.fc1.out_channels, producer=("conv", f"{name}.fc1"), groups=card)
    if isinstance(m.bn1, nn.BatchNorm2d):
        uses.append(Use(f"{name}.bn1", "norm", (hidden,)))
        norm_after[f"{name}.fc1"] = f"{name}.bn1"  # for the "bn" criterion
    uses.append(Use(f"{name}.fc2", "conv_in", (hidden,)))
    return (out,)


def _selective_kernel_rule(sp, uses, norm_after, conv_out, name, m, lin, single, node):
    """timm SelectiveKernel: paths (conv -> norm-act) -> stack -> attn (sum, pool, fc_reduce, bn, act, fc_select,
    softmax over paths) -> weighted sum over paths.

    The paths are summed: channel j is row j of every path conv, one space of C channels produced by the block (scored,
    like SplitAttn's radix, by the paths' scores summed); fc_select row p*C + j gates channel j of path p (a
    follower); fc_reduce's hidden channels are their own space.
    """
    paths, attn = list(m.paths), m.attn
    why = ""
    if not all(type(p.conv) is nn.Conv2d and is_batch_norm(p.bn) and not norm_act_problem(p.bn)
               and isinstance(getattr(p, "aa", None), (nn.Identity, type(None))) for p in paths) \
            or not (type(attn.fc_reduce) is nn.Conv2d and type(attn.fc_select) is nn.Conv2d and is_pass(attn.act)
                    and is_batch_norm(attn.bn) and not norm_act_problem(attn.bn)):
        why = f"SelectiveKernel with unexpected sub-modules ({name})"
    elif m.split_input:
        sp.freeze(lin, f"SelectiveKernel splits its input into fixed sizes ({name})")
    else:
        for i, p in enumerate(paths):
            if p.conv.groups > 1:
                s = single(lin, node, f"grouped conv {name}.paths.{i}.conv")
                if s is not None:
                    sp.constrain(s, groups=p.conv.groups)
            uses.append(Use(f"{name}.paths.{i}.conv", "conv_in", lin))
    groups = paths[0].conv.groups
    out = sp.new(paths[0].conv.out_channels, producer=("paths", name), frozen=why or None, groups=groups)
    for i, p in enumerate(paths):
        conv = f"{name}.paths.{i}.conv"
        uses.append(Use(f"{name}.paths.{i}.bn", "norm", (out,)))
        norm_after[conv] = f"{name}.paths.{i}.bn"
        conv_out[conv] = (out,)
    uses.append(Use(f"{name}.attn.fc_reduce", "conv_in", (out,)))
    hidden = sp.new(attn.fc_reduce.out_channels, producer=("conv", f"{name}.attn.fc_reduce"), frozen=why or None)
    uses.append(Use(f"{name}.attn.bn", "norm", (hidden,)))
    norm_after[f"{name}.attn.fc_reduce"] = f"{name}.attn.bn"
    uses.append(Use(f"{name}.attn.fc_select", "conv_in", (hidden,)))
    sp.producers[out].append(("repeat", f"{name}.attn.fc_select"))
    conv_out[f"{name}.attn.fc_reduce"], conv_out[f"{name}.attn.fc_select"] = (hidden,), (out,)
    return (out,)


def channel_groups(model: nn.Module, example_inputs) -> list:
    """The coupling sets of `model` (module names), in graph order: what `gmlib.prune` selects channels over.

    Each ChannelGroup lists the producers (convs whose filters are the channels), the consumers, the constraints
    (groups, GroupNorm unit) and why a set is frozen. Sets without producers (e.g. the model input) are omitted.
    """
    g = analyse(model, example_inputs)
    sp = g.spaces
    consumers = {}
    for u in g.uses:
        for s in u.layout:
            consumers.setdefault(sp.find(s), []).append(u.module)
    out = []
    for r in sp.roots():
        if not sp.producers[r]:
            continue
        out.append(ChannelGroup(size=sp.size[r], producers=[p[1] for p in sp.producers[r]],
                                consumers=list(dict.fromkeys(consumers.get(r, []))), groups=sp.groups[r],
                                unit=sp.unit[r], frozen="; ".join(dict.fromkeys(sp.frozen[r]))))
    return out
