"""gmlib.store: records keyed by kind, version and config; atomic, checked writes; read-only stores refuse to
compute; corrupt files and stale keys are named. And the committed store of the study: consistent, and reproducible
by the code (one cheap record recomputed for real)."""
import contextlib
import json
import math
import time
from pathlib import Path

import pytest
import torch

from gmlib import store as store_module
from gmlib.store import MissingRecord, Store, StoreError, record_key

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "data" / "store"


def test_key_depends_on_kind_config_and_version(monkeypatch):
    a = record_key("pruned", {"rate": 0.3, "criterion": "fpgm"})
    assert a == record_key("pruned", {"criterion": "fpgm", "rate": 0.3})  # order of keys does not matter
    assert a != record_key("pruned", {"criterion": "fpgm", "rate": 0.5})
    assert a != record_key("finetuned", {"rate": 0.3, "criterion": "fpgm"})
    monkeypatch.setitem(store_module.VERSIONS, "pruned", store_module.VERSIONS["pruned"] + 1)
    assert a != record_key("pruned", {"rate": 0.3, "criterion": "fpgm"})
    with pytest.raises(ValueError, match="unknown record kind 'prunned'"):
        record_key("prunned", {})


def test_fetch_computes_once_then_reads(tmp_path):
    calls = []
    s = Store(tmp_path, readonly=False)

    def compute():
        calls.append(1)
        return {"dice": 0.5, "nan": math.nan}, {"w": torch.arange(6.0).view(2, 3)}
    first = s.fetch("baseline", {"a": 1}, compute)
    again = Store(tmp_path, readonly=False).fetch("baseline", {"a": 1}, compute)
    assert calls == [1]
    assert again.result["dice"] == 0.5 and math.isnan(again.result["nan"]) and again.key == first.key
    assert torch.equal(again.tensors()["w"], torch.arange(6.0).view(2, 3))
    assert again.environment["torch"] == torch.__version__ and again.seconds >= 0
    assert s.problems() == []


def test_readonly_store_refuses_to_compute_and_names_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("GMLIB_STORE_READONLY", "1")
    s = Store(tmp_path)
    with pytest.raises(MissingRecord, match=r"no pruned record for .*\"rate\":0.3.*read-only.*make reproduce"):
        s.fetch("pruned", {"rate": 0.3}, lambda: pytest.fail("a read-only store must not compute"))
    with pytest.raises(MissingRecord, match="read-only"):
        s.put("pruned", {"rate": 0.3}, {}, seconds=0)


def test_corrupt_record_and_weights_are_named(tmp_path):
    s = Store(tmp_path, readonly=False)
    rec = s.put("baseline", {"a": 1}, {"x": 1}, seconds=0, tensors={"w": torch.ones(3)})
    weights = rec.path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-4])  # truncated
    with pytest.raises(StoreError, match=rf"{weights.name}: weights file is corrupt or truncated.*make reproduce"):
        s.get("baseline", {"a": 1}).tensors()
    rec.path.write_text(rec.path.read_text()[:40])  # a record cut mid-write by hand
    with pytest.raises(StoreError, match=rf"{rec.path.name}: corrupt or truncated record.*make reproduce"):
        s.get("baseline", {"a": 1})
    assert any("corrupt" in p for p in s.problems())


def test_stale_records_and_orphans_are_problems(tmp_path, monkeypatch):
    s = Store(tmp_path, readonly=False)
    base = s.put("baseline", {"a": 1}, {}, seconds=0)
    s.put("pruned", {"baseline": base.key, "rate": 0.3}, {}, seconds=0)
    s.put("pruned", {"baseline": "0" * 16, "rate": 0.3}, {}, seconds=0)
    (tmp_path / "baseline" / "deadbeef.safetensors").write_bytes(b"")
    monkeypatch.setitem(store_module.VERSIONS, "baseline", store_module.VERSIONS["baseline"] + 1)
    found = "\n".join(s.problems())
    assert f"{base.key}.json: stale" in found
    assert f"its baseline {'0' * 16} is not in the store" in found
    assert "deadbeef.safetensors: weights without a record" in found


def test_an_interrupted_write_leaves_no_record(tmp_path, monkeypatch):
    s = Store(tmp_path, readonly=False)

    class Killed(BaseException):  # like a kill: not an Exception
        pass

    real_write = store_module.atomic_open

    @contextlib.contextmanager
    def dying_open(path, mode="wb"):
        with real_write(path, mode) as f:
            yield f
            f.flush()
            raise Killed  # the text is half on disk, in the temp file
    
    monkeypatch.setattr(store_module, "atomic_open", dying_open)
    with pytest.raises(Killed):
        s.put("pruned", {"rate": 0.3}, {"x": 1}, seconds=0)
    assert s.get("pruned", {"rate": 0.3}) is None and not list(tmp_path.rglob("*.tmp"))


def test_fresh_marker_recomputes_older_records_and_resumes(tmp_path):
    s = Store(tmp_path, readonly=False)
    s.put("pruned", {"rate": 0.1}, {"run": "old"}, seconds=0)
    (tmp_path / "FRESH").write_text(repr(time.time()))
    assert s.get("pruned", {"rate": 0.1}) is None  # older than the marker: recomputed
    new = s.fetch("pruned", {"rate": 0.1}, lambda: {"run": "new"})
    assert s.fetch("pruned", {"rate": 0.1}, lambda: pytest.fail("recomputed twice")).result == new.result


def test_the_committed_store_is_consistent():
    problems = Store(COMMITTED, readonly=True).problems()
    assert problems == [], "\n".join(problems)
    assert not (COMMITTED / "FRESH").exists(), "a FRESH marker is committed: finish or abort that recompute"


def test_every_committed_validation_record_scores_the_stored_fine_tuned_network():
    """A finetuned_val record holds the validation scores of a fine-tuned point's network, recomputed: it shares the
    fine-tuned record's config, and its test scores are that record's own bit for bit when it says so
    (same_network: recomputed on the CPU kind that made the point), else within the band of another CPU's rounding
    (gmlib.book.study.REPRODUCE_BAND); the chapter says which."""
    from gmlib.book.study import REPRODUCE_BAND

    committed = Store(COMMITTED, readonly=True)
    records = committed.records("finetuned_val")
    assert records, "no finetuned_val record: chapter 07 chooses its learning rate on them"
    for r in records:
        tuned = committed.get("finetuned", r.config)
        assert tuned is not None, f"{r.path}: no fine-tuned record of its config"
        test = r.result["test"]
        assert r.result["same_network"] == all(v == tuned.result[k] for k, v in test.items()), r.path
        for key in ("dice_kaggle_after", "dice_positive_after"):
            assert abs(test[key] - tuned.result[key]) <= REPRODUCE_BAND, (r.path, key, test[key], tuned.result[key])
        assert set(r.result["val"]) == set(r.result["retuned"]["test"]) >= {"dice_positive_after", "loss_after"}


@pytest.mark.usefixtures("one_thread")
def test_one_committed_record_is_reproduced_by_the_code(tmp_path):
    """The store must stay reproducible by the code, not only consistent with it: recompute the cheapest committed
    point of the quick study (FPGM at 10 %, scored right after pruning and after recalibration) for real, into a
    scratch store, and compare. Band: 0.005 Dice (other CPUs round the convolutions differently)."""
    from gmlib.book.study import Study

    committed = Study("quick", ROOT / "data" / "synthetic", tmp_path / "results", store_dir=COMMITTED, device="cpu",
                      progress=False)
    committed.store.readonly = True  # reading only: a missing record fails here
    stored = committed.pruned_point("fpgm", 0.1)  # a MissingRecord here means the store lacks the study's point
    _, report, now, _ = committed._prune("fpgm", 0.1, "or-merge", 0, True)  # computed now, written nowhere
    assert report.params_after == stored["params"] and report.macs_after == stored["macs"]
    for key in ("dice_kaggle_before", "dice_kaggle_recal", "dice_positive_before", "dice_positive_recal"):
        assert abs(now[key] - stored[key]) <= 0.005, (key, now[key], stored[key])


def test_one_committed_real_data_record_is_reproduced_by_the_code():
    """The same for the real-data arm: FPGM at 10 % of the committed pretrained MobileNetV2 on ELPV, pruned and scored
    now (written nowhere), against the stored point: sizes exactly; scores within 0.01 (the balanced-accuracy
    margin: another CPU's rounding may flip a cell or two near the threshold, each worth 0.1-0.25 points)."""
    from gmlib.book.elpv import ElpvStudy

    study = ElpvStudy(COMMITTED, device="cpu", progress=False)
    study.store.readonly = True
    stored = study.pruned_point("fpgm", 0.1, compute=False)
    assert stored is not None, "the store lacks the real-data arm's FPGM point at 10 %"
    now = study.pruned_scores("fpgm", 0.1)
    assert (now["params"], now["macs"]) == (stored["params"], stored["macs"])
    for key in ("test_balanced_accuracy_before", "test_balanced_accuracy_recal", "test_agree_binary_recal",
                "val_loss_recal"):
        assert abs(now[key] - stored[key]) <= 0.01, (key, now[key], stored[key])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("network", ["smp Unet", "smp PSPNet"])  # PSPNet: most of its encoder never runs
def test_the_committed_segmentation_table_is_reproduced_by_the_code(network):
    """Chapter 09's segmentation table is a record (Torch-Pruning's timeouts depend on the machine); gmlib's rows for
    a network of it, recomputed now, are the stored ones (counts exactly, the check's error under the bound)."""
    pytest.importorskip("segmentation_models_pytorch")
    from gmlib import zoo

    records = [r for r in Store(COMMITTED, readonly=True).records("zoo") if network in r.config["families"]]
    assert records, "chapter 09's segmentation table is not in the store"
    config = records[0].config
    stored = [r for r in records[0].result["rows"] if r["family"] == network and r["policy"] == "or-merge"][0]
    now = zoo.zoo_table([network], config["rate"], ["or-merge"], seed=config["seed"],
                        count_macs=config["count_macs"]).iloc[0]
    for key in ("params_cut", "macs_cut", "coverage", "params_unused", "status", "reason"):
        assert now[key] == stored[key], (key, now[key], stored[key])
    assert now["params_cut_run"] == pytest.approx(stored["params_cut_run"], abs=1e-9)
    assert now["error"] <= zoo.EXACT_TOL and stored["error"] <= zoo.EXACT_TOL


@pytest.mark.usefixtures("one_thread")
def test_the_committed_compression_table_is_reproduced_by_the_code():
    """Chapter 03's tables are a record; the paper's headline row (ResNet50 at 40 %), pruned now, gives the stored
    counts exactly."""
    import gmlib

    records = [r for r in Store(COMMITTED, readonly=True).records("compression")
               if "resnet50" in r.config["networks"] and 0.4 in r.config["rates"]]
    assert records, "chapter 03's compression table is not in the store"
    config = records[0].config
    for policy in config["policies"]:
        stored = [r for r in records[0].result["rows"]
                  if (r["model"], r["policy"], r["rate"]) == ("resnet50", policy, 0.4)][0]
        model = gmlib.models.create("resnet50", num_classes=config["num_classes"], seed=config["seed"]).eval()
        report = gmlib.prune(model, torch.zeros(1, *config["input_size"]), 0.4, criterion=config["criterion"],
                             policy=policy)
        assert (report.params_reduction, report.macs_reduction) == (stored["params reduction %"],
                                                                    stored["FLOPs reduction %"]), policy
