"""Reproducibility set-up shared by notebooks, tests and training: one call fixes seeds, threads and printing;
environment() records what a run ran on."""
import ctypes
import functools
import os
import platform
import random
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

__all__ = ["set_deterministic", "default_device", "environment", "atomic_open", "native_stderr_silenced",
           "release_freed_memory"]


def set_deterministic(seed: int = 0, threads: int = 2, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch, fix the CPU thread count (on a CPU-only machine) and make printed numbers short.

    A fixed thread count matters: float reductions split differently over threads, which changes the last digits.
    On a GPU machine the CPU threads are left to torch (they feed the GPU). cuDNN picks deterministic kernels, or,
    with `deterministic=False`, the fastest ones it benchmarks (`cudnn.benchmark`).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    np.set_printoptions(precision=4, suppress=True)
    torch.set_printoptions(precision=4, sci_mode=False)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment() -> dict:
    """The software and hardware of this run (the paper's Table 2), every value a string.

    Keys: python, torch, torchvision, timm, numpy, papermill, nbval, onnx, onnxruntime, torch-pruning,
    segmentation-models-pytorch (versions, "not installed" when absent), os, cpu (model name), cpu_capability
    (PyTorch's CPU kernels, plus ATEN_CPU_CAPABILITY when set), torch_threads, gpu (every GPU's name), gpu_count,
    cuda, cudnn, driver (NVIDIA's, from nvidia-smi).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        capability += f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # with the build tag, e.g. 2.14.1+cu130
        **{name: package_version(name) for name in ("torchvision", "timm", "numpy", "papermill", "nbval", "onnx",
                                                      "onnxruntime", "torch-pruning", "segmentation-models-pytorch")},
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_capability": capability,
        "torch_threads": str(torch.get_num_threads()),
        "gpu": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none",
        "gpu_count": str(torch.cuda.device_count() if cuda else 0),
        "cuda": str(torch.version.cuda) if cuda else "none",
        "cudnn": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else "none",
        "driver": _nvidia_driver() if cuda else "none",
    }


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return out[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(package: str) -> str:
    """The installed version of `package` (its distribution name), or "not installed"."""
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


def release_freed_memory() -> bool:
    """Hand the heap memory freed so far back to the OS (glibc's malloc_trim); False where there is no glibc.

    glibc raises its mmap threshold each time a large block is freed, so later full-resolution batches land on the
    heap, which then grows batch after batch; trimming after each batch keeps a streamed pass flat."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim else False


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None
