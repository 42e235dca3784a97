"""Draw defect masks over a steel strip: the image in grey, each class as a tinted fill with a coloured outline."""
import numpy as np

from .labels import CLASS_NAMES

__all__ = ["CLASS_COLORS", "show_masks"]

CLASS_COLORS = {1: "#e41a1c", 2: "#4daf4a", 3: "#377eb8", 4: "#ff7f00"}  # pit, edge crack, scratches, scale


def show_masks(ax, image, mask, title=None, alpha=0.25, legend=False, pred=None):
    """image: (3, H, W) / (H, W) in [0, 1] or uint8; mask: (4, H, W) 0/1 (numpy or torch). Draws on `ax`.

    `pred`, a second (4, H, W) 0/1 mask (a prediction), is drawn as dashed outlines in the same colours.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    image, mask = (np.asarray(x.detach().cpu() if hasattr(x, "detach") else x) for x in (image, mask))
    grey = image[0] if image.ndim == 3 else image
    grey = grey / 255.0 if grey.dtype == np.uint8 else grey
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    tint = np.zeros((*grey.shape, 4))  # RGBA overlay: a translucent fill per class
    for c, color in CLASS_COLORS.items():
        if mask[c - 1].any():
            tint[mask[c - 1] > 0] = (*to_rgb(color), alpha)
            ax.contour(mask[c - 1], levels=[0.5], colors=[color], linewidths=0.8)
    ax.imshow(tint, interpolation="nearest")
    if pred is not None:
        pred = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
        for c, color in CLASS_COLORS.items():
            if pred[c - 1].any():
                ax.contour(pred[c - 1], levels=[0.5], colors=[color], linewidths=1.2, linestyles="--")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    if legend:
        from matplotlib.lines import Line2D
        handles = [Patch(color=CLASS_COLORS[c], label=f"{c} {n}") for c, n in CLASS_NAMES.items()]
        if pred is not None:
            handles.append(Line2D([], [], color="0.3", linestyle="--", label="prediction"))
        ax.legend(handles=handles,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
