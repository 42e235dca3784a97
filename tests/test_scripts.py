"""The batch scripts: progress-bar clean-up of stored outputs, results/index.md, and gmlib.utils.environment()."""
import copy
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gmlib.utils import environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import refresh_notebooks  # noqa: E402
import reproduce  # noqa: E402

# What text-mode tqdm writes for an outer "epochs" bar (leave=True) around an inner "batch" bar (leave=False), one
# write per stream output as ipykernel stores them, with a tqdm.write-style message in the middle.
BAR = "\repochs: {}%|          | {}/2 [00:0{}<00:00, 1.00it/s]"
INNER = "\rbatch: {}%|          | {}/4 [00:00<00:00, 9.99it/s]"
TQDM_WRITES = [BAR.format(0, 0, 0)]
for epoch in (1, 2):
    for step in range(5):
        TQDM_WRITES += ["\n", INNER.format(25 * step, step), "\x1b[A"]
    TQDM_WRITES += ["\n", "\r" + " " * len(INNER.format(100, 4)[1:]), "\x1b[A", BAR.format(50 * epoch, epoch, epoch)]
TQDM_WRITES += ["\n"]


def stream(name, text):
    return new_output("stream", name=name, text=text)


def notebook_with_progress():
    progress = new_code_cell("history = fit(model)", outputs=[
        stream("stdout", "model: 28.0 M parameters\n"),
        *[stream("stderr", text) for text in TQDM_WRITES],
        stream("stdout", "best epoch: 2\n"),
        stream("stderr", "\r"),
    ])
    plain = new_code_cell("print(x); x", execution_count=3, outputs=[
        stream("stdout", "x = 1\n\nlast line\n"),
        new_output("execute_result", data={"text/plain": "1"}, execution_count=3),
    ])
    params = new_code_cell("SEED = 0", metadata={"tags": ["parameters"]})
    return new_notebook(cells=[new_markdown_cell("# Title"), params, progress, plain])


def test_collapse_progress_keeps_the_last_state_of_each_line():
    text = "".join(TQDM_WRITES)
    assert reproduce.collapse_progress(text) == "epochs: 100%|          | 2/2 [00:02<00:00, 1.00it/s]\n"
    assert reproduce.collapse_progress("a\rb\rc\n") == "c\n"
    assert reproduce.collapse_progress("\r 50%\r    \r") == ""  # a closed leave=False bar leaves nothing


def test_collapse_progress_leaves_plain_text_alone():
    for text in ["", "x = 1\n", "x\n\n\ny", "  indented  \n", "\x1b[31mred\x1b[0m\n"]:
        assert reproduce.collapse_progress(text) == text
    with pytest.raises(TypeError, match="text must be a str"):
        reproduce.collapse_progress(["a\r"])


def test_clean_progress_on_a_notebook():
    nb = notebook_with_progress()
    plain = copy.deepcopy(nb.cells[3])
    reproduce.clean_progress(nb)
    outputs = nb.cells[2].outputs
    assert [(o.name, o.text) for o in outputs] == [
        ("stdout", "model: 28.0 M parameters\n"),
        ("stderr", "epochs: 100%|          | 2/2 [00:02<00:00, 1.00it/s]\n"),
        ("stdout", "best epoch: 2\n"),  # the trailing lone "\r" output is gone
    ]
    assert nb.cells[3] == plain
    nbformat.validate(nb)


def test_strip_keeps_parameters_tag_and_collapses_progress(tmp_path):
    nb = notebook_with_progress()
    nb.metadata["papermill"] = {"duration": 1.0}
    nb.cells[1].metadata["papermill"] = {"status": "completed"}
    nb.cells.insert(2, new_code_cell("SEED = 1", metadata={"tags": ["injected-parameters"]}))
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    refresh_notebooks.strip(path)
    out = nbformat.read(path, as_version=4)
    assert "papermill" not in out.metadata and "papermill" not in out.cells[1].metadata
    assert out.cells[1].metadata["tags"] == ["parameters"]
    assert "tags" not in out.cells[2].metadata
    assert len(out.cells[3].outputs) == 3 and "\r" not in json.dumps(out.cells[3].outputs)


def fake_results(tmp_path):
    for chapter, summary in [
        ("01_geometric_median", {"profile": "quick", "seed": 0, "rate": 0.4, "weiszfeld_contraction": 0.71,
                                 "exact_vs_sum": {"resnet50": {"jaccard": 0.9}}, "input_size": [3, 64, 64]}),
        ("02_layer_surgery", {"network": "resnet50", "equivalent": True, "criterion": "fp|gm"}),
    ]:
        (tmp_path / chapter).mkdir()
        (tmp_path / chapter / "summary.json").write_text(json.dumps(summary))
    for chapter, failed in [("01_geometric_median", False), ("03_compression_tables", False), ("04_data", True)]:
        nb = new_notebook(metadata={"papermill": {"duration": 12.34, "exception": failed}})
        nbformat.write(nb, tmp_path / f"{chapter}.ipynb")
    return tmp_path


def test_write_index_collects_every_chapter(tmp_path):
    path = reproduce.write_index(fake_results(tmp_path))
    text = path.read_text()
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ") for line in text.splitlines()
            if line.startswith("| 0")}
    assert list(rows) == ["01_geometric_median", "02_layer_surgery", "03_compression_tables", "04_data"]
    assert [c.strip() for c in rows["01_geometric_median"][:6]] == \
        ["01_geometric_median", "ok", "quick", "—", "0", "12.3 s"]
    assert rows["01_geometric_median"][6].strip() == "rate=0.4, weiszfeld_contraction=0.71, input_size=[3, 64, 64]"
    assert [c.strip() for c in rows["02_layer_surgery"]] == \
        ["02_layer_surgery", "ok", "—", "resnet50", "—", "—", "equivalent=true, criterion=fp\\|gm"]
    assert [c.strip() for c in rows["03_compression_tables"][:2]] == ["03_compression_tables", "no summary"]
    assert rows["04_data"][1].strip() == "FAILED"
    assert "## Environment" in text and f"| torch | {environment()['torch']} |" in text
    assert [p.name for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".ipynb"] == ["index.md"]


def test_write_index_names_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        reproduce.write_index(tmp_path / "missing")
    (tmp_path / "05_x").mkdir()
    (tmp_path / "05_x" / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="summary.json must hold a JSON object"):
        reproduce.write_index(tmp_path)


def test_index_only_command(tmp_path, capsys):
    assert reproduce.main(["--index-only", "--results", str(fake_results(tmp_path))]) == 0
    assert (tmp_path / "index.md").is_file() and "index.md" in capsys.readouterr().out


def test_a_parameter_no_notebook_declares_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown parameter\(s\) SEEDZ: no selected notebook declares them; "
                                         r"they declare .*SEED"):
        reproduce.main(["--only", "01", "--results", str(tmp_path), "-p", "SEEDZ", "3"])
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_environment_reports_documented_keys_as_strings(monkeypatch):
    import platform
    from importlib import metadata

    import torch

    keys = ["python", "torch", "torchvision", "timm", "numpy", "papermill", "nbval", "onnx", "onnxruntime",
            "torch-pruning", "segmentation-models-pytorch", "os", "cpu", "cpu_capability", "torch_threads", "gpu",
            "gpu_count", "cuda", "cudnn", "driver"]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    env = environment()
    assert list(env) == keys
    assert all(isinstance(v, str) and v for v in env.values())
    assert env["python"] == platform.python_version()
    assert env["torch"] == torch.__version__ and env["nbval"] == metadata.version("nbval")
    assert env["cpu_capability"].startswith(torch.backends.cpu.get_cpu_capability())
    assert env["cpu_capability"].endswith("(ATEN_CPU_CAPABILITY=default)")
    assert env["torch_threads"] == str(torch.get_num_threads())
    assert env["gpu"] == ("none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0))
    assert env["gpu_count"] == str(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["torch-pruning"] == metadata.version("torch-pruning") and env["onnxruntime"]


def test_compute_grid_fills_the_store_then_finds_nothing_to_do(tmp_path, capsys):
    """scripts/compute_grid.py on the smoke profile: the chapter's grid (here one point) is computed by a worker
    process into the store, and a second run finds every point stored."""
    import compute_grid
    params = tmp_path / "grid.json"
    params.write_text('{"RATES": [0.3], "CRITERIA": ["l1"], "SEEDS": [0, 1], "COUPLED_CRITERIA": [], '
                      '"BUDGETS": [], "LRS": [], "BASELINE_SEEDS": []}')  # the chapter's other grids off
    args = ["--profile", "smoke", "--data", str(tmp_path / "data"), "--store", str(tmp_path / "store"),
            "--workers", "1", "--params", str(params), "-p", "SEEDS", "[0]"]  # -p wins over the file
    assert compute_grid.main(args + ["--dry-run"]) == 0  # lists the work without training the baseline
    out = capsys.readouterr().out
    assert "baseline seeds to train first: [0]" in out and "1 points in 1 units, 1 units to compute" in out
    assert not list((tmp_path / "store").glob("baseline/*.json"))
    assert compute_grid.main(args) == 0
    out = capsys.readouterr().out
    assert "1 points in 1 units, 1 units to compute" in out and "[1/1] pruned l1 0.3" in out
    assert len(list((tmp_path / "store" / "finetuned").glob("*.json"))) == 1
    assert compute_grid.main(args + ["--dry-run"]) == 0
    assert "0 units to compute" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        compute_grid.main(args + ["--shard", "2/2"])


def test_gpu_check_runs_its_path_at_a_tiny_size_on_a_cpu(tmp_path):
    """scripts/gpu_check.py end to end with the small network on a CPU: generated strips, the paper profile's loader
    with worker processes, timed steps, evaluation; the figures it reports are there and sane."""
    import gpu_check
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--arch", "fpn_resnest14d", "--steps", "2", "--warmup", "1",
                           "--batch-size", "2", "--workers", "1", "--n-images", "12", "--data", str(tmp_path / "d"),
                           "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["arch"] == "fpn_resnest14d" and figures["crop"] == [256, 512] and figures["workers"] == 1
    assert figures["train_images_per_s"] > 0 and 0 <= figures["train_waited_for_data"] <= 1
    assert figures["peak_gpu_memory_gib"] is None and figures["val_strips"] >= 1
