"""Layer surgery: shrink the modules of a Plan in place, check the result, and undo everything on any failure.

Step 5 of 9, one filter from its score to its removal (README, Layout): the plan applied, all or nothing: cut,
checked, or put back.

`prune(model, x, rate, ...)` = `apply(model, plan(model, x, rate, ...))`. For each channel space of `gmlib.graph`
(a set of convs whose outputs meet at residual adds): "or-merge" keeps channel c if any member conv keeps it (NNI 2.x
speedup); "coupled" selects once on the members' normalised scores summed (gmlib.planning). Producers lose rows,
consumers lose input columns; module names and hyper-parameters stay.
"""
import warnings as _warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .check import Check, NotExactError
from .complexity import tally
from .planning import POLICIES, CouplingSet, LayerChange, Plan, layers_frame, plan, summary_line
from .shrink import apply_kept, kept_of, mask_kept, mask_pruned, remember, shrink_module
from .transaction import Snapshot, guard

__all__ = ["prune", "apply", "plan", "Plan", "CouplingSet", "PruneReport", "LayerChange", "POLICIES", "shrink_module",
           "apply_kept", "mask_pruned", "mask_kept", "NotExactError"]


@dataclass(repr=False)
class PruneReport:
    """What `prune` did: the Plan it carried out, plus what was measured after it.

    The plan's rate, criterion, policy, input_size, per-layer widths (`layers`), params_before, warnings, coverage
    and frozen shares read through; `macs_before` is None where MACs were not counted. `kept[name] = {"out": [...],
    "in": [...]}` are the surviving channel indices of the *original* (unpruned) module along its output and input
    dims, for every module that changed (after earlier prunes too); `save_pruned` stores them.
    """
    plan: Plan
    params_after: int | None
    macs_before: int | None
    macs_after: int | None
    kept: dict = field(default_factory=dict)

    rate = property(lambda self: self.plan.rate)
    criterion = property(lambda self: self.plan.criterion)
    policy = property(lambda self: self.plan.policy)
    input_size = property(lambda self: self.plan.input_size)
    layers = property(lambda self: self.plan.layers)
    params_before = property(lambda self: self.plan.params_before)
    warnings = property(lambda self: self.plan.warnings)
    coverage = property(lambda self: self.plan.coverage)  # share of conv output channels in prunable coupling sets
    frozen = property(lambda self: self.plan.frozen)  # why the rest is kept: reason -> share of conv output channels
    frozen_reason = property(lambda self: self.plan.frozen_reason)  # the largest frozen share and its reason

    @property
    def params_reduction(self) -> float:
        """Percent of parameters removed."""
        return 100.0 * (1 - self.params_after / self.params_before)

    @property
    def macs_reduction(self) -> float:
        """Percent of multiply-accumulates removed (at `input_size`)."""
        return 100.0 * (1 - self.macs_after / self.macs_before) if self.macs_before else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return layers_frame(self.layers)

    def summary(self) -> str:
        return summary_line("prune", self.plan, self.params_after, self.macs_before, self.macs_after)

    def __str__(self):
        df = self.to_frame()
        df["sparsity"] = df["sparsity"].map(lambda v: f"{100 * v:.1f}%")
        lines = [self.summary(), df.to_string(index=False)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    __repr__ = __str__


# ----------------------------------------------------------------------------------------------------- prune

def prune(model: nn.Module, example_inputs, rate, *, criterion: str = "fpgm", policy: str = "or-merge",
          ignored_layers=(), round_to: int = 1, count_macs: bool = True, seed: int = 0, max_rate: float | None = None,
          global_ranking: bool = False, keep_head: bool = True, verify: bool = True) -> PruneReport:
    """Physically remove `rate` of every Conv2d's output filters, in place, and propagate to all consumers.

    Convs whose outputs reach the model output (unless `keep_head=False`) and `ignored_layers` (names or modules;
    their output channels are kept, their inputs still follow upstream pruning) are left. Returns a PruneReport: params always, MACs counted
    with gmlib.count at the example input's (C, H, W) unless `count_macs=False` (skips its two forward passes).
    Channels an unsupported op touches are kept (see warnings). `seed` draws the scores of criterion "random" (one
    generator for the whole call, so every layer gets its own draw); the other criteria ignore it. `rate` may also
    be given per coupling set, as a {module name or glob: rate} dict or a callable on the set (see `gmlib.plan`),
    and `max_rate` caps every set's; `global_ranking` ranks the filters of the whole network at once (see
    `gmlib.plan`). `criterion` may be a callable (weight, module, name) -> one score per filter
    (higher is kept); `gmlib.criteria` has the built-ins in that form and `criteria.taylor`, a data-driven one.

    All or nothing: with `verify` (the default) the pruned network is checked, in float64 on `example_inputs`, in
    eval and (where it runs in it) train mode, against the original with the removed channels zeroed; if they differ
    beyond rounding, NotExactError names the first module where the outputs part. On that or any other error the
    model is left exactly as it was (same Parameter objects, buffers, modes). `verify=False` skips the check (it
    costs a float64 copy of the model and four forward passes). A prune that removes nothing, or under half the
    asked rate of the parameters, warns with the largest frozen share's reason.

    The same in two steps: `p = gmlib.plan(model, x, rate, ...)` (what would change; the model untouched), then
    `gmlib.apply(model, p)`.
    """
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    planned = plan(model, example_inputs, rate, criterion=criterion, policy=policy, ignored_layers=ignored_layers,
                   round_to=round_to, count_macs=count_macs, seed=seed, max_rate=max_rate,
                   global_ranking=global_ranking, keep_head=keep_head, sizes_after=False)
    return apply(model, planned, verify=verify, count_macs=count_macs, stacklevel=3)


def apply(model: nn.Module, plan: Plan, *, verify: bool = True, example_inputs=None, count_macs: bool = True,
          stacklevel: int = 2) -> PruneReport:
    """Perform `plan` on `model` (the network it was made for, unchanged since), in place; a PruneReport.

    All or nothing, as `prune`: with `verify` the result is checked against the masked original on the plan's
    example inputs (pass `example_inputs` for a plan read back from JSON), and any error leaves the model as it was.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a gmlib.Plan (from gmlib.plan), got {type(plan).__name__}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    plan.check_fits(model)
    inputs = plan.example_inputs if example_inputs is None else \
        ((example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs))
    if verify and plan.kept and inputs is None:
        raise ValueError("this plan was read back without its example inputs: pass example_inputs= to verify, "
                         "or verify=False")
    kept = {n: {d: torch.as_tensor(v, dtype=torch.long) for d, v in k.items()} for n, k in plan.kept.items()}
    size = plan.input_size
    macs_before = plan.macs_before if count_macs else None
    snapshot = Snapshot(model, kept)
    try:
        with guard(model):  # the checks and counts run forwards: what they write on the model is put back
            check = Check(model, inputs, kept, plan.output_kept) if verify and kept else None
        apply_kept(model, kept)
        with guard(model):
            failure = check.failure(model) if check else None
            after = None if failure else tally(model, size, macs_before is not None)
        if failure:
            snapshot.restore()
            where = check.first_difference(failure[0], plan.output_channels)
            raise NotExactError(
                f"pruning {type(model).__name__} at rate {plan.rate!r} would change what it computes: in {failure[0]} "
                f"mode its output differs from the original with the removed channels zeroed by {failure[1]:.1e} "
                f"(relative, {str(check.dtype).replace('torch.', '')}); the outputs first part at module {where}. "
                f"The model is left as it was; verify=False skips this check")
        remember(model, {n: {d: v.tolist() for d, v in k.items()} for n, k in kept.items()})
    except BaseException:
        snapshot.restore()
        raise
    report = PruneReport(plan, after[0], macs_before, after[1],
                         {n: {d: list(v) for d, v in k.items()} for n, k in kept_of(model).items()})
    asked = plan.rate if isinstance(plan.rate, float) else max((c.rate for c in plan.sets), default=0.0)
    if asked > 0 and report.params_reduction < 50 * asked:
        _warnings.warn(f"prune cut {report.params_reduction:.1f}% of the parameters at rate {plan.rate!r}: "
                       f"{report.frozen_reason or 'or-merge keeps a channel that any conv sharing it keeps'}",
                       stacklevel=stacklevel)
    return report
