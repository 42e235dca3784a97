"""What `prune` would do, worked out without touching the model: the plan of a pruning.

Step 4 of 9, one filter from its score to its removal (README, Layout): its set's kept channels, selected and
expanded to rows and columns of every module; a Plan, the model untouched.

`plan(model, x, rate, ...)` traces the network (gmlib.graph), scores every voting conv of each coupling set by the
criterion, selects the kept channels of each set (or-merge or coupled) and expands them to the kept rows and columns
of every module. The Plan lists the coupling sets (members, size, kept, why a set is frozen), the per-layer widths
before and after, and the params and MACs before and after, the latter counted, not cut (each module's rule says the
shapes and the share of its MACs a cut leaves: gmlib.shrink.counted); it prints as a table and round-trips through
JSON.
`gmlib.apply(model, plan)` does the surgery; `prune` is the two together.
"""
import fnmatch
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields

import pandas as pd
import torch
from torch import nn

from .complexity import count_by_module, tally
from .criteria import CRITERIA, is_criterion, select_filters
from .graph import analyse
from .rules import rule_for
from .shrink import apply_kept, counted
from .transaction import copy_as, guarded

__all__ = ["plan", "Plan", "CouplingSet", "LayerChange", "POLICIES", "estimate_macs", "summary_line"]

POLICIES = ("or-merge", "coupled")
GLOBAL_CRITERIA = ("l1", "l2", "bn")  # scores that compare across layers (see plan's global_ranking)


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
class CouplingSet:
    """Convs whose output channels are one channel space (they meet at residual adds, gates, norms): pruned together."""
    index: int
    members: list      # names of the modules that write the space
    voters: list       # the members whose filters are scored
    size: int          # channels
    kept: int          # channels kept by the plan
    reason: str = ""   # why it is left whole ("" when it is pruned, or when the rate is 0)
    rate: float = 0.0  # the rate asked of it


@dataclass
class Plan:
    """What `prune(model, x, rate, ...)` would do to `model`, which is left as it was.

    `kept[name] = {"out": [...], "in": [...]}`: the surviving indices of module `name` along its output and input
    dims, for every module that changes. `sets` are the coupling sets, `layers` the conv / Linear widths before and
    after (a LayerChange each). Params and MACs after are counted from the kept shapes and each changed module's
    MACs share (`macs_scale`: name -> (kept, of), by its rule), without cutting (None when not asked for).
    `to_dict` / `from_dict` (and `save` / `load`, JSON) keep everything but the traced graph; `apply` needs the
    example inputs again for such a plan when it verifies.
    """
    rate: object       # as asked: a float, a {name or glob: rate} dict, or a description of a callable
    criterion: str     # a built-in's name, or a callable's __name__
    policy: str
    round_to: int
    input_size: tuple | None
    sets: list
    kept: dict
    layers: list
    warnings: list = field(default_factory=list)
    coverage: float | None = None
    frozen: dict = field(default_factory=dict)
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    shapes: dict = field(default_factory=dict)  # parameter name -> shape of the model it was made for
    module_macs: dict | None = None  # MACs inside each module of the unpruned network ("" = all), for estimates
    output_kept: list = field(default_factory=list)  # per returned tensor: kept channels (dim 1), None = all
    macs_scale: dict | None = field(default_factory=dict)  # module -> (kept, of) share of its MACs; None: unknown
    _graph: object = field(default=None, repr=False, compare=False)
    _kept_space: dict = field(default_factory=dict, repr=False, compare=False)
    _inputs: tuple | None = field(default=None, repr=False, compare=False)

    def sets_frame(self) -> pd.DataFrame:
        rows = [dict(set=s.index, members=len(s.members), first=s.members[0] if s.members else "", size=s.size,
                     rate=s.rate, kept=s.kept, pruned=s.size - s.kept, reason=s.reason) for s in self.sets]
        return pd.DataFrame(rows, columns=["set", "members", "first", "size", "rate", "kept", "pruned", "reason"])

    def layers_frame(self) -> pd.DataFrame:
        return layers_frame(self.layers)

    @property
    def frozen_reason(self) -> str:
        """One line: the largest frozen share and its reason ('' when everything was prunable)."""
        if not self.frozen:
            return ""
        reason, share = max(self.frozen.items(), key=lambda kv: kv[1])
        return f"{100 * share:.1f}% of conv output channels kept because: {reason}"

    def summary(self) -> str:
        return summary_line("plan", self, self.params_after, self.macs_before, self.macs_after)

    def __str__(self):
        pruned = sum(1 for c in self.sets if c.kept < c.size)
        return "\n".join([self.summary(), f"{pruned} of {len(self.sets)} coupling sets lose channels:",
                          self.sets_frame().to_string(index=False), *[f"warning: {w}" for w in self.warnings]])

    __repr__ = __str__

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["sets"], out["layers"] = [asdict(s) for s in self.sets], [asdict(l) for l in self.layers]
        out["warnings"], out["frozen"] = list(self.warnings), dict(self.frozen)
        out["input_size"] = list(self.input_size) if self.input_size else None
        out["shapes"] = {n: list(s) for n, s in self.shapes.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        d["sets"] = [CouplingSet(**s) for s in d["sets"]]
        d["layers"] = [LayerChange(**l) for l in d["layers"]]
        d["input_size"] = tuple(d["input_size"]) if d.get("input_size") else None
        d["shapes"] = {n: tuple(s) for n, s in d.get("shapes", {}).items()}
        d.pop("groups", None)  # saved before the rules scaled MACs: estimate_macs cannot use such a plan
        d.setdefault("macs_scale", None)
        return cls(**d)

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Plan":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @property
    def example_inputs(self) -> tuple | None:
        """The inputs it was made on, as a tuple (None for a plan read back from JSON)."""
        return self._inputs

    def output_channels(self, name: str):
        """Kept indices (LongTensor) along dim 1 of module `name`'s output: its own kept rows, else those of the
        channel spaces it writes; None where nothing is cut there, or for a plan read back from JSON."""
        if "out" in self.kept.get(name, {}):
            return torch.as_tensor(self.kept[name]["out"], dtype=torch.long)
        layout = self._graph.layouts.get(name) if self._graph is not None else None
        return self._graph.spaces.layout_kept(layout, self._kept_space) if layout else None

    def check_fits(self, model: nn.Module) -> None:
        """Raise ValueError, naming the first difference, when `model` is not the network this plan was made for."""
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for name, shape in self.shapes.items():
            if shapes.get(name) != tuple(shape):
                found = "absent" if name not in shapes else f"of shape {shapes[name]}"
                raise ValueError(f"the plan does not fit this model: its parameter {name!r} is {found}, the plan "
                                 f"was made for shape {tuple(shape)} (a plan applies once, to the model it was made on)")


def summary_line(verb: str, plan: Plan, params_after, macs_before, macs_after) -> str:
    """The one line of a plan ("plan") or of a pruning's report ("prune"): the call, the params and MACs before ->
    after with the change in percent (each where counted), the coverage and the largest frozen share's reason."""
    s = f"{verb}(rate={plan.rate!r}, criterion={plan.criterion!r}, policy={plan.policy!r}): "
    s += f"params {plan.params_before:,}" + _after(plan.params_before, params_after)
    if macs_before is not None:
        s += f", MACs@{plan.input_size} {macs_before:,}" + _after(macs_before, macs_after)
    if plan.coverage is not None:
        s += f"; coverage {100 * plan.coverage:.1f}%"
        if plan.frozen:
            s += f" ({plan.frozen_reason})"
    return s


def _after(before, after):
    """' -> after (change in percent)', or '' when `after` was not counted."""
    if after is None:
        return ""
    return f" -> {after:,} ({-(100.0 * (1 - after / before)) if before else float('nan'):+.2f}%)"


def layers_frame(layers) -> pd.DataFrame:
    """One row per LayerChange: its widths before and after, the sparsity reached, its coupling set and note."""
    rows = [dict(name=l.name, kind=l.kind, rate=l.rate, in_before=l.in_before, in_after=l.in_after,
                 out_before=l.out_before, out_after=l.out_after, sparsity=l.sparsity, coupling_set=l.coupling_set,
                 note=l.note) for l in layers]
    return pd.DataFrame(rows, columns=["name", "kind", "rate", "in_before", "in_after", "out_before", "out_after",
                                       "sparsity", "coupling_set", "note"])


@guarded  # tracing and counting run forwards: what they write on the model is put back
def plan(model: nn.Module, example_inputs, rate, *, criterion: str = "fpgm", policy: str = "or-merge",
         ignored_layers=(), round_to: int = 1, count_macs: bool = True, seed: int = 0, max_rate: float | None = None,
         global_ranking: bool = False, keep_head: bool = True, sizes_after: bool = True) -> Plan:
    """The Plan of `prune(model, example_inputs, rate, ...)` (same arguments, same meaning), without changing the
    model. `sizes_after` also counts the params (and with `count_macs` the MACs) after: from each module's kept
    shapes and MACs share as its rule gives them (exact: tests/test_planning.py compares them with the pruned
    model's), and only where a rule cannot say (a user's rule without `shapes_after` / `macs_share`) on a cut copy.

    `rate` is one float for every coupling set, or per set: a dict {module name or glob: rate} (a set takes the
    rate of the first entry that names one of its members; a set no entry names keeps its channels; an entry that
    names no module is an error), or a callable taking the CouplingSet (members, voters, size) and returning its
    rate. `max_rate` caps every set's rate. The convs whose channels the model returns (a segmentation head, a
    classifier) are kept unless `keep_head=False`: then they are pruned like any other, the network returns fewer
    channels (`Plan.output_kept` says which), and the check compares those channels.

    `global_ranking`: one ranking over the whole network instead of one per set (Network Slimming, for "bn"): the
    `rate` share of all prunable channels with the lowest scores goes, wherever they are, and each set's rate is
    its share of them (capped by `max_rate`, default 0.9). Only for criteria whose scores compare across layers:
    "bn" (|gamma|: every norm scales activations it has brought to unit variance), "l1" and "l2" divided by the
    number of a filter's weight entries (for l2 its square root), so that wide and narrow fan-ins compare, or a
    callable of yours."""
    _check_arguments(model, criterion, policy, round_to, count_macs, seed)
    if global_ranking and not (callable(criterion) or criterion in GLOBAL_CRITERIA):
        raise ValueError(f"global_ranking needs scores that compare across layers: criterion one of "
                         f"{', '.join(GLOBAL_CRITERIA)} or a callable, got {criterion!r}")
    if global_ranking and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
        raise TypeError(f"global_ranking takes one rate (the share of all prunable channels), got {rate!r}")
    if global_ranking:
        _valid_rate(rate)
        max_rate = 0.9 if max_rate is None else max_rate
    rate_of = _rate_rule(model, rate, max_rate)
    generator = torch.Generator().manual_seed(seed) if criterion == "random" else None
    ignored = _resolve_ignored(model, ignored_layers)
    if not isinstance(keep_head, bool):
        raise TypeError(f"keep_head must be True or False, got {keep_head!r}")
    graph = analyse(model, example_inputs, keep_outputs=keep_head)
    sp = graph.spaces
    size = _input_size(example_inputs)
    if size and count_macs:
        params_before, macs_before, module_macs = count_by_module(model, size)
    else:
        params_before, macs_before, module_macs = sum(p.numel() for p in model.parameters()), None, None

    for u in graph.uses:  # an ignored norm/Linear/depthwise conv keeps every channel it reads
        if u.role != "conv_in" and _under(u.module, ignored):  # an ignored conv's own filters are kept apart
            sp.freeze(u.layout, f"read by ignored layer {u.module!r}")
    warnings = list(graph.warnings)
    kept_space, set_of, notes, set_reason, sets, opened = {}, {}, {}, {}, [], []
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
        entry = CouplingSet(i, list(dict.fromkeys(p[1] for p in producers)),
                            list(dict.fromkeys(p[1] for p in voters)), n, n, reason)
        sets.append(entry)
        opened.append((r, entry, voters))
        if reason:
            for p in producers:
                notes[p[1]] = reason
    scored = {}
    if global_ranking:
        scored = {r: [_member_scores(graph, p, criterion, generator) for p in voters]
                  for r, entry, voters in opened if not entry.reason}
        rate_of = _global_rates(graph, opened, scored, rate, max_rate, criterion)
    for r, entry, voters in opened:
        n, unit, groups = sp.size[r], sp.unit[r], sp.groups[r]
        entry.rate = set_rate = rate_of(entry)  # asked, even of a set that is kept whole
        if entry.reason or set_rate == 0:
            continue
        scores = scored.get(r) or [_member_scores(graph, p, criterion, generator) for p in voters]
        kept = _select(scores, n, unit, groups, set_rate, policy, round_to)
        if kept.numel() == 0:
            raise ValueError(f"rate {set_rate} would remove every channel of {', '.join(entry.members)}")
        if kept.numel() < n:
            kept_space[r] = kept.cpu()
            entry.kept = int(kept.numel())

    coverage, frozen = _coverage(graph, set_reason)
    kept = _kept_indices(graph, kept_space)
    rows = _layer_rows(model, graph, kept, set_of, notes, {s.index: s.rate for s in sets})
    asked = float(rate) if isinstance(rate, (int, float)) else dict(rate) if isinstance(rate, dict) else repr(rate)
    named = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", repr(criterion))
    result = Plan(asked, named, policy, round_to, size, sets, kept, rows, warnings, coverage, frozen,
                  params_before, None, macs_before, None, {n: tuple(p.shape) for n, p in model.named_parameters()},
                  _graph=graph, _kept_space=kept_space,
                  _inputs=(example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs))
    result.module_macs = module_macs
    result.output_kept = [None if k is None else k.tolist()
                          for k in (sp.layout_kept(o, kept_space) if o else None for o in graph.outputs)]
    count = counted(model, kept)
    result.macs_scale = None if count is None else {n: list(s) for n, s in count[1].items()}
    if sizes_after:
        result.params_after, result.macs_after = _sizes_after(model, kept, result, count, count_macs)
    result.kept = {n: {d: v.tolist() for d, v in k.items()} for n, k in kept.items()}
    return result


def estimate_macs(plan: Plan) -> int | None:
    """MACs after `plan` without pruning anything: the unpruned network's MACs inside each module that changes,
    scaled by the share of them its rule says the cut leaves (`Plan.macs_scale`; a conv: out * in / groups), the rest
    counted as it was. Exact: FlopCounterMode counts convs and matrix products, and pruning changes only those inside
    the modules it cuts (any other reads channels that are kept). None without a MACs count (count_macs=False or no
    (C, H, W) input); ValueError for a plan whose shares are unknown (a rule without `macs_share`)."""
    if not plan.module_macs:
        return None
    macs = _scaled_macs(plan.module_macs, plan.macs_scale)
    if macs is None:
        raise ValueError("this plan's MACs cannot be counted without cutting: a module's rule has no macs_share "
                         "(or the plan was saved by an older gmlib)")
    return macs


def _scaled_macs(module_macs: dict, scale) -> int | None:
    """The whole network's MACs with each changed module's own scaled by its (kept, of) share; None when a share is
    unknown, or a changed module with MACs sits inside another (its MACs would count twice)."""
    if scale is None:
        return None
    changed = [n for n in scale if module_macs.get(n)]
    if any(b.startswith(a + ".") for a in changed for b in changed):
        return None
    total = module_macs[""]
    for name in changed:
        kept, of = scale[name]
        total += module_macs[name] * kept // of - module_macs[name]
    return int(total)


def _sizes_after(model, kept, result, count, count_macs):
    """(params, MACs) after the plan: counted (gmlib.shrink.counted, `_scaled_macs`); measured on a cut copy only
    where a rule cannot count."""
    macs = _scaled_macs(result.module_macs, result.macs_scale) if result.module_macs else None
    if count is not None and (macs is not None or not result.module_macs):
        return count[0], macs
    twin = copy_as(model)
    apply_kept(twin, kept)
    return tally(twin, result.input_size, count_macs)


def _global_rates(graph, opened, scored, rate, max_rate, criterion):
    """CouplingSet -> rate from one threshold over every open set's per-unit scores (normalised per weight entry for
    l1 / l2): the lowest `rate` share of the channels, counted with their unit sizes."""
    sp, cap = graph.spaces, _valid_rate(max_rate, "max_rate")
    values, weights, owner = [], [], []
    for r, entry, voters in opened:
        if r not in scored:
            continue
        unit, per_entry = sp.unit[r], []
        for p, s in zip(voters, scored[r]):
            weight = getattr(graph.modules.get(p.name), "weight", None)
            entries = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.dim() > 1 else 1
            per_entry.append(s / entries if criterion == "l1" else s / math.sqrt(entries) if criterion == "l2" else s)
        unit_scores = sum(s.view(-1, unit).sum(1) for s in per_entry) / (len(per_entry) * unit)
        values.append(unit_scores.cpu().double())
        weights.append(torch.full((len(unit_scores),), float(unit), dtype=torch.double))
        owner += [entry.index] * len(unit_scores)
    if not values:
        return lambda entry: 0.0
    values, weights, owner = torch.cat(values), torch.cat(weights), torch.tensor(owner)
    order = torch.argsort(values, stable=True)
    pruned = order[: int((torch.cumsum(weights[order], 0) <= rate * weights.sum()).sum())]
    share = {i: 0.0 for i in set(owner.tolist())}
    for i in owner[pruned].tolist():
        share[i] += 1
    sizes = {i: int((owner == i).sum()) for i in share}
    rates = {i: min(share[i] / sizes[i], cap, 1 - 1 / sizes[i]) for i in share}
    return lambda entry: rates.get(entry.index, 0.0)


def _valid_rate(value, what="rate") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1), got {type(value).__name__} {value!r}")
    if not (0 <= value < 1):
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def _rate_rule(model, rate, max_rate):
    """CouplingSet -> its rate, from a float, a {name or glob: rate} dict or a callable; capped by max_rate."""
    cap = 1.0 if max_rate is None else _valid_rate(max_rate, "max_rate")
    if isinstance(rate, dict):
        names = [n for n, _ in model.named_modules() if n]
        entries = [(str(k), _valid_rate(v, f"rate of {k!r}")) for k, v in rate.items()]
        for pattern, _ in entries:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"rate entry {pattern!r} names no module of the model (names look like "
                                 f"{', '.join(names[:3])}, ...; globs such as 'layer3.*' match several)")

        def of(entry):
            for pattern, value in entries:
                if any(fnmatch.fnmatchcase(m, pattern) for m in entry.members):
                    return min(value, cap)
            return 0.0
        return of
    if callable(rate):
        return lambda entry: min(_valid_rate(rate(entry), f"rate({entry.members[0]!r}, ...)"), cap)
    value = min(_valid_rate(rate), cap)
    return lambda entry: value


def _check_arguments(model, criterion, policy, round_to, count_macs, seed):
    if not is_criterion(criterion):
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}, or pass a callable "
                         f"(weight, module, name) -> scores")
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


def _reason_key(reason):
    """A frozen reason without its node and module names, so that reasons of the same kind add up."""
    first = reason.split("; ")[0]
    return re.sub(r" ?'[^']*'", "", re.sub(r" \([^()]*\)$", "", first)).strip()


def _coverage(graph, set_reason):
    """(share of conv output channels in prunable sets, {reason: share} for the rest); (None, {}) without convs."""
    sp, total, prunable, frozen = graph.spaces, 0, 0, {}
    for name, layout in graph.conv_out.items():
        copies = graph.copies.get(name, 1)  # rows per channel, as the block's rule says (SplitAttn: its radix)
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
    kept = {}
    for r, k in kept_space.items():
        for p in sp.producers[r]:  # each producer's rule turns the space's indices into rows of its modules
            if p.part and getattr(p.rule, "splits", False):  # a piece of a split space: rows of all its pieces
                rows = {p.name: sp.layout_kept(graph.conv_out[p.name], kept_space)}
            else:
                rows = p.rule.expand(graph, p, k, sp.size[r])
            for name, idx in rows.items():
                kept.setdefault(name, {})["out"] = idx
    for u in graph.uses:
        k = sp.layout_kept(u.layout, kept_space)
        if k is None:
            continue
        for d in u.dims:
            kept.setdefault(u.module, {})[d] = k
    return kept


def _layer_rows(model, graph, kept, set_of, notes, set_rates):
    rows = []
    for name, m in model.named_modules():
        rule = rule_for(m, "layer")
        row = rule.layer(m) if rule is not None else None  # convs and Linear (gmlib.rules) have a row
        if row is None:
            continue
        kind, cin, cout, unassigned = row
        k = kept.get(name, {})
        parent = name.rsplit(".", 1)[0]
        label = getattr(rule_for(graph.modules.get(parent)), "label", "") if parent != name else ""
        if label:
            kind = f"{label} {kind}"
        coupling = set_of.get(name, set_of.get(parent, -1))
        note = notes.get(name, notes.get(parent, ""))
        if not note and coupling == -1:
            note = unassigned
        nominal = set_rates.get(coupling, 0.0) if coupling >= 0 and not note else 0.0
        rows.append(_row(name, kind, nominal, cin, k.get("in"), cout, k.get("out"), coupling, note))
    return rows


def _row(name, kind, rate, cin, kin, cout, kout, coupling, note):
    return LayerChange(name, kind, float(rate), cin, cin if kin is None else len(kin), cout,
                       cout if kout is None else len(kout), coupling, note)
