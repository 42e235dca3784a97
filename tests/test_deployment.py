"""gmlib.deployment: chapter 10's latency, op-time and int8 tables are store records, measured once (with the
environment they ran in) and read back, never re-measured."""
import pytest

from gmlib import deployment, latency
from gmlib.store import Store
from gmlib.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")


def test_latency_table_is_measured_once_then_read_back(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    args = ("fpn_resnest14d", [0.5], ["coupled"], [1], ["eager"], (1, 3, 32, 64))
    table = deployment.latency_table(store, *args, rounds=1, threads=1, progress=False)
    assert set(table.rate) == {0.0, 0.5} and {"ms", "ideal", "realised", "realised/ideal"} <= set(table.columns)
    pruned = table[table.rate == 0.5].iloc[0]
    assert pruned.ideal > 1.5 and table.attrs["environment"]["torch"]
    monkeypatch.setattr(latency, "measure", lambda *a, **k: pytest.fail("re-measured a stored table"))
    again = deployment.latency_table(store, *args, rounds=1, threads=1, progress=False)
    assert again.equals(table)
    other = dict(rounds=2, threads=1, progress=False)  # another configuration is another record
    with pytest.raises(pytest.fail.Exception, match="re-measured"):
        deployment.latency_table(store, *args, **other)


def test_op_breakdown_sums_to_the_total_and_is_stored(tmp_path):
    store = Store(tmp_path / "store")
    candidate = {"rate": 0.5, "policy": "coupled", "round_to": 1}
    kinds = deployment.op_breakdown(store, "fpn_resnest14d", candidate, (1, 3, 32, 64), threads=1, rounds=1)
    assert kinds.loc["total", "unpruned ms"] == pytest.approx(kinds.drop("total")["unpruned ms"].sum())
    assert kinds.attrs["gmacs"]["unpruned"] > kinds.attrs["gmacs"]["candidate"] > 0
    assert len(store.records("latency")) == 1


def test_int8_table_on_the_smoke_baseline(tmp_path):
    pytest.importorskip("onnxruntime")
    study = Study("smoke", tmp_path / "data", tmp_path / "results", store_dir=tmp_path / "store", device="cpu",
                  progress=False)
    quant = deployment.int8_table(study, 0.4, "coupled", 8, calibration_batches=2, rounds=1, threads=1)
    assert list(zip(quant.network, quant.precision)) == [("unpruned", "float32"), ("unpruned", "int8"),
                                                         ("pruned", "float32"), ("pruned", "int8")]
    assert quant.speedup.iloc[0] == 1.0 and (quant.MB.iloc[[1, 3]].to_numpy() < quant.MB.iloc[[0, 2]].to_numpy()).all()
    assert len(study.store.records("int8")) == 1
    assert deployment.int8_table(study, 0.4, "coupled", 8, calibration_batches=2, rounds=1, threads=1).equals(quant)
