"""Layer surgery: score filters, select the kept channels of every coupling set, and shrink the modules in place.

For each channel space of `gmlib.graph.analyse` (a set of convs whose outputs meet at residual adds):
"or-merge" keeps channel c if any member conv keeps it (NNI 2.x speedup); "coupled" selects once on the members'
normalised scores summed. Producers lose rows, consumers lose input columns; module names and hyper-parameters stay.
"""
import math
import re
import warnings as _warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .complexity import count
from .criteria import CRITERIA, select_filters
from .graph import analyse
from .rules import rule_for
from .selfcheck import Check, NotExactError, first_difference
from .shrink import apply_kept, mask_kept, mask_pruned, shrink_module, shrink_named
from .transaction import Snapshot

__all__ = ["prune", "PruneReport", "LayerChange", "POLICIES", "shrink_module", "apply_kept", "mask_pruned",
           "mask_kept", "NotExactError"]

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


# ----------------------------------------------------------------------------------------------------- selection

def _member_scores(graph, producer, criterion, generator):
    """(n,) scores of a voting producer's channels, by its rule (gmlib.rules)."""
    return producer.rule.scores(graph, producer, criterion, generator)


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
          ignored_layers=(), round_to: int = 1, count_macs: bool = True, seed: int = 0,
          verify: bool = True) -> PruneReport:
    """Physically remove `rate` of every Conv2d's output filters, in place, and propagate to all consumers.

    Convs whose outputs reach the model output and `ignored_layers` (names or modules; their output channels are
    kept, their inputs still follow upstream pruning) are left. Returns a PruneReport: params always, MACs counted
    with gmlib.count at the example input's (C, H, W) unless `count_macs=False` (skips its two forward passes).
    Channels an unsupported op touches are kept (see warnings). `seed` draws the scores of criterion "random" (one
    generator for the whole call, so every layer gets its own draw); the other criteria ignore it.

    All or nothing: with `verify` (the default) the pruned network is checked, in float64 on `example_inputs`, in
    eval and (where it runs in it) train mode, against the original with the removed channels zeroed; if they differ
    beyond rounding, NotExactError names the first module where the outputs part. On that or any other error the
    model is left exactly as it was (same Parameter objects, buffers, modes). `verify=False` skips the check (it
    costs a float64 copy of the model and four forward passes). A prune that removes nothing, or under half the
    asked rate of the parameters, warns with the largest frozen share's reason.
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
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    generator = torch.Generator().manual_seed(seed) if criterion == "random" else None
    ignored = _resolve_ignored(model, ignored_layers)
    graph = analyse(model, example_inputs)
    sp, modules = graph.spaces, graph.modules
    size = _input_size(example_inputs)

    def tally():  # (params, MACs or None)
        if size and count_macs:
            return count(model, size)
        return sum(p.numel() for p in model.parameters()), None

    modes = Snapshot(model)
    before = tally()
    modes.restore_modes()  # gmlib.count runs in eval mode and restores only the root's flag

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
        voters = [p for p in producers if p.votes]
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
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check = Check(model, inputs, kept) if verify and kept else None
    snapshot = Snapshot(model, kept)
    try:
        for name, k in kept.items():
            if name in modules:
                shrink_module(modules[name], k.get("out"), k.get("in"))
            else:  # a bare per-channel parameter (gmlib.rules.params)
                shrink_named(modules, name, k)
        failure = check.failure(model) if check else None
        if failure:
            snapshot.restore()
            where = first_difference(model, inputs, kept, lambda name: _channels_of(graph, kept, kept_space, name),
                                     failure[0], check.dtype)
            raise NotExactError(
                f"pruning {type(model).__name__} at rate {rate} would change what it computes: in {failure[0]} mode "
                f"its output differs from the original with the removed channels zeroed by {failure[1]:.1e} "
                f"(relative, {str(check.dtype).replace('torch.', '')}); the outputs first part at module {where}. "
                f"The model is left as it was; verify=False skips this check")
        after = tally()
        snapshot.restore_modes()
        kept = {n: {d: v.tolist() for d, v in k.items()} for n, k in kept.items()}
        previous = getattr(model, "_gmlib_kept", None) or {}
        model._gmlib_kept = _compose(previous, kept)
    except BaseException:
        snapshot.restore()
        raise
    report = PruneReport(rate, criterion, policy, size, rows, before[0], after[0], before[1], after[1], warnings,
                         {n: {d: list(v) for d, v in k.items()} for n, k in model._gmlib_kept.items()}, coverage,
                         frozen)
    if rate > 0 and report.params_reduction < 50 * rate:
        _warnings.warn(f"prune cut {report.params_reduction:.1f}% of the parameters at rate {rate}: "
                       f"{report.frozen_reason or 'or-merge keeps a channel that any conv sharing it keeps'}",
                       stacklevel=2)
    return report


def _channels_of(graph, kept, kept_space, name):
    """Kept indices along dim 1 of module `name`'s output (None where unchanged or not mapped)."""
    if name in kept and "out" in kept[name]:
        return kept[name]["out"]
    layout = graph.layouts.get(name)
    return _layout_kept(graph.spaces, layout, kept_space) if layout else None


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


def _layout_kept(sp, layout, kept_space):
    """Kept indices along a layout of spaces laid side by side (None when none of them loses a channel)."""
    return sp.layout_kept(layout, kept_space)


def _kept_indices(graph, kept_space):
    """Per module name: {"out": LongTensor, "in": LongTensor} for every dim that loses channels."""
    sp = graph.spaces
    graph.kept_space = kept_space
    kept = {}
    for r, k in kept_space.items():
        for p in sp.producers[r]:  # each producer's rule turns the space's indices into rows of its modules
            for name, rows in p.rule.expand(graph, p, k, sp.size[r]).items():
                kept.setdefault(name, {})["out"] = rows
    for u in graph.uses:
        k = _layout_kept(sp, u.layout, kept_space)
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
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        k = kept.get(name, {})
        conv = not isinstance(m, nn.Linear)
        cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        kind = "linear" if not conv else ("conv (groups=%d)" % m.groups if m.groups > 1 else "conv")
        if isinstance(m, nn.ConvTranspose2d):
            kind = "transposed " + kind
        parent = name.rsplit(".", 1)[0]
        label = getattr(rule_for(graph.modules.get(parent)), "label", "") if parent != name else ""
        if label:
            kind = f"{label} {kind}"
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
