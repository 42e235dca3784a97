"""gmlib.latency: side-by-side timing tables, speedups against a reference, per-op profiles. Timings are never
asserted (the machine is noisy): only the table's shape, the errors it reports and the arithmetic of the speedups."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from gmlib import latency

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def net(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 4, 1)).eval()


def test_measure_times_every_variant_in_every_runtime():
    runtimes = ("eager", "eager-cl", "frozen", "ort", "ort-basic", "ort-int8")
    table = latency.measure({("wide", 32): net(32), ("narrow", 8): net(8)}, X, runtimes, rounds=2, threads=1,
                            names=("name", "width"), progress=False)
    assert len(table) == 2 * len(runtimes)
    assert set(table.runtime) == set(runtimes) and set(table.name) == {"wide", "narrow"}
    assert (table.ms > 0).all()
    eager = table[table.runtime.str.startswith("eager")]
    assert eager.error.isna().all()  # eager is the reference, no error against itself
    assert (table[table.runtime.isin(["frozen", "ort", "ort-basic"])].error < 1e-4).all()
    assert (table[table.runtime == "ort-int8"].error.between(1e-6, 0.2)).all()  # quantised: close, not exact


def test_add_speedups_is_reference_over_row():
    table = pd.DataFrame({"network": ["a"] * 3 + ["b"] * 2, "runtime": ["eager"] * 5,
                          "rate": [0, 0.5, 0.7, 0, 0.5], "ms": [100.0, 50.0, 40.0, 10.0, 8.0],
                          "GMACs": [4.0, 2.0, 1.0, 1.0, 0.5]})
    out = latency.add_speedups(table, lambda t: t.rate == 0)
    assert list(out.ideal) == [1.0, 2.0, 4.0, 1.0, 2.0]
    assert list(out.realised) == [1.0, 2.0, 2.5, 1.0, 1.25]
    assert list(out["realised/ideal"]) == [1.0, 1.0, 0.625, 1.0, 0.625]
    with pytest.raises(ValueError, match="no reference"):
        latency.add_speedups(table, lambda t: (t.rate == 0) & (t.network == "a"))
    with pytest.raises(ValueError, match="more than one reference"):
        latency.add_speedups(table, lambda t: t.rate < 0.6)


def test_op_times_finds_the_convolutions():
    ops = latency.op_times(net(16), X, rounds=2)
    conv = ops[[("conv" in name) for name in ops.index]]
    assert len(conv) and (ops >= 0).all() and math.isfinite(ops.sum())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tflite"):
        latency.measure({"a": net(4)}, X, ["eager", "tflite"])
    with pytest.raises(ValueError, match="empty"):
        latency.measure({}, X)
    with pytest.raises(TypeError, match="nn.Module"):
        latency.measure({"a": "resnet50"}, X)
    with pytest.raises(ValueError, match="rounds"):
        latency.measure({"a": net(4)}, X, rounds=0)
    with pytest.raises(ValueError, match="one entry per name"):
        latency.measure({("a", 1): net(4)}, X, names=("name",))
