"""Chapter 14 (your network) run by papermill on a tiny classification and a tiny segmentation case, the stored-card
helpers it reads (gmlib.card: fetch_card, stored_card, headline), and the ELPV real case's preparation
(gmlib.folders.write_elpv_folders, scripts/elpv_example.py). Oracles: the files in OUT_DIR reloaded and rescored,
parameters by numel, MACs by gmlib.count on the reloaded network, ONNX Runtime run again on the validation images.
"""
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image

from gmlib import count, export
from gmlib.builders import build
from gmlib.card import FILES, fetch_card, headline, load_compressed, store_card, stored_card
from gmlib.data import make_synthetic_severstal
from gmlib.folders import ELPV_CLASSES, layout, open_data, write_elpv_folders
from gmlib.tasks import accuracy, dice

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "14_your_network.ipynb"
sys.path.insert(0, str(ROOT / "scripts"))
import elpv_example  # noqa: E402
from reproduce import KERNEL_CONFIG  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def run_chapter(tmp_path: Path, **parameters) -> tuple:
    """Execute chapter 14 with `parameters` into tmp_path; (card, summary, the executed notebook)."""
    params = {"OUT_DIR": str(tmp_path / "out"), "RESULTS_DIR": str(tmp_path / "results"), "ROUNDS": 2,
              "BATCH_SIZE": 4, "RECAL_BATCHES": 2, "CARD_STORE": None, **parameters}
    executed = tmp_path / "14.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(executed), parameters=params, cwd=str(NOTEBOOK.parent),
                        progress_bar=False, config=KERNEL_CONFIG)
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    summary = json.loads((tmp_path / "results" / "14_your_network" / "summary.json").read_text())
    return card, summary, nbformat.read(executed, as_version=4)


def consistent(card: dict, summary: dict, out: Path):
    """The summary is the card's, the files are the card's, the reloaded network is what the card counts."""
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert card["files"] == {name: (out / name).stat().st_size for name in FILES[:3]}
    for key in ("score_before", "score_pruned", "score_recalibrated", "score_finetuned", "score_onnx", "score_int8"):
        assert summary[key] == round(card[key], 4)
    model, again = load_compressed(out)
    assert again == card
    params, macs = count(model, tuple(card["input_size"]))
    assert (params, macs) == (card["params_after"], card["macs_after"]) == (sum(p.numel() for p in model.parameters()), macs)
    assert card["macs_after"] < card["macs_before"] and card["params_after"] < card["params_before"]
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 images 16 x 16 in three class folders, each class one dominant colour channel."""
    root = tmp_path_factory.mktemp("cls") / "images"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 90, (16, 16, 3)).astype(np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_the_chapter_on_a_tiny_classification_case(tmp_path, images):
    weights = tmp_path / "mbv2.pt"
    torch.manual_seed(0)
    torch.save(build("torchvision:mobilenet_v2", 3).state_dict(), weights)
    card, summary, nb = run_chapter(tmp_path, BUILDER="torchvision:mobilenet_v2", WEIGHTS=str(weights),
                                    DATA_DIR=str(images), TARGET="macs:0.5", BUDGET="2 steps", METHOD="uniform",
                                    SIZE=32, CARD_STORE=str(tmp_path / "cards"), INT8_BAND=1.0, ONNX_BAND=1.0)
    model = consistent(card, summary, tmp_path / "out")
    assert card["task"] == "classification" and card["builder"] == "torchvision:mobilenet_v2"
    assert card["weights"] == str(weights) and card["classes"] == ["blue", "green", "red"]
    assert card["macs_reduction"] >= 0.5 - 0.005 and card["steps"] == 2
    data = open_data(images, size=32, batch_size=4)
    assert card["score_finetuned"] == accuracy(model, data.val)  # the card scores the network it saved
    assert card["score_int8"] == accuracy(export.OrtModule(export.session(tmp_path / "out" / "model.int8.onnx")), data.val)
    stored, = (tmp_path / "cards").glob("*.json")  # the card went to CARD_STORE, keyed by the parameters
    assert json.loads(stored.read_text())["card"] == card
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "FAIL" not in text and sum(line.startswith("ok  ") for line in text.splitlines()) == 5  # checks held


def test_the_chapter_on_a_tiny_segmentation_case(tmp_path):
    strips = make_synthetic_severstal(tmp_path / "strips", 8, 0, progress=False)
    weights = tmp_path / "fpn.pt"
    torch.save(build("fpn_mobilenet_v2", 4).state_dict(), weights)
    card, summary, _ = run_chapter(tmp_path, BUILDER="fpn_mobilenet_v2", WEIGHTS=str(weights), DATA_DIR=str(strips),
                                   TARGET="params:0.4", BUDGET="1 step", METHOD="uniform", SCALE=0.125,
                                   INT8_BAND=1.0, ONNX_BAND=1.0)
    model = consistent(card, summary, tmp_path / "out")
    assert card["task"] == "segmentation" and card["metric"] == "dice_kaggle" and card["input_size"] == [3, 32, 224]
    assert card["params_reduction"] >= 0.4 - 0.005
    data = open_data(strips, scale=0.125, batch_size=4)
    assert card["score_finetuned"] == dice(model, data.val)
    assert set(card["latency_ms"]) == {"pruned", "original"}


# ------------------------------------------------------------------------------------------------ stored cards
CARD = {"builder": "torchvision:mobilenet_v2", "target": "macs:0.5", "metric": "accuracy", "score_before": 0.9,
        "score_finetuned": 0.875, "score_int8": 0.85, "macs_before": 1000, "macs_after": 500, "params_before": 200,
        "params_after": 150, "latency_threads": 1, "machine": {"cpu": "a CPU"},
        "latency_ms": {"pruned": {"ort": {"ms": 2.0}, "ort-int8": {"ms": 1.0}},
                       "original": {"ort": {"ms": 3.0}, "ort-int8": {"ms": 1.5}}}}


def test_a_card_is_stored_by_its_configuration_and_read_back(tmp_path, monkeypatch):
    monkeypatch.delenv("GMLIB_STORE_READONLY", raising=False)
    calls = []

    def compute():
        calls.append(1)
        return CARD
    config = {"target": "macs:0.5", "seed": 0}
    assert fetch_card(tmp_path, config, compute) == (CARD, "computed")
    assert fetch_card(tmp_path, dict(reversed(config.items())), compute) == (CARD, "stored") and len(calls) == 1
    assert stored_card(tmp_path, {**config, "seed": 1}) is None
    assert fetch_card(None, config, compute) == (CARD, "computed") and len(calls) == 2  # no store: always computed
    path, = tmp_path.glob("*.json")
    blob = json.loads(path.read_text())
    path.write_text(json.dumps({**blob, "config": {"target": "macs:0.3", "seed": 0}}))
    with pytest.raises(ValueError, match=f"{path.name}.*another configuration"):
        stored_card(tmp_path, config)
    path.write_text("{trunc")
    with pytest.raises(ValueError, match=f"{path.name}.*not a stored card"):
        stored_card(tmp_path, config)


def test_a_read_only_store_refuses_to_compute_a_missing_card(tmp_path, monkeypatch):
    monkeypatch.setenv("GMLIB_STORE_READONLY", "1")
    with pytest.raises(LookupError, match="no stored card .*GMLIB_STORE_READONLY=1"):
        fetch_card(tmp_path, {"seed": 0}, lambda: pytest.fail("computed in a read-only store"))
    monkeypatch.delenv("GMLIB_STORE_READONLY")
    store_card(tmp_path, {"seed": 0}, CARD)
    monkeypatch.setenv("GMLIB_STORE_READONLY", "1")
    assert fetch_card(tmp_path, {"seed": 0}, lambda: pytest.fail("computed")) == (CARD, "stored")


def test_the_headline_says_how_much_cheaper_what_it_cost_and_how_fast():
    text = headline(CARD)
    assert "keeps 50.0% of its MACs and 75.0% of its parameters" in text
    assert "from 0.9000 to 0.8750 after fine-tuning (-0.0250)" in text and "0.8500 in int8 (-0.0500)" in text
    assert "2.00 ms in ONNX Runtime float and 1.00 ms in int8, against 3.00 ms and 1.50 ms" in text
    assert "(the original's float time over the pruned network's: 1.50× in float, 3.00× in int8)" in text
    no_original = {**CARD, "latency_ms": {"pruned": CARD["latency_ms"]["pruned"]}}
    assert "original" not in headline(no_original)


# ------------------------------------------------------------------------------------------------ the real case
def test_elpv_cells_are_laid_out_as_split_class_folders(tmp_path):
    with pytest.raises(ValueError, match="limit 60.*val part holds 6 defective and 0 ok"):
        write_elpv_folders(tmp_path / "elpv", limit=60)  # the first 60 cells: no ok cell in validation
    counts = write_elpv_folders(tmp_path / "elpv", limit=150)
    assert layout(tmp_path / "elpv") == "split-classes"
    for part in ("train", "val"):
        for c in ELPV_CLASSES:
            assert len(list((tmp_path / "elpv" / part / c).glob("*.png"))) == counts[part][c]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) < 150  # the test cells are left out
    assert json.loads((tmp_path / "elpv" / "elpv.json").read_text())["counts"] == counts
    with pytest.raises(FileExistsError, match="elpv.*exists already"):
        write_elpv_folders(tmp_path / "elpv", limit=5)
    with pytest.raises(FileNotFoundError, match="parent folder"):
        write_elpv_folders(tmp_path / "no" / "elpv", limit=5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".elpv")]


def test_the_elpv_checkpoint_is_chapter_13s_baseline_with_two_logits(tmp_path):
    from gmlib.store import Store
    path = elpv_example.baseline_checkpoint(tmp_path / "w.pt")
    record = Store(ROOT / "data" / "store").read(ROOT / "data" / "store" / "elpv_baseline" / f"{elpv_example.BASELINE_KEY}.json")
    one = build("torchvision:mobilenet_v2", 1)
    one.load_state_dict({k: v.float() for k, v in record.tensors().items()})
    two = build("torchvision:mobilenet_v2", 2)
    two.load_state_dict(torch.load(path, weights_only=True))  # strict: every key and shape fits the builder
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p_one = torch.sigmoid(one.eval()(x)[:, 0])
        p_two = torch.softmax(two.eval()(x), 1)[:, ELPV_CLASSES.index("defective")]
    torch.testing.assert_close(p_two, p_one, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one-logit head"):
        elpv_example.two_logit_state(two.state_dict())
