"""What a rule is: one object per kind of module that says what the module does to channel spaces, how the channels
it produces are scored, and how a space's kept indices become the rows (and columns) of its modules.

A *space* is a set of channels that must be kept or removed together (gmlib.spaces). A rule's `analyse` receives
the spaces laid along dim 1 of the module's input (its *layout*) and returns the layout of its output, recording on
the way which modules read which spaces (`ctx.read`) and which produce new ones (`ctx.new_space(..., producer)`).
When pruning keeps indices k of a space of n channels (0 <= k < n), each producer's rule turns them into kept output
rows of its modules (`expand`; a conv keeps rows k, a block whose channel j is rows r*n + j of a conv keeps
{r*n + k}), each reader keeps k along its input, `shrink` cuts the module's tensors to those indices and `mask`
zeroes what they drop instead (the masked original that `prune`'s self-check compares with, through `zero_dropped`,
the one way gmlib zeroes a tensor's dropped rows). `shapes_after` and `macs_share` count what `shrink` would leave,
so that a plan can say the params and MACs after without cutting anything.
"""
import importlib

import torch
from torch import nn

from ..criteria import filter_scores

__all__ = ["ModuleRule", "Producer", "Use", "scores_of", "zero_dropped", "counts"]


class Producer(tuple):
    """(kind, name) of a module whose filters are a space's channels, plus the rule that scores and expands them.

    kind "conv": its own rows are the channels and it votes on which to keep; "block": a rule's block that votes
    with scores of its own; "gate" / "follower": loses the channels the space loses but does not vote (a squeeze-
    excite gate's conv, a block's repeated rows). `part` lets one rule tell its producers apart.
    """

    def __new__(cls, kind, name, rule, part=""):
        self = super().__new__(cls, (kind, name))
        self.rule, self.part = rule, part
        return self

    kind = property(lambda self: self[0])
    name = property(lambda self: self[1])

    @property
    def votes(self) -> bool:
        return self.kind in ("conv", "block")

    def as_follower(self):
        """The same producer inside a gate: a conv's filters then follow the channels the gate scales."""
        return Producer("gate", self.name, self.rule, self.part) if self.kind == "conv" else self


class Use:
    """A module that reads channels: `role` says along which dims it keeps a space's indices: "conv_in" and
    "linear_in" (input columns), "norm" and "param" (its per-channel rows), "depthwise" (channel c in is channel
    c out: both). `dims` are those dims' names in a plan's kept indices ("in", "out")."""
    DIMS = {"conv_in": ("in",), "linear_in": ("in",), "depthwise": ("out", "in"), "norm": ("out",),
            "param": ("out",)}

    def __init__(self, module: str, role: str, layout: tuple):
        if role not in self.DIMS:
            raise ValueError(f"unknown role {role!r} of a use of {module!r}; one of {', '.join(self.DIMS)}")
        self.module, self.role, self.layout = module, role, layout

    @property
    def dims(self) -> tuple:
        return self.DIMS[self.role]

    @property
    def reads_inputs(self) -> bool:
        """It sums its input channels (a conv's or Linear's columns): a removed channel's value there counts."""
        return self.dims == ("in",)

    def __repr__(self):
        return f"Use({self.module!r}, {self.role!r}, {self.layout})"


def scores_of(conv: nn.Module, criterion, norm, name, generator, weight=None):
    """Per-filter scores of a conv (its weight's rows, or `weight` given in that layout), as float."""
    w = conv.weight if weight is None else weight
    try:
        return filter_scores(w, criterion, groups=getattr(conv, "groups", 1), bn=norm, generator=generator,
                             module=conv, name=name).float()
    except ValueError as e:
        label = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", repr(criterion))
        raise ValueError(f"cannot score {name!r} with criterion {label!r}: {e}") from e


@torch.no_grad()
def zero_dropped(t: torch.Tensor, dim: int, kept) -> None:
    """Zero, in place, the entries of `t` along `dim` whose index is not in `kept`: the one masking primitive (the
    rules' `mask` and the tensors named by their dotted name, gmlib.shrink.mask_kept)."""
    drop = torch.ones(t.shape[dim], dtype=torch.bool, device=t.device)
    drop[torch.as_tensor(kept, dtype=torch.long, device=t.device)] = False
    t.index_fill_(dim, drop.nonzero().flatten(), 0)


class ModuleRule:
    """How one kind of module treats channels. Subclass it and pass an instance to `gmlib.register_rule`.

    Override `analyse` (required); `scores` and `expand` for the producers the rule creates (the defaults treat
    the producer as a conv whose weight rows are the channels); `shrink` and `mask` when the module's tensors are
    not cut as the built-in rule for its type cuts them, and with `shrink` its counts, `shapes_after` and
    `macs_share` (without them a plan measures a cut copy). `once`: a second call of the same module is refused
    (its channels would have to agree twice); `needs_input`: without a tracked input channel layout the module's
    channels are kept.
    """
    once = True
    needs_input = True
    is_conv = False   # a conv-like producer: the norm right after it is its "bn" criterion's norm
    label = ""        # prefix for the report's layer kind of its sub-modules

    def analyse(self, ctx, name: str, module: nn.Module, layout: tuple):
        """The layout (tuple of space ids) of the module's output, or None; `ctx` is the analysis (gmlib.graph)."""
        raise NotImplementedError

    def scores(self, graph, producer: Producer, criterion: str, generator):
        """(n,) scores of the n channels that `producer` writes (higher is kept)."""
        m = graph.modules[producer.name]
        return scores_of(m, criterion, graph.modules.get(graph.norm_after.get(producer.name)), producer.name,
                         generator)

    def expand(self, graph, producer: Producer, kept, size: int) -> dict:
        """{module name: kept output rows} for kept channel indices `kept` of a space of `size` channels."""
        return {producer.name: kept}

    def shrink(self, module: nn.Module, out=None, in_=None) -> None:
        """Cut `module` in place to output rows `out` and input columns `in_` (LongTensors on its device, or None).
        A user's rule that leaves it out is cut as the built-in rule for its type cuts (gmlib.rules.rule_for)."""
        raise TypeError(f"cannot shrink a {type(module).__name__}")

    def layer(self, module: nn.Module):
        """Its row in a plan's layer table, or None: (kind label, input channels, output channels, the note when no
        coupling set writes its outputs). Convs and Linear have one."""
        return None

    def nonzero(self, module: nn.Module, incoming) -> str:
        """What makes its output non-zero where channels were removed (an op's name), given what makes its input so
        (`incoming`); '' when a removed channel's zeroed rows give zero. A map of each channel alone passes
        `incoming` on."""
        return ""

    def shapes_after(self, module: nn.Module, out=None, in_=None):
        """{name: shape} of the module's own parameters once `shrink` keeps rows `out` and columns `in_` (as it
        would leave them); None: the rule cannot say without cutting (a plan then counts a cut copy)."""
        return None

    def macs_share(self, module: nn.Module, out=None, in_=None):
        """(kept, of): the share kept / of of the multiply-accumulates counted inside the module that `shrink` to
        rows `out` and columns `in_` leaves; None: the rule cannot say (a plan then counts a cut copy)."""
        return None

    @torch.no_grad()
    def mask(self, module: nn.Module, out) -> None:
        """Zero, in place, what keeping only rows `out` drops, so that the masked module computes what the cut one
        does (the self-check's reference). By default: the dropped rows (dim 0) of its weight and bias."""
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            return  # a norm without affine cannot be zeroed: prune's check then finds the difference
        for p in (w, getattr(module, "bias", None)):
            if isinstance(p, torch.Tensor):
                zero_dropped(p, 0, out)


def counts(rule: ModuleRule) -> bool:
    """Whether `rule` counts what its own `shrink` leaves: `shapes_after` and `macs_share` defined by the class that
    defines `shrink`, or by a subclass of it (a rule that changes the cut without the counts cannot be trusted)."""
    mro = type(rule).__mro__
    depth = {name: next(i for i, c in enumerate(mro) if name in c.__dict__)
             for name in ("shrink", "shapes_after", "macs_share")}
    return max(depth["shapes_after"], depth["macs_share"]) <= depth["shrink"] < mro.index(ModuleRule)


class TimmBlock(ModuleRule):
    """A rule for one timm block class (`timm_class` = (module path, class name)), matched by isinstance; timm is
    imported when the rule is first consulted."""
    timm_class = ("", "")

    @property
    def types(self):
        module, name = self.timm_class
        return (getattr(importlib.import_module(module), name),)

    def matches(self, m):
        return isinstance(m, self.types)
