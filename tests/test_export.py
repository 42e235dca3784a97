"""ONNX export of the paper's networks, pruned or not: onnx.checker passes and ONNX Runtime matches PyTorch."""
import pytest
import torch
from torch import nn

import gmlib
from gmlib import export

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(1, 3, 64, 64)
OTHER = torch.randn(2, 3, 64, 96)  # another batch and width: the axes are dynamic


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d", "resnest50d", "fpn_resnest50"])
def test_paper_networks_export_and_match_pytorch(arch, tmp_path):
    model = gmlib.models.create(arch, seed=0).eval()
    path = export.to_onnx(model, tmp_path / f"{arch}.onnx", X)
    assert export.max_relative_error(model, export.session(path), OTHER) < 1e-4


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_a_pruned_network_reloaded_with_load_pruned_exports(exporter, tmp_path):
    model = gmlib.models.create("fpn_resnest14d", seed=0).eval()
    gmlib.prune(model, X, 0.4)
    gmlib.save_pruned(model, tmp_path / "pruned.pt", arch="fpn_resnest14d")
    loaded = gmlib.load_pruned(tmp_path / "pruned.pt")
    path = export.to_onnx(loaded, tmp_path / "pruned.onnx", X, exporter=exporter)
    sess = export.session(path, threads=1, optimization="basic")
    assert export.max_relative_error(loaded, sess, OTHER) < 1e-4
    assert export.max_relative_error(model, sess, OTHER) < 1e-4
    # the pruned widths are what ONNX Runtime runs: fewer weights in the file than in the unpruned export
    full = export.to_onnx(gmlib.models.create("fpn_resnest14d", seed=0), tmp_path / "full.onnx", X)
    assert path.stat().st_size < 0.8 * full.stat().st_size


def test_int8_copy_is_smaller_and_close(tmp_path, monkeypatch):
    model = gmlib.models.create("fpn_resnest14d", seed=0).eval()
    gmlib.prune(model, X, 0.4)
    path = export.to_onnx(model, tmp_path / "f.onnx", X)
    strips = [torch.randn(1, 3, 64, 128) for _ in range(4)]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # ONNX Runtime's quantiser once left sym_shape_infer_temp.onnx in the working folder
    q = export.quantize_int8(path, tmp_path / "q.onnx", strips)
    assert not list(workdir.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "f.onnx", "q.onnx"]
    assert q.stat().st_size < 0.35 * path.stat().st_size  # int8 weights: about a quarter
    error = export.max_relative_error(model, export.session(q), strips[0])
    assert 1e-4 < error < 0.2  # quantised: no longer float-exact, but close
    with pytest.raises(ValueError, match="calibration"):
        export.quantize_int8(path, tmp_path / "q2.onnx", [])
    assert not (tmp_path / "q2.onnx").exists()


def test_fixed_shape_export_refuses_another_shape(tmp_path):
    model = gmlib.models.create("resnet50", seed=0).eval()
    sess = export.session(export.to_onnx(model, tmp_path / "fixed.onnx", X, dynamic=False))
    assert export.max_relative_error(model, sess, X) < 1e-4
    with pytest.raises(Exception):
        export.max_relative_error(model, sess, OTHER)


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x.flatten(2)).S


def test_errors_name_the_input(tmp_path):
    model = gmlib.models.create("resnet50", seed=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export.to_onnx("resnet50", tmp_path / "m.onnx", X)
    with pytest.raises(TypeError, match="example_input"):
        export.to_onnx(model, tmp_path / "m.onnx", torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="exporter"):
        export.to_onnx(model, tmp_path / "m.onnx", X, exporter="tflite")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.to_onnx(model, tmp_path / "missing" / "m.onnx", X)
    with pytest.raises(RuntimeError, match="cannot export Unexportable"):
        export.to_onnx(Unexportable(), tmp_path / "bad.onnx", X)
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        export.session(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="optimization"):
        export.session(tmp_path / "m.onnx", optimization="max")


def test_ort_module_scores_like_the_model_it_came_from(tmp_path):
    """OrtModule lets train.predict / evaluate run the ONNX Runtime copy; with spinning off the outputs are the same."""
    model = gmlib.models.create("fpn_resnest14d", seed=0).eval()
    path = export.to_onnx(model, tmp_path / "m.onnx", X)
    wrapped = export.OrtModule(export.session(path, threads=1, spinning=False))
    images = torch.randn(3, 3, 64, 100)  # predict pads the width to 128, a shape the export never saw
    assert torch.allclose(gmlib.train.predict(wrapped, images, device="cpu"),
                          gmlib.train.predict(model, images, device="cpu"), atol=1e-5)
    with pytest.raises(TypeError, match="InferenceSession"):
        export.OrtModule(model)


class Untraceable(nn.Module):
    def forward(self, x):
        return {"size": x.shape[-1]}  # a trace can only return tensors


def test_frozen_model_matches_at_other_sizes_and_names_bad_input():
    model = gmlib.models.create("fpn_resnest14d", seed=0).eval()
    gmlib.prune(model, X, 0.4, round_to=16)
    frozen = export.freeze(model, X)
    with torch.no_grad():
        ref, out = model(OTHER), frozen(OTHER)  # traced at 1x3x64x64, run at 2x3x64x96
    assert out.shape == ref.shape and float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export.freeze("fpn", X)
    with pytest.raises(TypeError, match="example_input"):
        export.freeze(model, torch.randn(3, 64, 64))
    with pytest.raises(RuntimeError, match="cannot freeze Untraceable"):
        export.freeze(Untraceable(), X)
