"""Deployment: a (pruned) network exported to ONNX and run by ONNX Runtime, checked against PyTorch.

`freeze` is the PyTorch-side counterpart (TorchScript, frozen, optimised for CPU inference). `to_onnx` writes the
model in eval mode with a dynamic batch, height and width (input "image", output "logits") and
checks the file with onnx.checker; `session` opens it in ONNX Runtime and `OrtModule` wraps the session as an
nn.Module; `max_relative_error` compares the two on an input; `quantize_int8` makes a calibrated int8 copy.
Needs the `deploy` extra (onnx, onnxruntime; onnxscript for the dynamo exporter).
"""
import importlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["to_onnx", "freeze", "quantize_int8", "session", "OrtModule", "max_relative_error", "EXPORTERS"]

EXPORTERS = ("torchscript", "dynamo")  # torch.onnx's two paths: fast (TorchScript trace) and torch.export-based


def _need(module):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"gmlib.export needs {module}: pip install -e '.[deploy]'") from e


def _check_model_and_input(model, example_input):
    """The arguments to_onnx and freeze share: a module and one (N, C, H, W) example batch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise TypeError(f"example_input must be an (N, C, H, W) tensor, got "
                        f"{getattr(example_input, 'shape', type(example_input).__name__)}")


def to_onnx(model: nn.Module, path, example_input: torch.Tensor, *, dynamic: bool = True, opset: int = 18,
            exporter: str = "torchscript") -> Path:
    """Export `model` (eval mode, on the example's device and dtype) to `path`, atomically; returns the path.

    With `dynamic`, batch, height and width are free (the example fixes only the channels). Raises TypeError for
    bad arguments and RuntimeError naming the model when torch.onnx cannot export it or the checker rejects it.
    """
    onnx = _need("onnx")
    _check_model_and_input(model, example_input)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    kwargs = {}
    if dynamic and exporter == "torchscript":
        kwargs["dynamic_axes"] = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height",
                                                                                            3: "width"}}
    elif dynamic:
        _need("onnxscript")
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch"), 2: torch.export.Dim.AUTO,
                                     3: torch.export.Dim.AUTO},)
    was_training = model.training
    model.eval()
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript path announces its deprecation on every call
            torch.onnx.export(model, (example_input,), tmp, input_names=["image"], output_names=["logits"],
                              opset_version=opset, dynamo=exporter == "dynamo", **kwargs)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
        os.replace(tmp, path)
    except Exception as e:
        raise RuntimeError(f"cannot export {type(model).__name__} to ONNX ({exporter}): "
                           f"{type(e).__name__}: {str(e)[:300]}") from e
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def freeze(model: nn.Module, example_input: torch.Tensor) -> torch.jit.ScriptModule:
    """The model for CPU inference in PyTorch itself: traced (eval mode), frozen, and optimised by
    torch.jit.optimize_for_inference (norms folded into the convs, weights prepacked in oneDNN's layout once instead
    of reordered on every call, which costs a narrow pruned layer proportionally more). Same outputs to float
    rounding, at any batch and spatial size. Raises TypeError for bad arguments, RuntimeError naming the model when
    it cannot be traced."""
    _check_model_and_input(model, example_input)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on Python control flow, TorchScript's deprecation notice
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example_input)))
    except Exception as e:
        raise RuntimeError(f"cannot freeze {type(model).__name__}: {type(e).__name__}: {str(e)[:300]}") from e
    finally:
        model.train(was_training)


def quantize_int8(path, out, calibration) -> Path:
    """Static int8 quantisation of the ONNX file `path` into `out` (ONNX Runtime, QDQ format): int8 weights per
    output channel, uint8 activations with ranges calibrated on `calibration`, an iterable of (N, C, H, W) batches
    (e.g. a few validation strips). Returns `out`; nothing is written there on failure."""
    _need("onnx")
    ort_quant = _need("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    batches = [b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in calibration]
    if not batches or any(b.ndim != 4 for b in batches):
        raise ValueError("calibration must hold at least one (N, C, H, W) batch")

    class Reader(ort_quant.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({"image": b.astype(np.float32)} for b in batches)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # per-tensor notes from the quantiser
        try:
            quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
            ort_quant.quantize_static(str(pre), str(q), Reader(), quant_format=ort_quant.QuantFormat.QDQ,
                                      per_channel=True, activation_type=ort_quant.QuantType.QUInt8,
                                      weight_type=ort_quant.QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
        os.replace(q, out)
    return out


def session(path, threads: int | None = None, optimization: str = "all", *, spinning: bool = True):
    """An ONNX Runtime CPU session for `path`; `optimization` in disable / basic / extended / all. With `spinning`
    off, idle worker threads sleep instead of busy-waiting: slower back-to-back runs, but they leave the cores to
    whatever runs next (PyTorch, in a side-by-side benchmark)."""
    ort = _need("onnxruntime")
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise ValueError(f"unknown optimization {optimization!r}; choose one of {', '.join(levels)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an nn.Module forward (tensors in, tensors out on the input's device), so that
    gmlib.train.evaluate and predict score an exported or int8 network exactly as they score a PyTorch one."""

    def __init__(self, sess):
        super().__init__()
        if not hasattr(sess, "run") or not hasattr(sess, "get_inputs"):
            raise TypeError(f"sess must be an onnxruntime.InferenceSession, got {type(sess).__name__}")
        self.sess, self.input_name = sess, sess.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sess.run(None, {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(out).to(x.device)


@torch.no_grad()
def max_relative_error(model: nn.Module, sess, x: torch.Tensor) -> float:
    """max |ORT(x) - model(x)| / max |model(x)|, with the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        ref = model(x).float().cpu().numpy()
    finally:
        model.train(was_training)
    out = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0]
    if out.shape != ref.shape:
        raise ValueError(f"ONNX Runtime output {out.shape} differs in shape from PyTorch's {ref.shape}")
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
