"""Parameters and multiply-accumulates of a model, counted by torch.utils.flop_counter (no hand-written formulas)."""
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count", "count_by_module", "tally"]


def count(model: nn.Module, input_size) -> tuple[int, int]:
    """(params, MACs) of one forward pass on a zero input of shape (1, *input_size); MACs = FLOPs / 2.

    Args:
        input_size: (C, H, W), e.g. (3, 64, 64) for the paper's tables.
    """
    params, macs, _ = count_by_module(model, input_size)
    return params, macs


def tally(model: nn.Module, input_size=None, macs: bool = True) -> tuple[int, int | None]:
    """(params, MACs) as `count`, or (params, None) without an `input_size` or when `macs` is False (no forward)."""
    if input_size and macs:
        return count(model, input_size)
    return sum(p.numel() for p in model.parameters()), None


def count_by_module(model: nn.Module, input_size) -> tuple[int, int, dict]:
    """(params, MACs, {module name: MACs inside it}) of the same pass; "" is the whole model, and a module's count
    includes its children's."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input_size must be three positive ints (C, H, W), got {input_size!r}")
    params = sum(p.numel() for p in model.parameters())
    p = next(model.parameters(), None)
    x = torch.zeros((1, *size), device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    root = type(model).__name__
    by_module = {"" if name == root else name[len(root) + 1:]: sum(ops.values()) // 2
                 for name, ops in counter.get_flop_counts().items() if name == root or name.startswith(root + ".")}
    return params, counter.get_total_flops() // 2, by_module
