"""Channel spaces of a traced network: which filters must be removed together, and who reads them.

A Conv2d output opens a *space* of channels; pass-through ops (gmlib.layers: norms, activations, pooling, resizing,
dropout) keep it, elementwise `+`/`*` unify spaces (union-find; a (N, C, 1, 1) gate's convs join as followers that do
not vote), `torch.cat` on dim 1 lays spaces side by side, and consumers (next convs, norms, Linear) record which
spaces they read. Constraints travel with a space: `groups` (prune the same number in each of `groups` equal blocks:
grouped convs), `unit` (remove whole blocks: GroupNorm groups) and `frozen` (never pruned, with the reason: it
reaches the output, is the model input, or meets an op that removing a channel would change elsewhere).
"""
import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .layers import (BINARY, PASS_FUNCTIONS, PASS_METHODS, REDUCE_METHODS, conv_kind, is_batch_norm,
                     is_group_norm, is_pass, leaf_types, mixes_channels, norm_act_problem)

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


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps convs, norms, activations (gmlib.layers), SplitAttn and the `opaque` module paths
    as leaves, and remembers the innermost module a failure happened in."""

    def __init__(self, opaque=()):
        super().__init__()
        self.failed_at = None  # (path, type name)
        self.opaque = set(opaque)
        self._leaves = leaf_types() + tuple(t for t in (split_attn_type(), selective_kernel_type()) if t)

    def is_leaf_module(self, m, qualname):
        return isinstance(m, self._leaves) or qualname in self.opaque or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = (self.path_of_module(m), type(m).__name__)
            raise


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once, recording each node's output shape (None for non-tensors)."""

    def __init__(self, model, graph):
        super().__init__(model, graph=graph)  # runs `graph` against the model itself: no GraphModule to compile
        self.shapes = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def _trace(model, example_inputs):
    """(graph, shapes, opaque): a module whose forward fx cannot trace (data-dependent control flow) becomes one
    opaque node, so the rest of the network still prunes; a failure in the root module's own forward is an error."""
    opaque = []
    while True:
        tracer = _Tracer(opaque)
        try:
            graph = tracer.trace(model)
            break
        except Exception as e:
            path, kind = tracer.failed_at or ("", type(model).__name__)
            if not path or path in opaque:
                raise TypeError(f"cannot trace the model with torch.fx: it fails in module {path or '(root)'} "
                                f"({kind}): {type(e).__name__}: {e}") from e
            opaque.append(path)
    was_training = model.training
    model.eval()
    recorder = _ShapeRecorder(model, graph)
    try:
        with torch.no_grad():
            try:
                recorder.run(*example_inputs)
            except Exception as e:
                try:  # is it the inputs (the model itself fails) or the traced graph?
                    model(*example_inputs)
                except Exception as e2:
                    raise ValueError(f"example_inputs do not run through the model "
                                     f"({type(e2).__name__}: {e2})") from e2
                raise TypeError(f"the traced graph of {type(model).__name__} fails where the model runs: "
                                f"{type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)
    return graph, recorder.shapes, opaque


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
    graph, shapes, opaque = _trace(model, tuple(example_inputs))
    modules = dict(model.named_modules())
    sp = _Spaces()
    uses, norm_after, warnings, layout, seen, conv_out = [], {}, [], {}, set(), {}
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

    def spatial_one(node):
        shape = shapes.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        return shape is not None and math.prod(shape[2:]) == 1

    for node in graph.nodes:
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
            continue
        elif node.op == "call_module":
            name, m = node.target, modules[node.target]
            if name in seen:  # a parameterised module used twice: its channels would have to agree twice
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
                why = ("weight-standardised conv: each filter is normalised over its inputs" if conv_kind(m) == "std"
                       else f"{type(m).__name__} has its own forward")
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
                result = lin if (m.start_dim == 1 and spatial_one(node)) else unknown(node, f"flatten {name!r}")
            elif is_pass(m):
                result = lin
            else:
                result = unknown(node, f"module {name!r} ({type(m).__name__})")
        else:  # call_function / call_method
            target = node.target
            tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            has_channels = any(layout.get(a) for a in _flat_nodes((args, node.kwargs)))
            if not has_channels:
                result = fresh(node, f"untracked tensor from {tname} ({node.name})") if out_shape else None
            elif target in BINARY:
                result = _binary(node, shapes, layout, unify, unknown, sp.follow)
            elif (node.op == "call_function" and target in PASS_FUNCTIONS) or \
                    (node.op == "call_method" and target in PASS_METHODS):
                result = lin if out_shape is not None and len(out_shape) >= 2 and lin else unknown(node, tname)
            elif target is getattr or (node.op == "call_method" and target in ("size", "dim")):
                result = None
            elif target in (torch.cat, torch.concat):
                tensors = node.args[0] if node.args else node.kwargs.get("tensors")
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                lays = [layout.get(t) for t in tensors]
                if any(lay is None for lay in lays) or len(out_shape) < 2:
                    result = unknown(node, "torch.cat")
                elif dim % len(out_shape) == 1:
                    result = tuple(s for lay in lays for s in lay)
                else:
                    result = lays[0]
                    for lay in lays[1:]:
                        result = unify(result, lay, node.name)
            elif target in (torch.flatten, "flatten"):
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                result = lin if start == 1 and spatial_one(node) else unknown(node, "flatten")
            elif target in ("view", "reshape", torch.reshape) and out_shape and len(out_shape) >= 2 \
                    and shapes[x][:2] == out_shape[:2] and math.prod(shapes[x][2:]) == math.prod(out_shape[2:]) == 1:
                result = lin if _channel_size_follows(node) else unknown(node, "reshape to a channel count fixed in the code")
            elif target is operator.getitem and isinstance(x, fx.Node) and lin:
                result = lin if _keeps_all_channels(args[1], shapes[x]) else unknown(node, "slice of the channels")
            elif node.op == "call_method" and target in REDUCE_METHODS or target in (torch.mean, torch.sum):
                result = lin if out_shape and len(out_shape) >= 2 and _keeps_channels(node, shapes) \
                    else unknown(node, tname)
            else:
                result = unknown(node, tname)
        layout[node] = result
    return ChannelGraph(sp, uses, norm_after, modules, warnings, conv_out)


def _keeps_channels(node, shapes):
    """A reduction that leaves dims 0 and 1 alone."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return False
    nd = len(shapes[node.args[0]])
    dims = [d % nd for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]
    return 0 not in dims and 1 not in dims


def _binary(node, shapes, layout, unify, unknown, follow):
    """Elementwise op: operands that carry the channel dim are unified; broadcast ones (size 1 there) pass.

    An operand broadcast over space, (N, C, 1, 1) against (N, C, H, W), is a channel gate (squeeze-excite): its
    convs follow the channels it scales instead of voting on them.
    """
    out = shapes[node]
    if out is None or len(out) < 2:
        return unknown(node, str(node.target))
    operands = []
    for a in node.args[:2]:
        if not isinstance(a, fx.Node) or shapes.get(a) is None:
            continue
        shape = shapes[a]
        cdim = len(shape) - len(out) + 1  # which of a's dims lines up with the output's dim 1
        if cdim < 0 or shape[cdim] == 1:
            continue
        if cdim != 1 or layout.get(a) is None:
            return unknown(node, f"broadcast {node.target}")
        operands.append((layout[a], math.prod(shape[2:]) == 1 < math.prod(out[2:])))
    if not operands:
        return unknown(node, f"broadcast {node.target}")
    if len(operands) == 2 and operands[0][1] != operands[1][1]:
        follow(operands[0][0] if operands[0][1] else operands[1][0])
    result = operands[0][0]
    for lay, _ in operands[1:]:
        result = unify(result, lay, node.name)
    return result


def _channel_size_follows(node):
    """view/reshape whose dim-1 size is computed from the input (an fx node or -1), not a constant that pruning
    would leave stale."""
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if "shape" in node.kwargs:
        sizes = node.kwargs["shape"]
    return len(sizes) > 1 and (isinstance(sizes[1], fx.Node) or sizes[1] == -1)


def _keeps_all_channels(index, shape):
    """x[index] keeps dims 0 and 1 whole (a slice there is a constant in the code: pruning would shift it)."""
    index = index if isinstance(index, tuple) else (index,)
    if index and index[0] is Ellipsis:
        return False  # x[..., k]: which dim it hits depends on the rank
    for d, i in enumerate(index[:2]):
        if i is Ellipsis:
            return True
        if not isinstance(i, slice) or i.start not in (None, 0) or i.step not in (None, 1) \
                or (i.stop is not None and i.stop < shape[d]):
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
