"""gmlib.book.deployment: chapter 10's latency, op-time and int8 tables are store records, measured once (with the
environment they ran in) and read back, never re-measured."""
import pytest

from gmlib import latency
from gmlib.book import deployment
from gmlib.store import Store
from gmlib.book.study import Study

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


def _timings(rows):
    """A latency_table-shaped frame: (policy, round_to, runtime, ms, ms_min, ms_max, realised) at rate 0.4."""
    import pandas as pd
    return pd.DataFrame([dict(rate=0.4, policy=p, round_to=r, runtime=rt, ms=ms, ms_min=lo, ms_max=hi,
                              realised=200 / ms) for p, r, rt, ms, lo, hi in rows])


def _int8(pruned_positive):
    import pandas as pd
    rows = [("unpruned", "float32", 0.97, 0.80, 20.0), ("unpruned", "int8", 0.97, 0.80, 12.0),
            ("pruned", "float32", 0.96, pruned_positive, 10.0), ("pruned", "int8", 0.96, pruned_positive, 8.0)]
    return pd.DataFrame([dict(network=n, precision=p, **{"Kaggle Dice": k, "positive-pair Dice": d}, ms=ms,
                              ms_min=ms - 1, ms_max=ms + 1) for n, p, k, d, ms in rows])


def _seeds(losses, costs):
    import pandas as pd
    return pd.DataFrame({"seed": range(len(losses)), "loss": losses, "int8 cost": costs})


def test_int8_verdicts_call_the_loss_against_the_bar_and_int8_by_the_margin():
    near = deployment.int8_verdicts(_seeds([0.020, 0.021, 0.022], [0.001, 0.003, 0.002]), lossless=0.03)
    assert list(near.comparison) == ["the candidate's loss", "int8's cost"]
    assert list(near.call) == ["within the bar", "equivalent"] and (near.n == 3).all()
    assert near["mean"].iloc[0] == pytest.approx(0.021) and 0 < near.ci.iloc[0] < 0.01
    far = deployment.int8_verdicts(_seeds([0.050, 0.052, 0.054], [0.030, 0.032, 0.034]), lossless=0.03)
    assert list(far.call) == ["beyond the bar", "ahead"]
    wide = deployment.int8_verdicts(_seeds([0.0, 0.03, 0.06], [-0.02, 0.0, 0.02]), lossless=0.03)
    assert list(wide.call) == ["undecided", "not separated"]
    one = deployment.int8_verdicts(_seeds([0.001], [0.0]), lossless=0.03)  # one seed is never called
    assert list(one.call) == ["undecided", "not separated"]


def test_int8_seeds_reads_one_timed_record_and_untimed_ones(tmp_path):
    pytest.importorskip("onnxruntime")
    study = Study("smoke", tmp_path / "data", tmp_path / "results", store_dir=tmp_path / "store", device="cpu",
                  progress=False)
    seeds = deployment.int8_seeds(study, 0.4, "coupled", 8, calibration_batches=2, seeds=[0, 1], timed_seed=0,
                                  rounds=1, threads=1)
    assert list(seeds.seed) == [0, 1] and list(seeds.timed) == [True, False]
    records = sorted(study.store.records("int8"), key=lambda r: r.config["seed"])
    assert [r.config["rounds"] for r in records] == [1, 0]
    assert "ms" in records[0].result["rows"][0] and "ms" not in records[1].result["rows"][0]
    quant = deployment.int8_table(study, 0.4, "coupled", 8, calibration_batches=2, seed=1, rounds=0, threads=1)
    q = quant.set_index(["network", "precision"])["positive-pair Dice"]
    assert seeds["loss"].iloc[1] == pytest.approx(q[("unpruned", "float32")] - q[("pruned", "float32")])
    assert seeds["int8 cost"].iloc[1] == pytest.approx(q[("pruned", "float32")] - q[("pruned", "int8")])


def test_the_recommendation_says_what_the_numbers_show():
    candidate = {"rate": 0.4, "policy": "coupled", "round_to": 16}
    close = _timings([("coupled", 16, "ort", 100, 95, 110), ("coupled", 1, "ort", 104, 99, 112),
                      ("or-merge", 16, "ort", 150, 140, 160), ("coupled", 16, "eager", 180, 170, 190)])
    within = deployment.int8_verdicts(_seeds([0.020, 0.021, 0.022], [0.001, 0.003, 0.002]), lossless=0.03)
    text = deployment.recommendation(close, _int8(0.78), candidate, called=within, lossless=0.03, timed="net A",
                                     trained="net B")
    assert "fastest setting is coupled, round_to=16, in ort: 100 ms (rounds 95-110)" in text
    assert "not told apart" in text and "is that fastest setting" in text
    assert "loses +0.021 ± 0.002 positive-pair Dice (95 % interval over 3 fine-tuning seeds)" in text
    assert "the study's rule calls it within the bar" in text
    assert "is +0.002 ± 0.002: equivalent to no cost (its interval lies inside ± 0.01)" in text
    assert "1.25× faster" in text and "net A" in text and "net B" in text

    clear = _timings([("coupled", 1, "ort", 90, 88, 92), ("coupled", 16, "ort", 100, 95, 110)])
    beyond = deployment.int8_verdicts(_seeds([0.050, 0.052, 0.054], [0.030, 0.032, 0.034]), lossless=0.03)
    text = deployment.recommendation(clear, _int8(0.70), candidate, called=beyond, lossless=0.03, timed="A",
                                     trained="B")
    assert "coupled, round_to=1, in ort: 90.0 ms (rounds 88.0-92.0)" in text and "slowest round beats" in text
    assert "1.11× the fastest setting's time" in text and "calls it beyond the bar" in text
    assert "a cost beyond the margin of 0.01 (the test separates it)" in text
    one = deployment.int8_verdicts(_seeds([0.022], [0.003]), lossless=0.03)
    alone = deployment.recommendation(clear.iloc[1:], _int8(0.78), candidate, called=one, lossless=0.03,
                                      timed="A", trained="B")
    assert "the only setting timed" in alone and "is that fastest setting" in alone
    assert "+0.022 positive-pair Dice (one fine-tuning seed, so no interval)" in alone and "calls it undecided" in alone
    assert "not separated (the rule's margin: ± 0.01)" in alone
    with pytest.raises(ValueError, match="rate 0.6"):
        deployment.recommendation(clear, _int8(0.7), {**candidate, "rate": 0.6}, called=one, lossless=0.03,
                                  timed="A", trained="B")
