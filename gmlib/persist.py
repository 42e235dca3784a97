"""Save and load a pruned network without pickling code: state_dict tensors plus a JSON manifest.

Step 9 of 9, one filter from its score to its removal (README, Layout): the removal remembered and saved (the kept
indices beside the weights).

Manifest = how to build the unpruned architecture (a gmlib.models name, "timm:<name>", "smp:<Arch>:<encoder>", or
nothing for a callable builder that the loader passes again), num_classes and the kept channel indices of every
changed module; loading rebuilds the architecture, re-applies the indices (gmlib.shrink.apply_kept), loads weights.
"""
import json
import os

import torch
from torch import nn

from . import models
from .shrink import apply_kept, kept_of, remember
from .utils import atomic_open

__all__ = ["save_pruned", "load_pruned"]

FORMAT = "gmlib.pruned/1"


def _num_classes(model):
    if isinstance(model, models.FPN):
        return model.head.out_channels
    head = getattr(model, "segmentation_head", None)  # segmentation_models_pytorch
    if head is not None:
        return next(m.out_channels for m in head.modules() if isinstance(m, nn.Conv2d))
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int):
        raise ValueError("cannot tell num_classes of this model: pass num_classes=")
    return n


def _unpruned(builder, num_classes):
    """The unpruned architecture from a builder: a callable (called without arguments), a gmlib.models name,
    "timm:<name>" or "smp:<Arch>:<encoder>" (random init; nothing is downloaded)."""
    if callable(builder):
        return builder()
    if not isinstance(builder, str):
        raise TypeError(f"builder must be a callable or a string, got {type(builder).__name__}")
    kind, _, rest = builder.partition(":")
    if builder in models.NAMES:
        return models.create(builder, num_classes=num_classes)
    if kind == "timm" and rest:
        import timm
        return timm.create_model(rest, pretrained=False, num_classes=num_classes)
    if kind == "smp" and rest.count(":") == 1:
        import segmentation_models_pytorch as smp
        arch, encoder = rest.split(":")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
    raise ValueError(f"unknown builder {builder!r}: a gmlib.models name ({', '.join(models.NAMES)}), "
                     f"'timm:<model name>', 'smp:<Arch>:<encoder>' or a callable")


def _build(builder, num_classes, kept):
    model = _unpruned(builder, num_classes)
    apply_kept(model, kept)
    remember(model, kept)
    model._gmlib_arch = builder if isinstance(builder, str) else None
    model._gmlib_builder = builder
    return model


def save_pruned(model: nn.Module, path, *, arch: str | None = None, builder=None, num_classes: int | None = None,
                metadata: dict | None = None) -> None:
    """Write `model` (pruned by gmlib.prune, or not pruned at all) to `path`, atomically (temp file + rename).

    How to rebuild it: `arch`, a gmlib.models name (default: the one it was created or loaded with), or `builder`:
    "timm:<name>", "smp:<Arch>:<encoder>" or a callable returning the unpruned model (not stored: pass it to
    load_pruned again). `num_classes` is read from the model when not given. `metadata` (a JSON-serialisable dict)
    travels in the manifest; load_pruned(with_metadata=True) returns it. The manifest is checked by rebuilding the
    architecture before anything is written: a builder that does not give this model's layers is an error.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if arch is not None and builder is not None:
        raise ValueError("pass arch= or builder=, not both")
    if arch is not None and arch not in models.NAMES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(models.NAMES)}")
    builder = arch if arch is not None else builder if builder is not None else \
        getattr(model, "_gmlib_builder", None) or getattr(model, "_gmlib_arch", None)
    if builder is None:
        raise ValueError("pass arch= (a gmlib.models name) or builder= ('timm:<name>', 'smp:<Arch>:<encoder>' or a "
                         "callable) to say how to rebuild this model")
    num_classes = None if callable(builder) else _num_classes(model) if num_classes is None else num_classes
    kept = kept_of(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    label = builder if isinstance(builder, str) else getattr(builder, "__name__", "the builder")
    try:
        want = _build(builder, num_classes, kept).state_dict()
    except (TypeError, ValueError) as e:
        if "unknown builder" in str(e):
            raise
        raise ValueError(f"the model's pruning manifest does not fit {label!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a builder that fails or a manifest that does not fit: say which
        raise ValueError(f"the model's pruning manifest does not fit {label!r}: {type(e).__name__}: {e}") from e
    bad = sorted(set(want) ^ set(state)) or [k for k in want if want[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"model does not match {label!r} with num_classes={num_classes} and its kept "
                         f"indices (first mismatch: {bad[0]!r})")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        manifest = json.dumps({"format": FORMAT, "arch": builder if isinstance(builder, str) else None,
                               "num_classes": num_classes, "kept": kept, "metadata": metadata or {}}, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata is not JSON-serialisable: {e}") from e
    with atomic_open(path) as f:
        torch.save({"manifest": manifest, "state_dict": state}, f)


def load_pruned(path, map_location="cpu", *, builder=None, with_metadata: bool = False):
    """Rebuild the network saved by save_pruned (weights_only load: no code is unpickled); returned in eval mode.

    `builder`: the callable it was saved with (a saved builder string is used otherwise). With `with_metadata`,
    returns (model, metadata dict) instead of the model alone.
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
    builder = builder if builder is not None else manifest.get("arch")
    if builder is None:
        raise ValueError(f"{path!r} was saved with a callable builder: pass it again, load_pruned(path, builder=...)")
    model = _build(builder, manifest["num_classes"], manifest["kept"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the builder does not rebuild the network saved in {path!r}: {str(e)[:300]}") from e
    model = model.to(next(iter(state.values())).device if state else "cpu").eval()
    return (model, manifest.get("metadata", {})) if with_metadata else model
