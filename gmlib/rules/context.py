"""The state of one `gmlib.graph.analyse` as the rules see it: the spaces, who reads them, and the node at hand.

Rules call `new_space`, `read`, `freeze`, `constrain`; `unknown` is the safe answer to anything not understood
(every space it touches is kept, and its output opens a fresh frozen space), so a rule never has to guess.
"""
import math

from torch import fx

from .base import Use

__all__ = ["Context", "flat_nodes"]


def flat_nodes(a):
    """fx.Nodes inside (possibly nested) args."""
    out = []
    fx.node.map_arg(a, out.append)
    return out


class Context:
    """Spaces (gmlib.spaces.Spaces), uses, norm_after (conv -> the norm right after it), conv_out (conv -> its
    output layout, for coverage) and copies (conv -> its output rows per channel of that layout where a rule's
    block lays a channel on several rows, 1 elsewhere), warnings, modules by name, each node's shape and layout; `node` and `input` are
    the node being analysed and its (first) tensor input."""

    def __init__(self, spaces, modules, shapes):
        self.sp, self.modules, self.shapes = spaces, modules, shapes
        self.uses, self.norm_after, self.conv_out, self.warnings, self.layout = [], {}, {}, [], {}
        self.copies = {}
        self.node = self.input = None
        self.gate_shapes = {}   # node -> the shape of what `expand_as` spread over space (a gate stays a gate)
        self.stacked = set()    # stack nodes read only by a reduction over the stacked dim
        self.agree = []         # (layout, layout, where): channel counts that must agree (expand_as' donor)
        self.size_of = {}       # shape-derived node -> the spaces whose channel count its value depends on
        self.params = set()     # get_attr nodes that are per-channel scales (gmlib.rules.params): channels on their
        self.param_layout = {}  # own channel dim, not dim 1; tensor name -> its layout (None: refused)

    # ------------------------------------------------------------------ what rules record
    def new_space(self, size, producer=None, frozen=None, groups=1):
        return self.sp.new(size, producer=producer, frozen=frozen, groups=groups)

    def read(self, module: str, role: str, layout):
        self.uses.append(Use(module, role, layout))

    def freeze(self, layout, reason: str):
        self.sp.freeze(layout, reason)

    def constrain(self, space, groups=1, unit=1):
        self.sp.constrain(space, groups=groups, unit=unit)

    # ------------------------------------------------------------------ safe answers
    def fresh(self, node, reason):
        """A new frozen space as wide as `node`'s channels (None when it has no channel dim)."""
        shape = self.shapes.get(node)
        return (self.sp.new(shape[1], frozen=reason),) if shape is not None and len(shape) >= 2 else None

    def unknown(self, node, what, kind="unsupported"):
        """Keep every space `node` reads and give its output a fresh frozen space."""
        ins = [self.layout[a] for a in flat_nodes((node.args, node.kwargs)) if self.layout.get(a)]
        if ins:
            self.warnings.append(f"{kind} {what} at node {node.name!r}: the channels it touches are left unpruned")
        for lay in ins:
            self.sp.freeze(lay, f"feeds {kind} {what} ({node.name})")
        return self.fresh(node, f"output of {kind} {what} ({node.name})")

    def unify(self, a, b, where):
        """Two layouts that meet elementwise: their spaces become one, piece by piece.

        A conv's own output space that meets a concatenation (a gate over `cat`, a residual add) is first split into pieces
        as wide as the concatenated parts; boundaries that still do not line up keep everything involved."""
        sizes = [self.sp.size[s] for s in a], [self.sp.size[s] for s in b]
        if sizes[0] != sizes[1] and len(a) == 1 and self._any_free(b):
            a = self._split(a[0], sizes[1]) or a
        elif sizes[0] != sizes[1] and len(b) == 1 and self._any_free(a):
            b = self._split(b[0], sizes[0]) or b
        if [self.sp.size[s] for s in a] == [self.sp.size[s] for s in b]:
            for x, y in zip(a, b):
                self.sp.union(x, y)
        else:  # cat boundaries that do not line up: keep everything involved
            self.sp.freeze(a + b, f"misaligned channel concatenations meet ({where})")
        return a

    def _any_free(self, layout):
        """Some space of `layout` may still be pruned (else splitting a gate over it would gain nothing)."""
        return any(not self.sp.frozen[self.sp.find(t)] for t in layout)

    def _split(self, s, sizes):
        """Split space `s` into new spaces of `sizes` (None when it cannot be): a space that one or more convs alone
        produce (rows off..off+n of each become the producers of piece (off, n)), not yet unified, without
        constraints. Exact: conv rows are independent filters, so y = W x with W = [W_1; W_2] is cat(W_1 x, W_2 x),
        and removing row r of piece i is removing row off_i + r of W (a gate over `cat`, GhostNet's and MixNet's
        residual streams that meet a concatenation)."""
        sp = self.sp
        prods = sp.producers[s]
        if len(sizes) < 2 or sum(sizes) != sp.size[s] or sp.find(s) != s or sp.groups[s] != 1 or sp.unit[s] != 1 \
                or not prods or any(not getattr(p.rule, "splits", False) or p.part for p in prods) \
                or any(sp.find(j) == s for j in range(len(sp.parent)) if j != s):
            return None
        pieces, offset = [], 0
        for n in sizes:
            q = sp.new(n)
            sp.producers[q] = [type(p)(p.kind, p.name, p.rule, (offset, n)) for p in prods]
            sp.frozen[q] = list(sp.frozen[s])
            pieces.append(q)
            offset += n
        sp.producers[s], sp.frozen[s] = [], ["split into pieces"]
        self._replace(s, tuple(pieces))
        return tuple(pieces)

    def _replace(self, s, pieces):
        """Put `pieces` where space `s` was, in every layout recorded so far (shared layouts stay shared)."""
        memo = {}

        def sub(lay):
            if not lay or s not in lay:
                return lay
            if id(lay) not in memo:
                memo[id(lay)] = (lay, tuple(q for t in lay for q in (pieces if t == s else (t,))))
            return memo[id(lay)][1]

        for d in (self.layout, self.conv_out, self.size_of):
            for k, v in d.items():
                d[k] = sub(v)
        for u in self.uses:
            u.layout = sub(u.layout)
        self.agree = [(sub(a), sub(b), w) for a, b, w in self.agree]

    def single(self, lay, node, reason):
        """The one space of `lay`, or None after freezing a multi-space layout that cannot carry `reason`."""
        if len(lay) == 1:
            return lay[0]
        self.sp.freeze(lay, f"{reason} over concatenated channels ({node.name})")
        return None

    def spatial_one(self, x):
        """`x` is (N, C, 1, ..., 1)."""
        shape = self.shapes.get(x) if isinstance(x, fx.Node) else None
        return shape is not None and math.prod(shape[2:]) == 1
