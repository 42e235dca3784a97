"""gmlib: geometric-median filter pruning (FPGM) that works on real segmentation networks.

Three parts, each depending only on the ones before it:
- the engine: median -> criteria -> layers -> rules (one object per kind of module; `register_rule` adds yours) ->
  graph -> planning (`plan`: what prune would do) -> surgery (`apply`, `prune`; check judges the cut network) ->
  persist; verify (a by-value check of any pruning) and zoo (chapter 09's CNN families) on surgery;
- the recipe: data, models, builders, folders, metrics, train, tasks, classify, recalibrate, allocation, schedule
  (the prune -> fine-tune -> evaluate loop), export (ONNX, int8), latency, distributed, pretrained (weight files
  checked by sha256), store (the committed results store), verdicts (the one decision rule), and recipe.compress
  with card (any network, one call; `python -m gmlib compress`);
- gmlib.book: the study the chapters run (Study, sweeps, findings, the real-data arm, the book's palette and
  drawings). Its public names are reachable from here (`gmlib.Study`, `gmlib.palette`, ...) but imported only
  when asked for, so the library never loads the book.
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
from . import pretrained, classify
from .recipe import compress, CompressReport  # the recipe for any network: gmlib.recipe, gmlib.card, python -m gmlib

__all__ = [
    "geometric_median", "distance_sums", "CRITERIA", "filter_scores", "select_filters", "count",
    "prune", "plan", "apply", "Plan", "CouplingSet", "PruneReport", "NotExactError", "register_rule", "rules",
    "planning", "save_pruned", "load_pruned",
    "allocate", "Allocation", "one_shot", "iterative", "recalibrate_bn", "compress", "CompressReport", "Store",
    "set_deterministic", "default_device", "environment",
    "models", "data", "metrics", "train", "verify", "zoo", "export", "latency", "distributed", "pretrained",
    "classify",
]  # the book's names (Study, palette, ...) stay out, so `from gmlib import *` does not load the book
__version__ = "0.1.0"

# The book's names, loaded from gmlib.book on first use (PEP 562): `gmlib.Study`, `from gmlib import findings`.
_BOOK_MODULES = ("study", "sweeps", "findings", "tables", "palette", "diagram", "compression", "deployment",
                 "conclusions", "elpv", "elpv_tables", "exercises", "unstructured")


def __getattr__(name):
    import importlib
    if name == "Study":
        return importlib.import_module(".book.study", __name__).Study
    if name == "book":
        return importlib.import_module(".book", __name__)
    if name in _BOOK_MODULES:
        return importlib.import_module(f".book.{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
