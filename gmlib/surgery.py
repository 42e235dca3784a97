"""Layer surgery: score filters, select the kept channels of every coupling set, and shrink the modules in place.

For each channel space of `gmlib.graph.analyse` (a set of convs whose outputs meet at residual adds):
"or-merge" keeps channel c if any member conv keeps it (NNI 2.x speedup); "coupled" selects once on the members'
normalised scores summed. Producers lose rows, consumers lose input columns; module names and hyper-parameters stay.
"""
import math
import re
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .complexity import count
from .criteria import CRITERIA, filter_scores, select_filters
from .graph import analyse, split_attn_type
from .layers import is_batch_norm

__all__ = ["prune", "PruneReport", "LayerChange", "POLICIES", "shrink_module", "apply_kept", "mask_pruned"]

POLICIES = ("or-merge", "coupled")


@dataclass
class LayerChange:
    """One conv/linear layer of the report: channels before/after and the sparsity actually reached."""
    name: str
    kind: str
    rate: float        # nominal rate asked for this layer's output channels (0 for outputs/ignored/frozen)
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    coupling_set: int  # index of the channel space its outputs belong to (-1: none)
    note: str = ""

    @property
    def sparsity(self) -> float:
        """Effective fraction of output channels removed (after or-merge and group rounding)."""
        return 1 - self.out_after / self.out_before


@dataclass
class PruneReport:
    """What `prune` did: per-layer channels, params and MACs before/after, warnings, and the kept indices.

    `kept[name] = {"out": [...], "in": [...]}` are the surviving channel indices of the *original* (unpruned)
    module along its output and input dims, for every module that changed; `save_pruned` stores them.
    """
    rate: float
    criterion: str
    policy: str
    input_size: tuple | None
    layers: list
    params_before: int | None
    params_after: int | None
    macs_before: int | None
    macs_after: int | None
    warnings: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)
    coverage: float | None = None   # share of conv output channels in prunable coupling sets
    frozen: dict = field(default_factory=dict)  # why the rest is kept: reason -> share of conv output channels

    @property
    def params_reduction(self) -> float:
        """Percent of parameters removed."""
        return 100.0 * (1 - self.params_after / self.params_before)

    @property
    def macs_reduction(self) -> float:
        """Percent of multiply-accumulates removed (at `input_size`)."""
        return 100.0 * (1 - self.macs_after / self.macs_before) if self.macs_before else float("nan")

    @property
    def frozen_reason(self) -> str:
        """One line: the largest frozen share and its reason ('' when everything was prunable)."""
        if not self.frozen:
            return ""
        reason, share = max(self.frozen.items(), key=lambda kv: kv[1])
        return f"{100 * share:.1f}% of conv output channels kept because: {reason}"

    def to_frame(self) -> pd.DataFrame:
        rows = [dict(name=l.name, kind=l.kind, rate=l.rate, in_before=l.in_before, in_after=l.in_after,
                     out_before=l.out_before, out_after=l.out_after, sparsity=l.sparsity, coupling_set=l.coupling_set,
                     note=l.note) for l in self.layers]
        return pd.DataFrame(rows, columns=["name", "kind", "rate", "in_before", "in_after", "out_before",
                                           "out_after", "sparsity", "coupling_set", "note"])

    def summary(self) -> str:
        s = f"prune(rate={self.rate}, criterion={self.criterion!r}, policy={self.policy!r})"
        s += f": params {self.params_before:,} -> {self.params_after:,} ({-self.params_reduction:+.2f}%)"
        if self.macs_before is not None:
            s += f", MACs@{self.input_size} {self.macs_before:,} -> {self.macs_after:,} ({-self.macs_reduction:+.2f}%)"
        if self.coverage is not None:
            s += f"; coverage {100 * self.coverage:.1f}%"
            if self.frozen:
                s += f" ({self.frozen_reason})"
        return s

    def __str__(self):
        df = self.to_frame()
        df["sparsity"] = df["sparsity"].map(lambda v: f"{100 * v:.1f}%")
        lines = [self.summary(), df.to_string(index=False)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    __repr__ = __str__


# ----------------------------------------------------------------------------------------------------- shrinking

def _param(t, like):
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def shrink_module(m: nn.Module, out=None, in_=None) -> None:
    """Keep rows `out` (output channels / norm channels) and columns `in_` (input channels) of one module, in place.

    Conv2d (grouped: both index sets must keep the same number in every group; depthwise: `out` only),
    BatchNorm, GroupNorm (whole groups), Linear (`in_` only). Every other attribute is left as it was.
    """
    dev = next(m.parameters()).device if any(True for _ in m.parameters()) else None
    out = None if out is None else torch.as_tensor(out, dtype=torch.long, device=dev)
    in_ = None if in_ is None else torch.as_tensor(in_, dtype=torch.long, device=dev)
    if isinstance(m, nn.Conv2d):
        g, w = m.groups, m.weight
        if g > 1 and g == m.in_channels == m.out_channels:  # depthwise: one index set for both
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
    elif is_batch_norm(m):  # nn.BatchNorm*, timm's BatchNormAct2d, frozen BNs (affine kept as buffers)
        for k in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, k, None)
            if isinstance(t, nn.Parameter):
                setattr(m, k, _param(t[out], t))
            elif isinstance(t, torch.Tensor):
                setattr(m, k, t[out].clone())
        m.num_features = len(out)
    elif isinstance(m, nn.GroupNorm):
        size = m.num_channels // m.num_groups
        blocks = out.view(-1, size) if len(out) % size == 0 else None
        if blocks is None or (blocks[:, 0] % size).any() or \
                (blocks != blocks[:, :1] + torch.arange(size, device=out.device)).any():
            raise RuntimeError(f"GroupNorm channels must be removed in whole groups of {size}")
        if m.affine:
            m.weight, m.bias = _param(m.weight[out], m.weight), _param(m.bias[out], m.bias)
        m.num_channels, m.num_groups = len(out), len(out) // size
    elif isinstance(m, nn.Linear):
        m.weight = _param(m.weight[:, in_], m.weight)
        m.in_features = len(in_)
    else:
        raise TypeError(f"cannot shrink a {type(m).__name__}")


def apply_kept(model: nn.Module, kept: dict) -> None:
    """Re-apply a report's (or manifest's) kept indices to an unpruned model of the same architecture."""
    modules = dict(model.named_modules())
    for name, k in kept.items():
        if name not in modules:
            raise ValueError(f"kept indices name module {name!r}, which the model does not have")
        shrink_module(modules[name], k.get("out"), k.get("in"))


@torch.no_grad()
def mask_pruned(model: nn.Module, report: PruneReport) -> nn.Module:
    """Zero, in an unpruned model, every channel `report` removed (producer rows, biases and norm affines), in place.

    In eval mode the result computes exactly what the physically pruned network computes: the equivalence check.
    """
    modules = dict(model.named_modules())
    for name, k in report.kept.items():
        m = modules[name]
        if k.get("out") is None or isinstance(m, nn.Linear):
            continue
        n = m.weight.shape[0]
        drop = torch.ones(n, dtype=torch.bool, device=m.weight.device)
        drop[torch.as_tensor(k["out"], device=m.weight.device)] = False
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                p[drop] = 0
    return model


# ----------------------------------------------------------------------------------------------------- selection

def _member_scores(graph, producer, criterion, generator):
    kind, name = producer
    m = graph.modules[name]
    if kind == "splitattn":
        bn = m.bn0 if isinstance(m.bn0, nn.BatchNorm2d) else None
        s = _scores(m.conv, criterion, bn, f"{name}.conv", generator)
        return s.view(m.radix, -1).sum(0)  # channel j is rows r*C + j of every radix branch
    if kind == "paths":  # SelectiveKernel: channel j is row j of every path conv
        return sum(_scores(p.conv, criterion, p.bn, f"{name}.paths.{i}.conv", generator) for i, p in enumerate(m.paths))
    norm = graph.modules.get(graph.norm_after.get(name))
    return _scores(m, criterion, norm, name, generator)


def _scores(conv, criterion, norm, name, generator):
    try:
        return filter_scores(conv.weight, criterion, groups=conv.groups, bn=norm, generator=generator).float()
    except ValueError as e:
        raise ValueError(f"cannot score {name!r} with criterion {criterion!r}: {e}") from e


def _select(scores, n, unit, groups, rate, policy, round_to):
    """Kept channel indices of one space from its members' (n,) scores; whole units, balanced over groups."""
    m = n // unit
    per_unit = [s.view(m, unit).sum(1) for s in scores]
    ru = round_to // math.gcd(round_to, unit)
    agg = sum(s / s.abs().mean().clamp_min(1e-12) for s in per_unit)
    if policy == "coupled" or len(per_unit) == 1:
        kept = select_filters(agg, rate, groups=groups, round_to=ru)
    else:  # or-merge: union of each member's own choice, then evened out over groups / round_to by the agg score
        mask = torch.zeros(m, dtype=torch.bool, device=agg.device)
        for s in per_unit:
            mask[select_filters(s, rate, groups=groups, round_to=ru)] = True
        block = m // groups
        target = int(mask.view(groups, block).sum(1).max())
        while (target * groups) % ru and target < block:
            target += 1
        key = torch.where(mask, torch.full_like(agg, float("inf")), agg).view(groups, block)
        order = torch.sort(-key, dim=1, stable=True).indices[:, :target]
        kept = (order + torch.arange(groups, device=agg.device)[:, None] * block).flatten().sort().values
    return (kept[:, None] * unit + torch.arange(unit, device=kept.device)).flatten()


def _resolve_ignored(model, ignored_layers):
    names = {id(m): n for n, m in model.named_modules()}
    by_name = set(names.values())
    out = []
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = (ignored_layers,)
    for x in ignored_layers:
        if isinstance(x, nn.Module):
            if id(x) not in names:
                raise ValueError(f"ignored layer {type(x).__name__} is not a sub-module of the model")
            out.append(names[id(x)])
        elif isinstance(x, str):
            if x not in by_name:
                raise ValueError(f"ignored layer {x!r} is not a module of the model")
            out.append(x)
        else:
            raise TypeError(f"ignored_layers must hold module names or modules, got {type(x).__name__}")
    return out


def _under(name, prefixes):
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def _input_size(example_inputs):
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if len(example_inputs if isinstance(example_inputs, (tuple, list)) else (x,)) == 1 and x.dim() == 4:
        return tuple(int(v) for v in x.shape[1:])
    return None


# ----------------------------------------------------------------------------------------------------- prune

def prune(model: nn.Module, example_inputs, rate: float, *, criterion: str = "fpgm", policy: str = "or-merge",
          ignored_layers=(), round_to: int = 1, count_macs: bool = True, seed: int = 0) -> PruneReport:
    """Physically remove `rate` of every Conv2d's output filters, in place, and propagate to all consumers.

    Convs whose outputs reach the model output and `ignored_layers` (names or modules; their output channels are
    kept, their inputs still follow upstream pruning) are left. Returns a PruneReport: params always, MACs counted
    with gmlib.count at the example input's (C, H, W) unless `count_macs=False` (skips its two forward passes).
    Channels an unsupported op touches are kept (see warnings). `seed` draws the scores of criterion "random" (one
    generator for the whole call, so every layer gets its own draw); the other criteria ignore it.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number in [0, 1), got {type(rate).__name__} {rate!r}")
    if not (0 <= rate < 1):
        raise ValueError(f"rate must be in [0, 1), got {rate!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(count_macs, bool):
        raise TypeError(f"count_macs must be True or False, got {count_macs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    generator = torch.Generator().manual_seed(seed) if criterion == "random" else None
    ignored = _resolve_ignored(model, ignored_layers)
    graph = analyse(model, example_inputs)
    sp, modules = graph.spaces, graph.modules
    size = _input_size(example_inputs)

    def tally():  # (params, MACs or None)
        if size and count_macs:
            return count(model, size)
        return sum(p.numel() for p in model.parameters()), None

    before = tally()

    for u in graph.uses:  # an ignored norm/Linear/depthwise conv keeps every channel it reads
        if u.role != "conv_in" and _under(u.module, ignored):
            sp.freeze(u.layout, f"read by ignored layer {u.module!r}")
    warnings = list(graph.warnings)
    kept_space, set_of, notes, set_reason = {}, {}, {}, {}
    for i, r in enumerate(r for r in sp.roots() if sp.producers[r]):
        producers, n, unit, groups = sp.producers[r], sp.size[r], sp.unit[r], sp.groups[r]
        for p in producers:
            set_of[p[1]] = i
        reason = "; ".join(dict.fromkeys(sp.frozen[r]))
        voters = [p for p in producers if p[0] in ("conv", "splitattn", "paths")]
        if not reason and not voters:
            reason = "only gate convs write it: no filter to score"
        if not reason and any(_under(p[1], ignored) for p in producers):
            reason = "ignored layer in its coupling set"
        if not reason and (n % unit or (n // unit) % groups):
            reason = f"{n} channels cannot be split into {groups} groups of whole {unit}-channel units"
            warnings.append(f"coupling set of {', '.join(p[1] for p in producers)}: {reason}; left unpruned")
        set_reason[r] = reason
        if reason:
            for p in producers:
                notes[p[1]] = reason
            continue
        if rate == 0:
            continue
        scores = [_member_scores(graph, p, criterion, generator) for p in voters]
        kept = _select(scores, n, unit, groups, rate, policy, round_to)
        if kept.numel() == 0:
            raise ValueError(f"rate {rate} would remove every channel of {', '.join(p[1] for p in producers)}")
        if kept.numel() < n:
            kept_space[r] = kept.cpu()

    coverage, frozen = _coverage(graph, set_reason)  # before shrinking: it reads the original channel counts
    kept = _kept_indices(graph, kept_space)
    rows = _layer_rows(model, graph, kept, set_of, notes, rate)
    for name, k in kept.items():
        shrink_module(modules[name], k.get("out"), k.get("in"))
    after = tally()
    kept = {n: {d: v.tolist() for d, v in k.items()} for n, k in kept.items()}
    previous = getattr(model, "_gmlib_kept", None) or {}
    model._gmlib_kept = _compose(previous, kept)
    return PruneReport(rate, criterion, policy, size, rows, before[0], after[0], before[1], after[1], warnings,
                       {n: {d: list(v) for d, v in k.items()} for n, k in model._gmlib_kept.items()}, coverage, frozen)


def _reason_key(reason):
    """A frozen reason without its node and module names, so that reasons of the same kind add up."""
    first = reason.split("; ")[0]
    return re.sub(r" ?'[^']*'", "", re.sub(r" \([^()]*\)$", "", first)).strip()


def _coverage(graph, set_reason):
    """(share of conv output channels in prunable sets, {reason: share} for the rest); (None, {}) without convs."""
    sp, total, prunable, frozen = graph.spaces, 0, 0, {}
    for name, layout in graph.conv_out.items():
        n = sum(sp.size[s] for s in layout)
        copies = graph.modules[name].out_channels // n  # SplitAttn: radix rows per channel
        for s in layout:
            r = sp.find(s)
            reason = set_reason.get(r, "; ".join(dict.fromkeys(sp.frozen[r])) or "no conv writes it")
            c = sp.size[s] * copies
            total += c
            if reason:
                frozen[_reason_key(reason)] = frozen.get(_reason_key(reason), 0) + c
            else:
                prunable += c
    if not total:
        return None, {}
    return prunable / total, {k: v / total for k, v in sorted(frozen.items(), key=lambda kv: -kv[1])}


def _kept_indices(graph, kept_space):
    """Per module name: {"out": LongTensor, "in": LongTensor} for every dim that loses channels."""
    sp = graph.spaces

    def of_layout(layout):
        if not any(sp.find(s) in kept_space for s in layout):
            return None
        parts, offset = [], 0
        for s in layout:
            k = kept_space.get(sp.find(s))
            parts.append((k if k is not None else torch.arange(sp.size[s])) + offset)
            offset += sp.size[s]
        return torch.cat(parts)

    kept = {}
    for r, k in kept_space.items():
        for kind, name in sp.producers[r]:
            if kind in ("conv", "gate"):
                kept.setdefault(name, {})["out"] = k
                continue
            if kind == "paths":
                for i in range(len(graph.modules[name].paths)):
                    kept.setdefault(f"{name}.paths.{i}.conv", {})["out"] = k
                continue
            if kind == "repeat":  # rows p*C + j for each of its out_channels // C copies (SelectiveKernel fc_select)
                c = sp.size[r]
                kept.setdefault(name, {})["out"] = (torch.arange(graph.modules[name].out_channels // c)[:, None] * c
                                                    + k[None]).flatten()
                continue
            m = graph.modules[name]
            c = m.conv.out_channels // m.radix
            rows = (torch.arange(m.radix)[:, None] * c + k[None]).flatten()
            kept.setdefault(f"{name}.conv", {})["out"] = rows
            if isinstance(m.bn0, nn.BatchNorm2d):
                kept.setdefault(f"{name}.bn0", {})["out"] = rows
            card, cg = m.fc1.groups, c // m.fc1.groups
            kv = k.view(card, -1) - torch.arange(card)[:, None] * cg
            fc2 = (torch.arange(card)[:, None, None] * m.radix * cg + torch.arange(m.radix)[None, :, None] * cg
                   + kv[:, None, :]).flatten()
            kept.setdefault(f"{name}.fc2", {})["out"] = fc2
    for u in graph.uses:
        k = of_layout(u.layout)
        if k is None:
            continue
        if u.role in ("conv_in", "linear_in"):
            kept.setdefault(u.module, {})["in"] = k
        elif u.role == "depthwise":  # channel i in is channel i out
            kept.setdefault(u.module, {}).update(out=k, **{"in": k})
        else:  # norm
            kept.setdefault(u.module, {})["out"] = k
    return kept


def _layer_rows(model, graph, kept, set_of, notes, rate):
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        k = kept.get(name, {})
        conv = isinstance(m, nn.Conv2d)
        cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        kind = "linear" if not conv else ("conv (groups=%d)" % m.groups if m.groups > 1 else "conv")
        parent = name.rsplit(".", 1)[0]
        if split_attn_type() and isinstance(graph.modules.get(parent), split_attn_type()):
            kind = "split-attn " + kind
        coupling = set_of.get(name, set_of.get(parent, -1))
        note = notes.get(name, notes.get(parent, ""))
        if not note and coupling == -1:
            note = "follows its input" if conv else "outputs kept"
        nominal = rate if coupling >= 0 and not note else 0.0
        rows.append(_row(name, kind, nominal, cin, k.get("in"), cout, k.get("out"), coupling, note))
    return rows


def _row(name, kind, rate, cin, kin, cout, kout, coupling, note):
    return LayerChange(name, kind, float(rate), cin, cin if kin is None else len(kin), cout,
                       cout if kout is None else len(kout), coupling, note)


def _compose(previous, new):
    """Indices relative to the original model after pruning twice: previous[new]."""
    out = {n: dict(k) for n, k in previous.items()}
    for name, k in new.items():
        for d, idx in k.items():
            base = out.get(name, {}).get(d)
            out.setdefault(name, {})[d] = [base[i] for i in idx] if base is not None else list(idx)
    return out
