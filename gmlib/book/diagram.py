"""Drawings for the book: a coupling set as a picture. Its producers write one channel space and its consumers read
it, so channel c is cut from every producer's filters and every consumer's inputs at once, or from none."""
import matplotlib.pyplot as plt

from .palette import POLICY_COLOURS

__all__ = ["coupling_set"]


def _heights(k: int, n: int) -> list:
    """k evenly spaced heights over the n rows of the drawing, top to bottom."""
    return [(n - 1) / 2] if k == 1 else [(n - 1) * (1 - i / (k - 1)) for i in range(k)]


def coupling_set(group, ax=None, title: str | None = None):
    """Draw `group` (a `gmlib.graph.ChannelGroup`): producers on the left, the shared channels in the middle (with
    its constraints), consumers on the right, an arrow for every write and read. Returns the axes."""
    producers, consumers = list(group.producers), list(group.consumers)
    if not producers:
        raise ValueError("the coupling set has no producers: nothing to draw")
    n = max(len(producers), len(consumers))
    if ax is None:
        ax = plt.subplots(figsize=(10, 0.5 * n + 1.4))[1]
    middle = (n - 1) / 2
    box = dict(boxstyle="round,pad=0.35", fc="white", ec="0.35")
    rules = [f"groups={group.groups}"] * (group.groups > 1) + [f"unit={group.unit}"] * (group.unit > 1)
    rules += [f"frozen: {group.frozen}"] * bool(group.frozen)
    space = f"{group.size} channels\neach kept or cut in all" + "".join(f"\n{r}" for r in rules)
    ax.text(0.5, middle, space, ha="center", va="center", fontsize=10,
            bbox=dict(boxstyle="round,pad=0.5", fc=POLICY_COLOURS["coupled"], ec="none", alpha=0.18))
    arrow = dict(arrowstyle="->", color="0.45", lw=1, shrinkA=2, shrinkB=6)
    for name, y in zip(producers, _heights(len(producers), n)):
        ax.text(0.22, y, name, ha="right", va="center", fontsize=9, family="monospace", bbox=box)
        ax.annotate("", xy=(0.35, middle), xytext=(0.23, y), arrowprops=arrow)
    for name, y in zip(consumers, _heights(len(consumers), n)):
        ax.text(0.78, y, name, ha="left", va="center", fontsize=9, family="monospace", bbox=box)
        ax.annotate("", xy=(0.77, y), xytext=(0.65, middle), arrowprops=arrow)
    ax.text(0.22, n - 0.2, "write the channels (filters)", ha="right", fontsize=9, style="italic")
    ax.text(0.78, n - 0.2, "read them (input columns, norms)", ha="left", fontsize=9, style="italic")
    ax.set(xlim=(-0.25, 1.25), ylim=(-0.7, n + 0.2), title=title or "")
    ax.axis("off")
    return ax
