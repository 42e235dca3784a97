"""gmlib: geometric-median filter pruning (FPGM) that works on real segmentation networks.

Dependency direction: median -> criteria -> graph/surgery -> schedule; data, models, metrics, train beside them.
"""
import warnings

# timm imports huggingface_hub, which imports tqdm.auto; without ipywidgets that warns in every notebook. Our
# progress bars fall back to text, which is what we want for papermill logs and nbval.
warnings.filterwarnings("ignore", message="IProgress not found")

from .median import geometric_median, distance_sums
from .criteria import CRITERIA, filter_scores, select_filters
from .complexity import count
from .surgery import prune, PruneReport
from .persist import save_pruned, load_pruned
from .utils import set_deterministic, default_device
from . import models, data, metrics, train

__all__ = [
    "geometric_median", "distance_sums",
    "CRITERIA", "filter_scores", "select_filters",
    "count", "prune", "PruneReport", "save_pruned", "load_pruned",
    "set_deterministic", "default_device",
    "models", "data", "metrics", "train",
]
__version__ = "0.1.0"
