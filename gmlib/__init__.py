"""gmlib: geometric-median filter pruning (FPGM) that works on real segmentation networks.

Dependency direction: median -> criteria -> layers -> rules (one object per kind of module; `register_rule` adds
yours) -> graph -> planning (`plan`: what prune would do) -> surgery (`apply`, `prune`; check judges the cut
network) -> persist -> schedule (the prune -> fine-tune -> evaluate loop; recalibrate re-estimates norm statistics
after pruning); store (the committed results store); verify (a by-value check of any pruning, judged by check) and
zoo (the CNN families of chapter 09) on surgery; export (ONNX, int8) and latency (side-by-side timing) for
deployment; data, models, metrics, train beside them; study (the chapters' shared set-up), sweeps (chapter 07's
grids), compression (chapter 03's stored tables) and deployment (chapter 10's) on top; palette, diagram and tables
(the book's colours, drawings and column names) beside them.
The real-data arm: pretrained (weight files checked by sha256), data.elpv (the ELPV solar cells), classify (a
classifier's training and scores) beside train; elpv (its stored experiments) and elpv_tables (chapter 13's tables)
on top.
"""
import warnings

# timm imports huggingface_hub, which imports tqdm.auto; without ipywidgets that warns in every notebook. Our
# progress bars fall back to text, which is what we want for papermill logs and nbval.
warnings.filterwarnings("ignore", message="IProgress not found")

from .median import geometric_median, distance_sums
from .criteria import CRITERIA, filter_scores, select_filters
from .complexity import count
from .surgery import prune, apply, plan, Plan, CouplingSet, PruneReport, NotExactError
from . import planning
from .allocation import allocate, Allocation
from .rules import register_rule
from . import rules
from .persist import save_pruned, load_pruned
from .schedule import one_shot, iterative
from .recalibrate import recalibrate_bn
from .store import Store
from .utils import set_deterministic, default_device, environment
from . import models, data, metrics, train, verify, zoo, export, latency, distributed
from . import palette, diagram, tables
from . import pretrained, classify, elpv
from .study import Study
from .recipe import compress, CompressReport  # the recipe for any network: gmlib.recipe, gmlib.card, python -m gmlib

__all__ = [
    "geometric_median", "distance_sums",
    "CRITERIA", "filter_scores", "select_filters",
    "count", "prune", "plan", "apply", "allocate", "Allocation", "Plan", "CouplingSet", "PruneReport", "register_rule", "rules", "save_pruned", "load_pruned",
    "NotExactError",
    "one_shot", "iterative", "recalibrate_bn", "Study", "Store",
    "set_deterministic", "default_device", "environment",
    "models", "data", "metrics", "train", "verify", "zoo", "export", "latency", "distributed",
    "palette", "diagram", "tables", "pretrained", "classify", "elpv",
]
__all__ += ["compress", "CompressReport"]
__version__ = "0.1.0"
