"""Channel spaces of a traced network: which filters must be removed together, and who reads them.

Step 2 of 9, one filter from its score to its removal (README, Layout): the filter's channel joins the coupling set
it is removed with, and its readers are recorded, as each module's rule (gmlib.rules) says.

`analyse` traces the network (gmlib.trace) and walks its nodes in order, handing each module call to the rule that
registry gives for its module (gmlib.rules: convs open spaces, norms and pass-through modules keep them, blocks
have their own), each function or method to gmlib.rules.functions (elementwise ops unify spaces, `cat` on dim 1
lays them side by side) and each parameter read in forward to gmlib.rules.params (a per-channel scale prunes).
Constraints travel with a space: `groups` (prune the same number in each of `groups` equal blocks), `unit` (remove
whole blocks: GroupNorm groups) and `frozen` (never pruned, with the reason: it reaches the output, is the model
input, or meets an op that removing a channel would change elsewhere).
"""
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .layers import NONZERO_AT_ZERO_FUNCTIONS, NONZERO_AT_ZERO_METHODS, SHIFTS
from .normalize import bind_module_call, canonical
from .rules import Use, rule_for, selective_kernel_type, split_attn_type
from .rules.context import Context, flat_nodes as _flat_nodes
from .rules.functions import analyse_function
from .rules.params import analyse_parameter
from .rules.shapes import holds_while_pruned, size_dependence
from .spaces import Spaces
from .trace import trace

__all__ = ["ChannelGroup", "ChannelGraph", "Use", "analyse", "channel_groups", "split_attn_type",
           "selective_kernel_type"]


@dataclass
class ChannelGroup:
    """One coupling set (public, for teaching): channels that must be kept or removed together."""
    size: int                 # channels in the set
    producers: list           # modules whose output filters are these channels (all lose the same channels)
    consumers: list           # modules that read them (next convs' inputs, norms, Linear)
    groups: int = 1           # prune the same number in each of `groups` equal blocks (grouped convs)
    unit: int = 1             # channels are removed in whole blocks of `unit` (GroupNorm groups)
    frozen: str = ""          # why it is never pruned ("" when prunable)


@dataclass
class ChannelGraph:
    """Result of `analyse`: spaces (union-find), the uses of each module and the norm right after each conv."""
    spaces: Spaces
    uses: list
    norm_after: dict
    modules: dict
    warnings: list = field(default_factory=list)
    conv_out: dict = field(default_factory=dict)  # conv name -> the spaces of its output (for coverage)
    layouts: dict = field(default_factory=dict)   # module name -> the spaces of its (first) output
    outputs: list = field(default_factory=list)  # the layout of each tensor the model returns, in return order
    copies: dict = field(default_factory=dict)    # conv name -> output rows per channel of conv_out (1 if absent)


def analyse(model: nn.Module, example_inputs, *, keep_outputs: bool = True) -> ChannelGraph:
    """Trace `model` on `example_inputs` (a tensor or tuple of tensors) and build its channel spaces.

    The channels the model returns are kept unless `keep_outputs` is False (then the output convs are pruned too,
    and the network returns fewer channels).

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
    ctx = Context(Spaces(), dict(model.named_modules()), traced.shapes)
    sp, layout, seen, layouts, outputs = ctx.sp, ctx.layout, set(), {}, []
    size_of = ctx.size_of  # shape-derived node -> the spaces whose channel count its value depends on
    raw_channels = {}  # node that is exactly x.size(1) / x.shape[1] -> x
    nonzero = {}  # node -> the op (truthy) that may give its removed channels a non-zero value in the masked original
    for node in traced.graph.nodes:
        n_uses = len(ctx.uses)
        ctx.node, ctx.input = node, (node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None)
        if node.op == "placeholder":
            result = ctx.fresh(node, "model input")
        elif node.op == "get_attr":
            result = analyse_parameter(ctx, node)
        elif node.op == "output":
            for a in _flat_nodes(node.args):
                outputs.append(layout.get(a))
                if keep_outputs:
                    sp.freeze(layout.get(a), "reaches the model output")
                sp.freeze(size_of.get(a), "its channel count reaches the model output")
            continue
        elif node.op == "call_module":
            result = _module_call(ctx, node, traced, seen)
        elif node in traced.shape_nodes:  # arithmetic on sizes: no channels, but it may depend on channel counts
            size_of[node] = size_dependence(node, traced.shapes, traced.constants, layout, size_of, raw_channels)
            result = None
        else:
            result = analyse_function(ctx, node, size_of, raw_channels)
        x = ctx.input
        lin = layout.get(x) if x is not None else None
        layout[node] = result
        if result:
            nonzero[node] = _nonzero(node, ctx.modules, nonzero, x, layout)
        if x is not None and nonzero.get(x) and any(u.reads_inputs and u.layout is lin
                                                    for u in ctx.uses[n_uses:]):
            for part, why in _nonzero_parts(x, nonzero, layout):
                sp.freeze(part, f"a map with f(0) != 0 ({why}) between removed channels and their reader")
        if node.op == "call_module":
            layouts.setdefault(node.target, node)
    for a, b, where in ctx.agree:  # expand_as: the donor's channel count must match after pruning
        ctx.unify(a, b, where)
    layouts = {name: layout[n] for name, n in layouts.items()}  # after any split (Context.unify)
    _read_elsewhere(ctx, traced.graph)
    for g in traced.guards:  # the trace took the branch this channel count gives: pruning could take another
        if not holds_while_pruned(g, raw_channels):
            sp.freeze(size_of.get(g), f"control flow on the channel count ({g.name})")
    return ChannelGraph(sp, ctx.uses, ctx.norm_after, ctx.modules, ctx.warnings, ctx.conv_out, layouts,
                        outputs=outputs, copies=ctx.copies)


def _module_call(ctx, node, traced, seen):
    """Dispatch a call_module node to its module's rule (gmlib.rules.rule_for); refuse what no rule can carry."""
    name, m, sp = node.target, ctx.modules[node.target], ctx.sp
    bound = bind_module_call(m, node.args, node.kwargs)
    ctx.input = bound[0] if bound and isinstance(bound[0], fx.Node) else None
    lin = ctx.layout.get(ctx.input) if ctx.input is not None else None
    rule = rule_for(m)
    if bound is None:
        return ctx.unknown(node, f"call of module {name!r} with keyword arguments")
    if name in seen:  # a parameterised module used twice: its channels would have to agree twice
        result = ctx.unknown(node, f"second call of module {name!r}")
        for u in ctx.uses:
            if u.module == name or u.module.startswith(name + "."):
                sp.freeze(u.layout, f"module {name!r} is called twice")
        for s in range(len(sp.parent)):
            if any(p[1] == name for p in sp.producers[s]):
                sp.freeze((s,), f"module {name!r} is called twice")
        return result
    if name in traced.opaque:
        return ctx.unknown(node, f"module {name!r} ({type(m).__name__})", "untraceable")
    if rule is None or (lin is None and rule.needs_input):
        return ctx.unknown(node, f"module {name!r} ({type(m).__name__})")
    if rule.once:
        seen.add(name)
    return rule.analyse(ctx, name, m, lin)


def _read_elsewhere(ctx, graph):
    """F.conv2d(x, self.conv.weight): a module's parameters used outside its call would not shrink with it."""
    names = {n.target.rsplit(".", 1)[0] for n in graph.nodes if n.op == "get_attr" and "." in n.target}
    for name in names & set(ctx.modules):
        for lay in [u.layout for u in ctx.uses if u.module == name] + [ctx.conv_out.get(name)]:
            ctx.sp.freeze(lay, f"parameters of module {name!r} are also read outside its call")


class _Parts(tuple):
    """The f(0) != 0 state of a concatenation on dim 1, part by part: (node, its state) for each part; true when
    any part may be non-zero. A map that acts on each channel alone passes it on whole."""

    def __bool__(self):
        return any(bool(why) for _, why in self)

    def __str__(self):
        return next(str(why) for _, why in self if why)


def _nonzero_parts(x, nonzero, layout):
    """(layout, op) for each part of `x`'s channels that may be non-zero where channels were removed."""
    state = nonzero.get(x)
    if isinstance(state, _Parts):
        return [p for part, _ in state for p in _nonzero_parts(part, nonzero, layout)]
    return [(layout.get(x), str(state))] if state else []


def _nonzero(node, modules, nonzero, x, layout):
    """Whether the removed channels of `node`'s output may be non-zero in the masked original (then the op's name).

    Convs and norms with affine give zero (their rows are zeroed); f(0) != 0 maps, scalar offsets, and ops over an
    operand that is non-zero there pass it on; a product is zero when any channel-carrying factor is.
    """
    if node.op == "call_module":
        m = modules[node.target]
        rule = rule_for(m, "nonzero")  # a map of each channel alone passes on what its input has
        return rule.nonzero(m, nonzero.get(x, "")) if rule is not None else ""
    if node.op not in ("call_function", "call_method"):
        return ""
    name, kw = canonical(node)
    parts = kw.get("tensors") if name == "cat" else None
    if isinstance(parts, (tuple, list)) and layout.get(node) == tuple(s for t in parts for s in layout.get(t) or ()):
        return _Parts((t, nonzero.get(t, "")) for t in parts)  # side by side on dim 1: each part its own
    if (node.op == "call_function" and node.target in NONZERO_AT_ZERO_FUNCTIONS) or \
            (node.op == "call_method" and name in NONZERO_AT_ZERO_METHODS):
        return name
    tensors = [a for a in _flat_nodes((node.args, node.kwargs)) if a in nonzero]
    if name in SHIFTS and any(
            isinstance(kw.get(k), (int, float)) and kw.get(k) != 0 and not isinstance(kw.get(k), bool)
            for k in ("input", "other", "min", "max")):
        return f"{name} of a constant"
    if name in SHIFTS and any(
            isinstance(kw.get(k), fx.Node) and kw[k] not in nonzero for k in ("input", "other", "min", "max")):
        return f"{name} of a tensor without channels"
    if name == "div" and not isinstance(kw.get("input"), fx.Node):
        return "division of a constant"
    if name == "mul":
        return "mul" if tensors and all(nonzero[a] for a in tensors) else ""
    if name == "div":
        return nonzero.get(kw.get("input"), "")
    found = [nonzero[a] for a in tensors if nonzero[a]]
    return "" if not found else found[0] if len(found) == 1 else str(found[0])  # several: every channel


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
