"""Reproducibility set-up shared by notebooks, tests and training: one call fixes seeds, threads and printing;
environment() records what a run ran on."""
import os
import platform
import random
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

__all__ = ["set_deterministic", "default_device", "environment", "atomic_open", "native_stderr_silenced"]


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


def environment() -> dict:
    """The software and hardware of this run (the paper's Table 2), every value a string.

    Keys: python, torch, torchvision, timm, numpy, papermill, nbval (versions, "not installed" when absent), os, cpu
    (model name), cpu_capability (PyTorch's CPU kernels, plus ATEN_CPU_CAPABILITY when set), torch_threads, gpu, cuda.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        capability += f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # with the build tag, e.g. 2.14.1+cu130
        **{name: _version(name) for name in ("torchvision", "timm", "numpy", "papermill", "nbval")},
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_capability": capability,
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
        "cuda": str(torch.version.cuda) if cuda else "none",
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


@contextmanager
def atomic_open(path, mode: str = "wb"):
    """Write `path` all or nothing: yields a temp file beside it, fsynced and renamed over `path` on success (a reader
    sees the old file or the new one, never half of one), removed on any error. Creates the parent folder."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block: C++ libraries (torch.profiler's Kineto) log there directly,
    past Python's sys.stderr, and a notebook would store every line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
