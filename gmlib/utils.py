"""Reproducibility set-up shared by notebooks, tests and training: one call fixes seeds, threads and printing."""
import os
import random

import numpy as np
import torch

__all__ = ["set_deterministic", "default_device"]


def set_deterministic(seed: int = 0, threads: int = 2) -> None:
    """Seed python, numpy and torch, fix the CPU thread count and make printed numbers short.

    A fixed thread count matters: float reductions split differently over threads, which changes the last digits.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    np.set_printoptions(precision=4, suppress=True)
    torch.set_printoptions(precision=4, sci_mode=False)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
