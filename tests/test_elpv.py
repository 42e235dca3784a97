"""The real-data arm: ELPV read from its package, the pretrained file checked by hash, the classifier's scores, and
every experiment of gmlib.book.elpv end to end on a few cells (the smoke path of chapter 13)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmlib import classify, pretrained
from gmlib.data import elpv as elpv_data
import pandas as pd

from gmlib.book.elpv import DESIGN, ElpvStudy, chosen_lr, fresh_init, planned_points
from gmlib.store import Store


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# ------------------------------------------------------------------------------------------------ data
def _fake_root(tmp_path, rows, images=None):
    root = tmp_path / "elpv"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("".join(f"images/{n}  {p}  {t}\n" for n, p, t in rows))
    for name, _, _ in rows:
        pixels = (images or {}).get(name, np.full((300, 300), 128, np.uint8))
        if isinstance(pixels, bytes):
            (root / "images" / name).write_bytes(pixels)
        else:
            Image.fromarray(pixels).save(root / "images" / name)
    return root


def test_reads_labels_types_and_images_from_a_folder_in_the_package_layout(tmp_path):
    rows = [("a.png", "0.0", "mono"), ("b.png", "0.3333333333333333", "poly"), ("c.png", "0.6666666666666666",
            "mono"), ("d.png", "1.0", "poly")]
    cells = {"c.png": np.arange(300 * 300, dtype=np.uint32).reshape(300, 300).astype(np.uint8)}
    data = elpv_data.load_elpv(_fake_root(tmp_path, rows, cells))
    assert data.images.shape == (4, 300, 300) and data.images.dtype == np.uint8
    assert data.classes.tolist() == [0, 1, 2, 3] and data.defective.tolist() == [0, 0, 1, 1]
    assert data.types.tolist() == ["mono", "poly", "mono", "poly"]
    assert np.array_equal(data.images[2], cells["c.png"])


def test_a_corrupt_image_is_named(tmp_path):
    root = _fake_root(tmp_path, [("a.png", "0.0", "mono"), ("bad.png", "1.0", "poly")], {"bad.png": b"\x89PNG broken"})
    with pytest.raises(ValueError, match=r"bad\.png: corrupt or unreadable ELPV image"):
        elpv_data.load_elpv(root)


def test_a_bad_label_row_names_the_file_and_line(tmp_path):
    root = _fake_root(tmp_path, [("a.png", "0.0", "mono"), ("b.png", "0.5", "mono")])
    with pytest.raises(ValueError, match=r"labels\.csv:2: .*0\.5"):
        elpv_data.load_elpv(root)


def test_the_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(elpv_data.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install elpv-dataset==1\.0\.0\.post1"):
        elpv_data.load_elpv()


def test_the_installed_package_holds_the_published_counts_and_the_readme_states_the_split():
    assert elpv_data.load_elpv(limit=3).images.shape == (3, 300, 300)
    labels = (Path(elpv_data.package_root()) / "labels.csv").read_text().split()
    probs = np.array(labels[1::3], dtype=float)
    assert len(probs) == 2624
    assert [int((np.abs(probs - p) < 1e-3).sum()) for p in elpv_data.PROBABILITIES] == [1508, 295, 106, 715]
    _, classes, types = elpv_data.read_elpv_labels()
    train, val, test = (len(part) for part in elpv_data.elpv_split(classes, types))
    readme = " ".join((Path(__file__).resolve().parents[1] / "data" / "README.md").read_text().split())
    assert f"{test} test cells" in readme and f"({val:,} cells" in readme and f"training ({train:,} cells)" in readme


def test_the_split_is_stratified_disjoint_and_fixed():
    rng = np.random.default_rng(0)
    classes, types = rng.integers(0, 4, 1000), rng.choice(["mono", "poly"], 1000)
    train, val, test = elpv_data.elpv_split(classes, types, seed=3)
    assert len(set(train) | set(val) | set(test)) == 1000 and len(train) + len(val) + len(test) == 1000
    for c in range(4):
        for t in ("mono", "poly"):
            n = int(((classes == c) & (types == t)).sum())
            in_test = int(((classes[test] == c) & (types[test] == t)).sum())
            assert in_test == round(0.25 * n)
    again = elpv_data.elpv_split(classes, types, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(test, elpv_data.elpv_split(classes, types, seed=4)[2])
    with pytest.raises(ValueError, match="test_fraction"):
        elpv_data.elpv_split(classes, types, test_fraction=1.0)


def test_augmentation_keeps_the_label_and_only_turns_and_flips(tmp_path):
    cell = np.zeros((300, 300), np.uint8)
    cell[:40, :80] = 255  # an asymmetric patch: every dihedral image of it is distinct
    data = elpv_data.load_elpv(_fake_root(tmp_path, [("a.png", "1.0", "mono")], {"a.png": cell}))
    plain = elpv_data.ElpvDataset(data, [0], size=64)[0][0]
    dihedral = [torch.rot90(im, k, dims=(-2, -1)) for im in (plain, plain.flip(-1)) for k in range(4)]
    aug = elpv_data.ElpvDataset(data, [0], size=64, augment=True, seed=1)
    seen = set()
    for _ in range(40):
        image, label = aug[0]
        assert label.item() == 3
        match = [i for i, d in enumerate(dihedral) if torch.equal(d, image)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) >= 6


# ------------------------------------------------------------------------------------------------ weights
def test_the_weights_file_is_found_checked_and_loads_strictly_into_torchvision():
    path = pretrained.find_weights()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pretrained.MOBILENET_V2.sha256
    model = pretrained.mobilenet_v2(4)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert set(state) == set(own)  # strict: the same names
    assert torch.equal(own["features.0.0.weight"], state["features.0.0.weight"])
    assert model.classifier[-1].out_features == 4


def test_a_hash_mismatch_names_the_file_and_the_expected_hash(tmp_path):
    fake = tmp_path / pretrained.MOBILENET_V2.name
    fake.write_bytes(b"not the weights")
    with pytest.raises(pretrained.WeightsError) as err:
        pretrained.mobilenet_v2(4, path=fake)
    assert str(fake) in str(err.value) and pretrained.MOBILENET_V2.sha256 in str(err.value)


def test_a_missing_file_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(pretrained.util, "find_spec", lambda name: None)
    with pytest.raises(pretrained.WeightsError, match=r"python -m gmlib\.pretrained install"):
        pretrained.find_weights()


# ------------------------------------------------------------------------------------------------ scores
def test_scores_follow_their_definitions():
    # grades 0..3; defective = grades 2, 3; the binary call sums the probability of grades >= 2
    probs = torch.tensor([[.9, .05, .03, .02], [.2, .35, .3, .15], [.1, .1, .2, .6], [.6, 0, .4, 0]])
    labels = torch.tensor([0, 2, 3, 3])
    s = classify.classifier_scores(probs, labels)
    # calls: 0, 0 (0.45 < 0.5), 1, 0 -> truth 0, 1, 1, 1: right 2 of 4; recalls: class 0 1/1, class 1 1/3
    assert s["accuracy"] == pytest.approx(0.5) and s["balanced_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert s["accuracy_grades"] == pytest.approx(0.5)  # argmax 0, 1, 3, 0
    assert s["loss"] == pytest.approx(-np.mean(np.log([.9, .3, .6, 1e-12])), rel=1e-5)
    a = classify.agreement(probs, probs.flip(0))
    assert a["agree_binary"] == pytest.approx(0.5) and 0 < a["tv_distance"] < 1
    assert classify.agreement(probs, probs) == {"agree_binary": 1.0, "agree_grades": 1.0, "tv_distance": 0.0}


def test_a_one_output_head_regresses_the_defect_probability():
    p = torch.tensor([[0.1], [0.45], [0.8], [0.55]])  # the sigmoid of the one output
    labels = torch.tensor([0, 2, 3, 1])                # grades: targets 0, 2/3, 1, 1/3
    s = classify.classifier_scores(p, labels, class_weights=torch.tensor([1.0, 3.0]))
    # calls 0, 0, 1, 1 against truth 0, 1, 1, 0: right 2 of 4, recalls 1/2 and 1/2; nearest grades 0, 1, 2, 2
    # against 0, 2, 3, 1: one right
    assert s["accuracy"] == 0.5 and s["balanced_accuracy"] == 0.5 and s["accuracy_grades"] == 0.25
    target = labels.float() / 3
    bce = -(target * torch.log(p[:, 0]) + (1 - target) * torch.log(1 - p[:, 0]))
    weight = torch.tensor([1.0, 3.0, 3.0, 1.0])  # by binary class
    assert s["loss"] == pytest.approx(((bce * weight).sum() / weight.sum()).item(), rel=1e-5)
    a = classify.agreement(p, torch.tensor([[0.2], [0.6], [0.8], [0.5]]))
    # calls 0, 0, 1, 1 against 0, 1, 1, 1
    assert a["agree_binary"] == 0.75 and a["tv_distance"] == pytest.approx((0.1 + 0.15 + 0 + 0.05) / 4)
    logits = torch.logit(p)
    assert classify.classifier_loss(logits, labels).item() == pytest.approx(bce.mean().item(), rel=1e-5)


def test_balanced_weights_equalise_the_classes():
    w = classify.balanced_class_weights([0, 0, 0, 1, 2, 2], 4)
    assert w.tolist() == pytest.approx([6 / 12, 6 / 4, 6 / 8, 0.0])


def test_fresh_init_replaces_every_weight_and_depends_only_on_the_seed():
    a, b = pretrained.mobilenet_v2(4), pretrained.mobilenet_v2(4)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    fresh_init(a, 5), fresh_init(b, 5)
    for k, v in a.state_dict().items():
        if v.is_floating_point() and "running_var" not in k and v.numel() > 1 and not k.endswith("bias"):
            assert not torch.equal(v, before[k]), k
        assert torch.equal(v, b.state_dict()[k]), k


# ------------------------------------------------------------------------------------------------ smoke path
def test_every_experiment_runs_end_to_end_and_is_stored_once(tmp_path):
    study = ElpvStudy(tmp_path / "store", limit=160, size=64, epochs=1, recal_batches=2, progress=False)
    base = study.baseline()
    assert 0 <= base.test["accuracy"] <= 1 and len(base.history) == 1 and "val_balanced_accuracy" in base.history
    pruned = study.pruned_point("fpgm", 0.3)
    assert pruned["macs"] < base.macs and 0 < pruned["macs_reduction"] < 100
    assert {"test_agree_binary_before", "test_agree_binary_recal", "val_balanced_accuracy_recal"} <= set(pruned)
    tuned = study.finetuned_point("random", 0.3, seed=1, epochs=1)
    fresh = study.fresh_point(0.3, epochs=1)
    assert fresh["macs"] == pruned["macs"] and "test_balanced_accuracy_after" in tuned
    scratch = study.baseline(pretrained=False)
    assert scratch.key != base.key
    kinds = {r.kind: r for r in Store(tmp_path / "store").records()}
    assert set(kinds) == {"elpv_baseline", "elpv_pruned", "elpv_finetuned", "elpv_scratch"}
    assert Store(tmp_path / "store").problems() == []
    created = {r.path: r.created for r in Store(tmp_path / "store").records()}
    again = ElpvStudy(tmp_path / "store", limit=160, size=64, epochs=1, recal_batches=2, progress=False,
                      device="cpu")
    assert again.finetuned_point("random", 0.3, seed=1, epochs=1) == tuned  # read back, not recomputed
    assert {r.path: r.created for r in Store(tmp_path / "store").records()} == created
    assert planned_points(again, "baselines") + planned_points(again, "scratch_baseline") == \
        [dict(kind="baseline", pretrained=True), dict(kind="baseline", pretrained=False)]
    chosen = planned_points(again, "choices")
    assert [(p["head"], p["size"]) for p in chosen] == [("probability", 128), ("grades", 128), ("probability", 224)]
    assert planned_points(again, "grid") == []  # waits for the lr stage, which reads validation only
    assert len(planned_points(again, "lr")) == len(DESIGN["lr_rates"]) * len(DESIGN["lr_candidates"])


def test_a_killed_training_resumes_where_it_stopped_and_ends_as_an_unbroken_run(tmp_path, monkeypatch):
    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 4))
        x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 4, (24,))
        data = torch.utils.data.TensorDataset(x, y)
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(1))
        return model, loader, torch.utils.data.DataLoader(data, batch_size=8)

    model, train, val = setup()
    whole = classify.fit_classifier(model, train, val, epochs=3, lr=1e-2, seed=0, progress=False)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    writes = []
    real_write = classify.write_training_state

    def write_then_die(*args):
        real_write(*args)
        writes.append(1)
        if len(writes) == 2:
            raise KeyboardInterrupt  # killed after its second epoch was saved

    model, train, val = setup()
    monkeypatch.setattr(classify, "write_training_state", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        classify.fit_classifier(model, train, val, epochs=3, lr=1e-2, seed=0, progress=False,
                                resume=tmp_path / "state.pt")
    monkeypatch.setattr(classify, "write_training_state", real_write)
    model, train, val = setup()
    resumed = classify.fit_classifier(model, train, val, epochs=3, lr=1e-2, seed=0, progress=False,
                                      resume=tmp_path / "state.pt")
    assert len(resumed) == 3
    assert resumed.drop(columns="seconds").equals(whole.drop(columns="seconds"))
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_the_segmentation_stages_run_an_fpn_on_the_pretrained_encoder(tmp_path):
    study = ElpvStudy(tmp_path / "store", limit=40, size=64, progress=False, seg_data_dir=tmp_path / "strips",
                      results_dir=tmp_path / "results", seg_profile="smoke")
    assert study.run(dict(kind="seg_baseline", pretrained=True), compute=False) is None
    base = study.run(dict(kind="seg_baseline", pretrained=True))
    seg = study.segmentation(True)
    assert seg.config.arch == "fpn_mobilenet_v2" and seg.baseline_config()["config"]["pretrained"] == \
        {"sha256": pretrained.MOBILENET_V2.sha256}
    assert study.segmentation(False).key() != seg.key()
    point = dict(kind="seg_point", pretrained=True, criterion="l1", rate=0.3, seed=0)
    assert not study.stored(point)
    row = study.run(point)
    assert study.stored(point) and row["macs_reduction"] > 0 and "dice_positive_after" in row
    assert 0 <= base.scores["dice_kaggle"] <= 1


def test_allocation_and_deployment_run_on_validation_choices_only(tmp_path, monkeypatch):
    for key, value in {"lr_candidates": (1e-3, 1e-4), "lr_rates": (0.3,), "epochs": 1, "deploy_rates": (0.5,),
                       "sensitivity_rates": (0.5,)}.items():
        monkeypatch.setitem(DESIGN, key, value)
    study = ElpvStudy(tmp_path / "store", limit=120, size=64, epochs=1, recal_batches=1, progress=False,
                      results_dir=tmp_path / "results")
    with pytest.raises(ValueError, match="lr stage"):
        study.allocated_point("uniform", 0.3)
    for point in planned_points(study, "lr"):
        study.run(point)
    lr = chosen_lr(study)
    vals = {c: study.finetuned_point("fpgm", 0.3, epochs=1, lr=c)["val_balanced_accuracy_after"]
            for c in DESIGN["lr_candidates"]}
    assert vals[lr] == max(vals.values())  # chosen on validation
    uniform = study.allocated_point("uniform", 0.3)
    sens = study.allocated_point("sensitivity", 0.3)
    for row in (uniform, sens):
        assert abs(row["reached"] - 0.3) <= 0.0051 and "test_balanced_accuracy_after" in row
    assert uniform["rates"] != sens["rates"]
    table = study.sensitivity_table()
    assert set(table["rate"]) == {0.5} and table.attrs["baseline_score"] < 0  # minus a loss
    rows = pd.DataFrame(study.deployment(rounds=1)["rows"])
    assert set(rows["runtime"]) == {"ort", "ort-int8"} and set(rows["rate"]) == {0.0, 0.5}
    macs = rows.groupby("rate")["macs"].first()
    assert (rows["ms"] > 0).all() and macs[0.5] < macs[0.0]

    from gmlib import verdicts
    from gmlib.book import elpv_tables
    monkeypatch.setitem(DESIGN, "allocation_cuts", (0.3,))
    monkeypatch.setitem(DESIGN, "allocation_seeds", 1)
    points = elpv_tables.allocation(study)  # the two stored: uniform and sensitivity at -30 %, seed 0
    assert sorted(points["method"]) == ["sensitivity", "uniform"]
    calls = elpv_tables.allocation_calls(points)
    assert list(calls["comparison"]) == ["sensitivity − uniform"] and calls["call"].iloc[0] == "not separated"
    assert calls["mean"].iloc[0] == pytest.approx(sens["test_balanced_accuracy_after"]
                                                  - uniform["test_balanced_accuracy_after"])
    deployed = elpv_tables.deployment(study, rounds=1).set_index(["rate", "runtime"])
    assert deployed.loc[(0.0, "ort"), "speed-up"] == 1.0 and len(deployed) == 4
    assert Store(tmp_path / "store").problems() == []


def test_chapter_13s_tables_read_the_store_and_call_by_the_rule(tmp_path, monkeypatch):
    from gmlib import verdicts
    from gmlib.book import elpv_tables
    for key, value in {"lr_candidates": (1e-3,), "lr_rates": (0.3,), "epochs": 1, "criteria": ("fpgm", "l1"),
                       "rates": (0.3,), "seeds": {"fpgm": 2, "l1": 2}}.items():
        monkeypatch.setitem(DESIGN, key, value)
    study = ElpvStudy(tmp_path / "store", limit=120, size=64, epochs=1, recal_batches=1, progress=False,
                      results_dir=tmp_path / "results")
    assert elpv_tables.progress(study).set_index("stage").loc["baselines", "stored"] == 0
    assert elpv_tables.grid(study).empty and elpv_tables.baselines(study).empty  # nothing stored: nothing shown
    for stage in ("baselines", "lr", "grid"):
        for point in planned_points(study, stage):
            study.run(point)
    done = elpv_tables.progress(study).set_index("stage")
    assert (done.loc[["baselines", "lr", "grid"], "stored"] == done.loc[["baselines", "lr", "grid"], "planned"]).all()
    assert done.loc["grid", "planned"] == 2 + 4  # pruned: one per criterion; fine-tuned: two seeds each
    points = elpv_tables.grid(study)
    assert len(points) == 4 and set(points["criterion"]) == {"fpgm", "l1"}
    base = study.baseline()
    f5 = elpv_tables.figure5(points, base.test["balanced_accuracy"])
    assert len(f5) == 2 and set(f5["call"]) <= {"within the bar", "beyond the bar", "undecided"}
    fpgm = points[points.criterion == "fpgm"]
    assert f5.set_index("criterion").loc["fpgm", "mean"] == pytest.approx(
        (base.test["balanced_accuracy"] - fpgm["test_balanced_accuracy_after"]).mean())
    pairs = elpv_tables.paired(points)
    assert list(pairs["comparison"]) == ["fpgm − l1"] and pairs["call"].iloc[0] in verdicts.CALLS
    kept = elpv_tables.function_kept(study)
    assert len(kept) == 2 and kept["agree, recalibrated"].between(0, 1).all()
    assert elpv_tables.lr_choice(study)[1] == 1e-3
    found = elpv_tables.collect(study)
    assert "Not answered yet: 0 of" in elpv_tables.pending(found, "budgets")
    answer = elpv_tables.answer_markdown(found)
    planned = len(planned_points(study, "budgets"))
    assert "**Real cells: is 10-30 % nearly lossless?**" in answer and f"0 of {planned} points of the `budgets` stage" in answer

    # the later stages: inherited against fresh weights, and the criteria on the random-init baseline
    for key, value in {"budget_rates": (0.3,), "budget_epochs": (2,), "budget_seeds": 2, "scratch_rates": (0.3,),
                       "scratch_criteria": ("fpgm", "l1"), "scratch_seeds": 2}.items():
        monkeypatch.setitem(DESIGN, key, value)
    assert elpv_tables.start_calls(elpv_tables.by_start(study)).empty  # one start: no contrast to call
    for stage in ("scratch_baseline", "budgets", "scratch_init"):
        for point in planned_points(study, stage):
            study.run(point)
    found = elpv_tables.collect(study)
    budgets = found["budgets"]
    assert len(budgets) == 4 and set(budgets["epochs"]) == {1, 2}  # the grid's budget and the longer one, 2 seeds
    inherited = found["inherited"].set_index("epochs")
    pairs = budgets[budgets.epochs == 2]
    assert inherited.loc[2, "mean"] == pytest.approx((pairs["inherited"] - pairs["fresh"]).mean())
    assert set(inherited["call"]) <= set(verdicts.CALLS) and inherited["n"].eq(2).all()
    starts = found["starts"]
    assert set(starts["start"]) == {"ImageNet", "random init"} and set(starts["comparison"]) == {"fpgm − l1"}
    scratch = found["by_start"].query("start == 'random init'")
    assert (scratch["loss"] + scratch["score"]).round(9).nunique() == 1  # the loss is against its own baseline
    answer = elpv_tables.answer_markdown(found)
    assert "budgets" not in answer and "on the random init baseline" in answer
    checks = elpv_tables.checks(study, found)
    assert checks["the three splits are disjoint and hold every cell once"]
    assert checks["every criterion removes more MACs at a higher rate"]


def test_the_setup_is_chosen_on_validation_with_a_margin_for_cost(monkeypatch):
    from gmlib.book import elpv

    class Fake:
        def __init__(self, val):
            self.val = val

        def baseline_scores(self, **args):
            if (args["head"], args["size"]) not in self.val:
                return None
            return type("B", (), {"val": {"balanced_accuracy": self.val[args["head"], args["size"]]}})

    def study(scores):
        s = Fake(scores)
        s.recipe = elpv.ElpvRecipe()
        return s
    full = {("probability", 128): 0.80, ("grades", 128): 0.75, ("probability", 224): 0.805}
    assert elpv.chosen_setup(study(full)) == {"head": "probability", "size": 128}  # 224 gains less than the margin
    assert elpv.chosen_setup(study({**full, ("probability", 224): 0.82})) == {"head": "probability", "size": 224}
    assert elpv.chosen_setup(study({**full, ("grades", 128): 0.9}))["head"] == "grades"
    assert elpv.chosen_setup(study({k: v for k, v in full.items() if k[1] == 128})) is None  # not all stored


def test_the_real_answers_are_set_beside_the_synthetic_ones_by_the_kind_of_verdict():
    from gmlib.book import conclusions
    real = pd.DataFrame({"question": ["Real cells: is 10-30 % nearly lossless?",
                                      "Real cells: does FPGM beat the other criteria?",
                                      "Real cells: do inherited weights beat fresh ones?"],
                         "verdict": ["not decided: undecided at 10%", "not shown: ahead 0, behind 0 of 28",
                                     "not answered yet (0 of 30 points of the `budgets` stage are stored)"]})
    synthetic = pd.DataFrame({"question": ["Is 10-30 % nearly lossless (Figure 5)?", "Are FPGM's filters the ones to prune?",
                                           "Do inherited weights beat fresh ones (Liu et al. 2019)?"],
                              "verdict": ["within the bar at 10% only", "not shown: mostly not separated",
                                          "worth something at every budget tested"], "chapter": ["07"] * 3})
    out = conclusions.side_by_side(real, synthetic).set_index("question")
    assert out["same kind of verdict"].tolist() == ["no", "yes", "open"]
    assert out.loc["Real cells: does FPGM beat the other criteria?", "synthetic"] == "not shown: mostly not separated"
