"""Networks named by a builder string, and the checkpoint files that fill them.

A builder string is a gmlib.models name, "timm:<name>", "smp:<Arch>:<encoder>" or "torchvision:<name>"; `build`
gives the unpruned network with random weights (nothing is downloaded), `load_weights` fills it from a checkpoint
and, when the file does not fit, says which keys and shapes differ. `persist_builder` is what save_pruned stores.
"""
import functools
import importlib
from pathlib import Path

import torch
from torch import nn

from . import models

__all__ = ["KINDS", "build", "load_weights", "read_state_dict", "persist_builder", "from_checkpoint"]

KINDS = ("a gmlib.models name", "timm:<name>", "smp:<Arch>:<encoder>", "torchvision:<name>")
STATE_KEYS = ("state_dict", "model_state_dict", "model")  # where checkpoints written by trainers keep the weights


def _need(module: str, builder: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"builder {builder!r} needs the package {module}; install it first") from None


def _unknown(builder, why: str) -> ValueError:
    return ValueError(f"unknown builder {builder!r}: {why}; a builder is {', '.join(KINDS)} "
                      f"(gmlib.models names: {', '.join(models.NAMES)})")


def _create(builder: str, num_classes: int) -> nn.Module:
    kind, _, rest = builder.partition(":")
    if builder in models.NAMES:
        return models.create(builder, num_classes=num_classes)
    if kind == "timm" and rest:
        timm = _need("timm", builder)
        if not timm.is_model(rest):
            raise _unknown(builder, f"timm has no model {rest!r}")
        return timm.create_model(rest, pretrained=False, num_classes=num_classes)
    if kind == "smp" and rest.count(":") == 1:
        smp = _need("segmentation_models_pytorch", builder)
        arch, encoder = rest.split(":")
        if not isinstance(getattr(smp, arch, None), type):
            raise _unknown(builder, f"segmentation_models_pytorch has no architecture {arch!r}")
        if encoder not in smp.encoders.get_encoder_names():
            raise _unknown(builder, f"segmentation_models_pytorch has no encoder {encoder!r}")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
    if kind == "torchvision" and rest:
        tv = _need("torchvision", builder)
        if rest not in tv.models.list_models(module=tv.models):
            raise _unknown(builder, f"torchvision has no classification model {rest!r}")
        return tv.models.get_model(rest, weights=None, num_classes=num_classes)
    raise _unknown(builder, "not one of the known forms")


def build(builder: str, num_classes: int) -> nn.Module:
    """The unpruned network `builder` names, with `num_classes` outputs and random weights; it remembers the
    builder (save_pruned reads it). ValueError naming the builder when it is not one of KINDS."""
    if not isinstance(builder, str):
        raise TypeError(f"builder must be a string ({', '.join(KINDS)}), got {type(builder).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    model = _create(builder, num_classes)
    model._gmlib_builder = persist_builder(builder, num_classes)
    model._gmlib_spec = builder  # the string itself, for cards and load_compressed
    return model


def persist_builder(builder: str, num_classes: int):
    """What save_pruned / load_pruned take for `builder`: the string where gmlib.persist rebuilds it itself (gmlib
    names, timm, smp), otherwise a callable that builds it (torchvision, which persist does not know)."""
    if builder.startswith("torchvision:"):
        return functools.partial(_create, builder, num_classes)
    return builder


def read_state_dict(path) -> dict:
    """The tensors of checkpoint `path`: a state_dict, or one kept under "state_dict", "model_state_dict" or
    "model" (a "module." prefix from DataParallel is dropped). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {str(path)!r}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a foreign or truncated file: say which
        raise ValueError(f"weights {str(path)!r} is not a PyTorch checkpoint: {type(e).__name__}: "
                         f"{str(e)[:200]}") from e
    if isinstance(blob, dict) and "manifest" in blob:
        raise ValueError(f"weights {str(path)!r} is a pruned network (gmlib.save_pruned): load it with "
                         f"gmlib.load_pruned and pass the model itself")
    state = next((blob[k] for k in STATE_KEYS if isinstance(blob, dict) and isinstance(blob.get(k), dict)), blob)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {str(path)!r} holds no state_dict (a dict of tensors, itself or under one of "
                         f"{', '.join(STATE_KEYS)})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path, *, label: str | None = None) -> nn.Module:
    """Load checkpoint `path` into `model` (in place; returned). When it does not fit, ValueError naming the file,
    `label` (the builder) and the keys missing, unexpected and of another shape; the model is then unchanged."""
    state = read_state_dict(path)
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(want[k].shape)} in the model"
              for k in want if k in state and state[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (first: {', '.join(v[:3])})"
                 for what, v in (("keys missing", missing), ("unexpected keys", unexpected),
                                 ("shapes differ", shapes)) if v]
        raise ValueError(f"weights {str(path)!r} do not fit {label or type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def from_checkpoint(builder: str, weights, num_classes: int) -> nn.Module:
    """`build(builder, num_classes)` filled from `weights` (None: random weights), in eval mode."""
    model = build(builder, num_classes)
    if weights is not None:
        load_weights(model, weights, label=f"builder {builder!r} with {num_classes} classes")
    return model.eval()
