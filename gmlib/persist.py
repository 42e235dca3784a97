"""Save and load a pruned network without pickling code: state_dict tensors plus a JSON manifest.

Manifest = architecture name (as given to gmlib.models.create), num_classes and the kept channel indices of every
changed module; loading rebuilds the architecture, re-applies the indices (gmlib.surgery.apply_kept), loads weights.
"""
import json
import os

import torch
from torch import nn

from . import models
from .surgery import apply_kept
from .utils import atomic_open

__all__ = ["save_pruned", "load_pruned"]

FORMAT = "gmlib.pruned/1"


def _num_classes(model):
    if isinstance(model, models.FPN):
        return model.head.out_channels
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int):
        raise ValueError("cannot tell num_classes of this model: pass num_classes=")
    return n


def _build(arch, num_classes, kept):
    model = models.create(arch, num_classes=num_classes)
    apply_kept(model, kept)
    model._gmlib_kept, model._gmlib_arch = kept, arch
    return model


def save_pruned(model: nn.Module, path, *, arch: str | None = None, num_classes: int | None = None,
                metadata: dict | None = None) -> None:
    """Write `model` (pruned by gmlib.prune, or not pruned at all) to `path`, atomically (temp file + rename).

    `arch` defaults to the name recorded by load_pruned; `num_classes` is read from the model when not given.
    `metadata` (a JSON-serialisable dict: settings, scores) travels in the manifest; load_pruned(with_metadata=True)
    returns it. The manifest is checked by rebuilding the architecture before anything is written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    arch = arch if arch is not None else getattr(model, "_gmlib_arch", None)
    if arch is None:
        raise ValueError("pass arch=, the gmlib.models name this model was created with")
    if arch not in models.NAMES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(models.NAMES)}")
    num_classes = _num_classes(model) if num_classes is None else num_classes
    kept = getattr(model, "_gmlib_kept", None) or {}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        want = _build(arch, num_classes, kept).state_dict()
    except Exception as e:
        raise ValueError(f"the model's pruning manifest does not fit arch {arch!r}: {e}") from e
    bad = sorted(set(want) ^ set(state)) or [k for k in want if want[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"model does not match arch {arch!r} with num_classes={num_classes} and its kept "
                         f"indices (first mismatch: {bad[0]!r})")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        manifest = json.dumps({"format": FORMAT, "arch": arch, "num_classes": num_classes, "kept": kept,
                               "metadata": metadata or {}}, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata is not JSON-serialisable: {e}") from e
    with atomic_open(path) as f:
        torch.save({"manifest": manifest, "state_dict": state}, f)


def load_pruned(path, map_location="cpu", *, with_metadata: bool = False):
    """Rebuild the network saved by save_pruned (weights_only load: no code is unpickled); returned in eval mode.

    With `with_metadata`, returns (model, metadata dict) instead of the model alone.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path!r}")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        manifest = json.loads(blob["manifest"])
        state = blob["state_dict"]
    except Exception as e:
        raise ValueError(f"{path!r} is not a gmlib.save_pruned file: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    model = _build(manifest["arch"], manifest["num_classes"], manifest["kept"])
    model.load_state_dict(state)
    model = model.to(next(iter(state.values())).device if state else "cpu").eval()
    return (model, manifest.get("metadata", {})) if with_metadata else model
