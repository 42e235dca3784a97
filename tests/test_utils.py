"""gmlib.utils.release_freed_memory: streamed passes over a loader hand freed memory back after every batch."""
import platform

import torch
from torch import nn

from gmlib import train, utils


def _loader(n_batches):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(2, 3, 32, 32, generator=g), (torch.rand(2, 4, 32, 32, generator=g) > 0.5).to(torch.uint8))
            for _ in range(n_batches)]


def test_predictions_and_evaluate_release_memory_after_every_batch(monkeypatch):
    calls = []
    monkeypatch.setattr(train, "release_freed_memory", lambda: calls.append(1) or True)
    model = nn.Conv2d(3, 4, 1)
    probs = [p for p, _ in train.predictions(model, _loader(3), device="cpu")]
    assert len(probs) == 3 and len(calls) == 3 and all(((p >= 0) & (p <= 1)).all() for p in probs)
    train.evaluate(model, _loader(2), device="cpu")
    assert len(calls) == 5


def test_release_freed_memory_trims_on_glibc():
    released = utils.release_freed_memory()
    assert isinstance(released, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert utils._malloc_trim() is not None
