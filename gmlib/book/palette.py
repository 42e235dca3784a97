"""One colour per pruning criterion and one per residual policy across the book, so that a colour means the same
thing in every figure of every chapter (from seaborn's colour-blind palette; random is grey: it is the control)."""
from ..criteria import CRITERIA
from ..planning import POLICIES

__all__ = ["CRITERION_COLOURS", "CONTROL_COLOURS", "POLICY_COLOURS", "colours"]

CRITERION_COLOURS = {"fpgm": "#0173b2", "fpgm-sum": "#56b4e9", "l1": "#de8f05", "l2": "#cc78bc", "bn": "#029e73",
                     "random": "#949494"}
CONTROL_COLOURS = {"scratch": "#3b3b3b"}  # the same architecture trained from random init (chapter 07)
POLICY_COLOURS = {"or-merge": "#d55e00", "coupled": "#6a3d9a", "unpruned": "#000000"}
assert set(CRITERION_COLOURS) == set(CRITERIA) and set(POLICIES) <= set(POLICY_COLOURS)


def colours(names) -> dict:
    """The palette for these criteria or policies (a seaborn `palette=` or a colour per line), in their order."""
    table = {**CRITERION_COLOURS, **CONTROL_COLOURS, **POLICY_COLOURS}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"no book colour for {unknown}; criteria: {', '.join(CRITERION_COLOURS)}; "
                         f"controls: {', '.join(CONTROL_COLOURS)}; policies: {', '.join(POLICY_COLOURS)}")
    return {n: table[n] for n in names}
