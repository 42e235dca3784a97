"""The one judge of a pruning: the original with the dropped rows zeroed (`masked`) against the cut network, as
max|pruned - masked| / max|masked| (`relative_error`); `prune`'s self-check and `gmlib.verify` alike.

Step 7 of 9, one filter from its score to its removal (README, Layout): the cut network proven against the original
with the filter zeroed.

`masked(model, kept)` takes kept indices by module or tensor name: `prune` passes those it cuts by, `gmlib.verify`
the survivors it found by value. `Check` is the self-check: built before the surgery on a float64 masked copy, run
in eval and train mode; after the surgery the network `prune` returns (a float64 copy of it) runs in both modes, and
beyond `TOLERANCE` pruning is refused and `first_difference` names the first module where the outputs part.
"""
import torch
from torch import nn

from .shrink import mask_kept
from .transaction import copy_as

__all__ = ["NotExactError", "Check", "masked", "outputs", "relative_error", "flat_outputs", "first_difference",
           "TOLERANCE", "TRAIN_SLACK"]

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}  # relative; exact surgery lands at ~1e-15 in float64
# Train mode normalises by batch statistics: on a near-constant input (a zero example batch) a deep BatchNorm divides
# by a variance near 0 and magnifies rounding to ~1e-9 in float64. A wrong surgery is off by 1e-3 or more.
TRAIN_SLACK = 1e3


class NotExactError(RuntimeError):
    """The pruned network would not compute what the masked original computes (the model was left unchanged)."""


def masked(model: nn.Module, kept: dict, dtype=None) -> nn.Module:
    """A copy of `model` (cast to `dtype`; None: as it is) with every row that `kept` drops zeroed: the reference.

    `kept[name] = {"out": rows}` names modules (masked by their rule) or tensors (rows along their channel dim)."""
    return mask_kept(copy_as(model, dtype), kept)


def _random_regularisers():
    """Dropout-like modules: random in training, with draws that depend on the number of channels."""
    kinds = [nn.modules.dropout._DropoutNd]
    try:
        from timm.layers import DropBlock2d, DropPath
        kinds += [DropPath, DropBlock2d]
    except ImportError:  # pragma: no cover - timm is a project dependency
        pass
    try:
        from torchvision.ops import StochasticDepth
        kinds.append(StochasticDepth)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _set_mode(model, mode):
    model.train(mode == "train")
    if mode == "train":
        for m in model.modules():
            if isinstance(m, _random_regularisers()):
                m.eval()


@torch.no_grad()
def outputs(model: nn.Module, inputs: tuple, mode: str, seed: int = 0) -> list:
    """The output tensors of `model(*inputs)` in "eval" or "train" mode (dropout-like modules off), seeded."""
    _set_mode(model, mode)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [t.detach().clone() for t in flat_outputs(model(*inputs))]


def relative_error(reference: list, out: list) -> float:
    """Largest |out - reference| relative to the reference's largest |value| over lists of tensors; inf when the
    shapes differ."""
    if [t.shape for t in reference] != [t.shape for t in out]:
        return float("inf")
    scale = max((float(t.abs().max()) for t in reference if t.numel()), default=0.0) or 1.0
    return max((float((a - b).abs().max()) for a, b in zip(out, reference) if a.numel()), default=0.0) / scale


def flat_outputs(out) -> list:
    """The tensors of a model's output (a tensor, or nested tuples, lists and dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in flat_outputs(o)]


def _tolerance(dtype, mode):
    return TOLERANCE.get(dtype, 1e-2) * (TRAIN_SLACK if mode == "train" else 1)


def _select_outputs(ref, output_kept):
    if len(ref) != len(output_kept):
        return [torch.full((0,), float("nan"))]  # outputs that cannot be matched: never exact
    return [t if k is None else t.index_select(1, torch.as_tensor(k, device=t.device))
            for t, k in zip(ref, output_kept)]


def _cast(inputs, dtype):
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def _batch_of_two(inputs):
    """Train-mode BatchNorm needs more than one value per channel: a batch of 1 gets its mirror image added."""
    return tuple(torch.cat([t, t.flip(-1)]) if isinstance(t, torch.Tensor) and t.dim() >= 2 and len(t) == 1 else t
                 for t in inputs)


class Check:
    """Built before the surgery on the unpruned model: the outputs of its masked copy. `failure(pruned)` after the
    surgery runs the very network `prune` returns (a copy of it, cast to the check's precision) against them."""

    def __init__(self, model: nn.Module, inputs: tuple, kept: dict, output_kept=None):
        """`output_kept`: per returned tensor, the channels (dim 1) the pruned network still returns (None: all)."""
        self.candidate = None
        try:
            self.cast = self.dtype = torch.float64
            self.masked, self.inputs = masked(model, kept, torch.float64), _cast(inputs, torch.float64)
            self.reference = {"eval": outputs(self.masked, self.inputs, "eval")}
        except Exception:  # noqa: BLE001 - an op without float64 support: check in the model's own precision
            self.cast, self.masked, self.inputs = None, masked(model, kept), inputs
            self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
            self.reference = {"eval": outputs(self.masked, self.inputs, "eval")}
        buffers = [(b, b.clone()) for b in self.masked.buffers()]
        for x in (self.inputs, _batch_of_two(self.inputs)):  # train-mode BatchNorm needs two values per channel
            try:
                self.reference["train"] = outputs(self.masked, x, "train")
                self.train_inputs = x
                break
            except Exception:  # noqa: BLE001 - a network that does not run in train mode is checked in eval only
                pass
        for b, saved in buffers:  # train mode moved the running statistics; eval mode must see the originals
            b.copy_(saved)
        if output_kept and any(k is not None for k in output_kept):  # a pruned head returns the kept channels only
            self.reference = {mode: _select_outputs(ref, output_kept) for mode, ref in self.reference.items()}

    def failure(self, pruned: nn.Module):
        """None when `pruned` (the surgery's result) computes what the masked original does, else (mode, relative
        error). It runs on a copy, so that its forwards leave the model's running statistics alone."""
        self.candidate = copy_as(pruned, self.cast)
        for mode, ref in self.reference.items():
            x = self.inputs if mode == "eval" else self.train_inputs
            try:
                out = outputs(self.candidate, x, mode)
            except Exception:  # noqa: BLE001 - the pruned network does not run: certainly not exact
                return mode, float("inf")
            error = relative_error(ref, out)
            if error > _tolerance(self.dtype, mode) \
                    and not (mode == "train" and relative_error(out, outputs(self.candidate, x, mode, seed=1))):
                return mode, error
        return None

    def first_difference(self, mode: str, channels) -> str:
        """After a `failure` in `mode`: the first module (in call order) whose output differs between the masked
        original and the pruned network. `channels(name)`: the kept indices along dim 1 of that module's output
        (None: unknown or all)."""
        return first_difference(self.masked, self.candidate, self.inputs, channels, mode, self.dtype)


@torch.no_grad()
def first_difference(reference: nn.Module, pruned: nn.Module, inputs: tuple, channels, mode: str, dtype) -> str:
    """The first module (in call order) whose output differs between `reference` (the masked original) and
    `pruned`, run on `inputs` in `mode`; `channels(name)` gives the kept indices along dim 1 of a module's output."""
    x = inputs
    if mode == "train":
        try:
            outputs(reference, x, mode)
        except Exception:  # noqa: BLE001 - as in Check: a batch of two where one value per channel will not do
            x = _batch_of_two(x)
    recorded = []
    for net in (reference, pruned):
        seen, handles = {}, []
        for name, m in net.named_modules():
            if name and not any(True for _ in m.children()):
                handles.append(m.register_forward_hook(
                    lambda m, a, out, name=name: seen.setdefault(name, out.detach().clone())
                    if isinstance(out, torch.Tensor) else None))
        try:
            outputs(net, x, mode)
        except Exception:  # noqa: BLE001 - the outputs recorded up to the failure still locate it
            pass
        finally:
            for h in handles:
                h.remove()
        recorded.append(seen)
    modules = dict(reference.named_modules())
    for name, ref in recorded[0].items():
        out, idx = recorded[1].get(name), channels(name)
        if idx is not None and ref.dim() >= 2:
            ref = ref.index_select(1, idx.to(ref.device))
        elif out is not None and out.shape != ref.shape:
            continue  # a module whose channels the graph does not map (inside a rule's block): cannot compare
        if out is None or out.shape != ref.shape or relative_error([ref], [out]) > _tolerance(dtype, mode):
            return f"{name!r} ({type(modules[name]).__name__})"
    return "none of the modules (the difference arises in the forward's own code after the last one)"
