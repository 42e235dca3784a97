"""What `compress` leaves in an OUT folder: the pruned checkpoint, ONNX float and int8 files, and a card.

pruned.pt (gmlib.save_pruned; `load_compressed` reads it back), model.onnx and model.int8.onnx (gmlib.export), and
card.json / card.md: the report's scores, params and MACs, the ONNX files' scores and error against PyTorch, their
ONNX Runtime latency beside the original network's (gmlib.latency) and the files' sizes. All or nothing: everything
is written in a temporary folder beside OUT and renamed into place once complete.
"""
import copy
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import uuid
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import export, tasks
from .builders import persist_builder
from .latency import time_rounds
from .persist import load_pruned, save_pruned
from .store import READONLY_ENV, canonical
from .utils import atomic_open, environment

__all__ = ["write_outputs", "load_compressed", "markdown", "FILES", "check_out", "headline", "stored_card",
           "store_card", "fetch_card", "STORED_FORMAT"]

FILES = ("pruned.pt", "model.onnx", "model.int8.onnx", "card.json", "card.md")
RUNTIMES = ("ort", "ort-int8")
STORED_FORMAT = "gmlib.stored_card/1"


def check_out(out, overwrite: bool = False) -> Path:
    """`out` as a Path, once it is known to be writable: FileExistsError naming it when it exists (unless
    `overwrite`), FileNotFoundError when its parent folder does not."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"out folder {str(out)!r} exists already; choose another or overwrite it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {str(out)!r} exists and is not a folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"out folder {str(out)!r}: its parent folder does not exist")
    return out


def write_outputs(out, model, report, data, *, original=None, builder=None, metric=None, rounds: int = 10,
                  threads: int = 1, calibration_batches: int = 4, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Write `model` (from `compress`) and its card into the folder `out`; returns the card as a dict.

    `report`: compress's CompressReport; `data`: the Data it ran on (int8 calibration, the ONNX files' scores);
    `original`: the network before pruning, timed beside it (optional); `builder`: how save_pruned rebuilds it
    (default the report's builder string, or the model's own); `metric`: the callable compress scored with, when
    it was not a built-in. Nothing appears at `out` unless every file was written; the models are not changed.
    """
    out = check_out(out, overwrite)
    spec = builder if builder is not None else report.builder
    rebuild = persist_builder(spec, data.num_classes) if isinstance(spec, str) else spec
    if rebuild is None and not (getattr(model, "_gmlib_builder", None) or getattr(model, "_gmlib_arch", None)):
        raise ValueError("write_outputs needs builder= (a builder string or a callable returning the unpruned "
                         "network) to save a network compress was not given by a builder string")
    score = metric if callable(metric) else tasks.resolve(report.metric, tasks.METRICS, "metric")[1]
    pruned = copy.deepcopy(model).cpu().eval()
    x = data.example_input()
    bar = tqdm(total=5, desc="outputs", disable=not progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        bar.set_postfix_str("checkpoint")
        save_pruned(pruned, tmp / "pruned.pt", builder=rebuild, num_classes=data.num_classes,
                    metadata={"builder": spec if isinstance(spec, str) else None, "num_classes": data.num_classes,
                              "input_size": list(data.input_size), "task": data.task, "classes": data.classes})
        bar.update()
        bar.set_postfix_str("onnx")
        onnx_path = export.to_onnx(pruned, tmp / "model.onnx", x)
        calibration = data.calibration(calibration_batches)
        int8_path = export.quantize_int8(onnx_path, tmp / "model.int8.onnx", calibration)
        bar.update()
        bar.set_postfix_str("score onnx")
        sessions = {name: export.session(path, threads=threads) for name, path in
                    (("onnx", onnx_path), ("int8", int8_path))}
        scores = {name: float(score(export.OrtModule(s), data.val)) for name, s in sessions.items()}
        error = export.max_relative_error(pruned, sessions["onnx"], x)
        bar.update()
        bar.set_postfix_str("latency")
        files = {"pruned": (onnx_path, int8_path)}
        if original is not None:
            files["original"] = _exported(original, x, calibration, tmp / "original")
        times = _time_files(files, x, rounds, threads, progress)
        bar.update()
        bar.set_postfix_str("card")
        card = _card(report, scores, error, times, tmp, threads, rounds, data)
        (tmp / "card.json").write_text(json.dumps(card, indent=1, allow_nan=True) + "\n")
        (tmp / "card.md").write_text(markdown(card))
        shutil.rmtree(tmp / "original", ignore_errors=True)
        _move_into_place(tmp, out)
        bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return card


def _exported(model, x, calibration, folder: Path) -> tuple:
    """(float, int8) ONNX files of a copy of `model` in `folder`, to time beside the pruned network's."""
    folder.mkdir()
    path = export.to_onnx(copy.deepcopy(model).cpu().eval(), folder / "model.onnx", x)
    return path, export.quantize_int8(path, folder / "model.int8.onnx", calibration)


def _time_files(files: dict, x, rounds: int, threads: int, progress: bool) -> dict:
    """{variant: {runtime: {"ms", "ms_min", "ms_max"}}}: the ONNX files of every variant timed on `x` in ONNX
    Runtime, rounds interleaved (gmlib.latency.time_rounds); ms is the median round."""
    feed = {"image": x.cpu().numpy()}
    runners = {}
    for variant, paths in files.items():
        for runtime, path in zip(RUNTIMES, paths):
            sess = export.session(path, threads=threads, spinning=False)  # spinning threads would steal the others'
            runners[variant, runtime] = lambda sess=sess: sess.run(None, feed)
    out = {}
    for (variant, runtime), t in time_rounds(runners, rounds, progress).items():
        out.setdefault(variant, {})[runtime] = {"ms": 1e3 * statistics.median(t), "ms_min": 1e3 * min(t),
                                                "ms_max": 1e3 * max(t)}
    return out


def _move_into_place(tmp: Path, out: Path):
    """Rename the finished folder to `out`; an older `out` (overwrite) is moved aside first, removed after."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}") if out.exists() else None
    if old is not None:
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _card(report, scores, error, times, folder, threads, rounds, data) -> dict:
    """The card's content: the report, the ONNX files' scores and error, their latency, sizes, the machine."""
    env = environment()
    return {"format": "gmlib.card/1", **report.to_dict(), "num_classes": data.num_classes,
            "classes": list(data.classes), "score_onnx": scores["onnx"], "score_int8": scores["int8"], "onnx_max_relative_error": error,
            "latency_ms": times, "latency_threads": threads, "latency_rounds": rounds,
            "files": {name: (folder / name).stat().st_size for name in FILES[:3]},
            "machine": {k: env[k] for k in ("cpu", "cpu_capability", "torch", "onnxruntime")}}


def _num(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,}" if isinstance(v, int) else f"{v:.{digits}f}"


def markdown(card: dict) -> str:
    """The card as Markdown: what was asked, the scores at each stage, sizes, latency, files, what was kept."""
    lines = [f"# Compressed: {card.get('builder') or 'a network'} ({card['task']})", "",
             headline(card), "",
             f"Weights `{card.get('weights') or 'none given'}`, data `{card.get('data') or 'as given'}`.", "",
             f"Target `{card['target']}` ({card['method']} allocation, criterion `{card['criterion']}`), "
             f"fine-tuned {card['steps']} steps at lr {card['lr']:g}. Scores: {card['metric']} on the validation "
             f"images, input {tuple(card['input_size'])}.", "",
             "| stage | score |", "|---|---|"]
    for label, key in (("before", "score_before"), ("pruned", "score_pruned"),
                       ("BatchNorm recalibrated", "score_recalibrated"), ("fine-tuned", "score_finetuned"),
                       ("ONNX float", "score_onnx"), ("ONNX int8", "score_int8")):
        lines.append(f"| {label} | {_num(card[key])} |")
    lines += ["", "| | before | after | removed |", "|---|---|---|---|",
              f"| parameters | {card['params_before']:,} | {card['params_after']:,} | "
              f"{100 * card['params_reduction']:.1f}% |",
              f"| MACs | {card['macs_before']:,} | {card['macs_after']:,} | {100 * card['macs_reduction']:.1f}% |",
              "", f"ONNX Runtime latency, median of {card['latency_rounds']} rounds on {card['latency_threads']} "
              f"thread(s), {card['machine']['cpu']}:", "", "| network | float (ms) | int8 (ms) |", "|---|---|---|"]
    for variant, runtimes in card["latency_ms"].items():
        lines.append(f"| {variant} | {_num(runtimes['ort']['ms'], 3)} | {_num(runtimes['ort-int8']['ms'], 3)} |")
    lines += ["", f"ONNX float against PyTorch: max relative error {card['onnx_max_relative_error']:.1e}.", "",
              "| file | bytes |", "|---|---|", *[f"| {n} | {s:,} |" for n, s in card["files"].items()],
              "", f"What was kept: {card['kept']}.", "", "| set | first member | size | kept | rate | reason |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {s['set']} | `{s['first']}` | {s['size']} | {s['kept']} | {s['rate']:.2f} | {s['reason']} |"
              for s in card["sets"]]
    return "\n".join(lines) + "\n"


def load_compressed(out, map_location="cpu"):
    """(the pruned network of an OUT folder, its card dict): pruned.pt rebuilt by its stored builder string."""
    out = Path(out)
    card = json.loads((out / "card.json").read_text())
    blob = torch.load(out / "pruned.pt", map_location="cpu", weights_only=True)
    meta = json.loads(blob["manifest"]).get("metadata", {})
    spec = meta.get("builder")
    builder = persist_builder(spec, meta["num_classes"]) if spec else None
    if builder is None:
        raise ValueError(f"{out / 'pruned.pt'} was saved with a callable builder: use gmlib.load_pruned(path, "
                         f"builder=...)")
    return load_pruned(out / "pruned.pt", map_location, builder=builder), card


def headline(card: dict) -> str:
    """The card in two sentences: how much cheaper, what it cost in score, how fast in ONNX Runtime (beside the
    original network's time when the card has it)."""
    lat = card["latency_ms"]
    pruned = lat["pruned"]
    speed = (f"{pruned['ort']['ms']:.2f} ms in ONNX Runtime float and {pruned['ort-int8']['ms']:.2f} ms in int8")
    if "original" in lat:
        orig = lat["original"]
        speed += (f", against {orig['ort']['ms']:.2f} ms and {orig['ort-int8']['ms']:.2f} ms for the original "
                  f"network (the original's float time over the pruned network's: "
                  f"{orig['ort']['ms'] / pruned['ort']['ms']:.2f}× in float, "
                  f"{orig['ort']['ms'] / pruned['ort-int8']['ms']:.2f}× in int8)")
    return (f"{card.get('builder') or 'The network'} pruned to `{card['target']}` keeps "
            f"{card['macs_after'] / card['macs_before']:.1%} of its MACs and {card['params_after'] / card['params_before']:.1%} "
            f"of its parameters; {card['metric']} on the validation images goes from {card['score_before']:.4f} to "
            f"{card['score_finetuned']:.4f} after fine-tuning ({card['score_finetuned'] - card['score_before']:+.4f}) "
            f"and {card['score_int8']:.4f} in int8 ({card['score_int8'] - card['score_before']:+.4f}). "
            f"It runs in {speed}, one input, {card['latency_threads']} thread(s), on {card['machine']['cpu']}.")


def _card_path(folder, config: dict) -> Path:
    return Path(folder) / f"{hashlib.sha256(canonical(config).encode()).hexdigest()[:16]}.json"


def stored_card(folder, config: dict):
    """The card committed under `folder` for `config` (the run's parameters, a JSON dict), or None when there is
    none. The file is <sha256 of the canonical config, 16 hex digits>.json; one that holds another config, or is
    not a stored card, is an error naming it."""
    path = _card_path(folder, config)
    if not path.is_file():
        return None
    try:
        blob = json.loads(path.read_text())
        ok = blob["format"] == STORED_FORMAT and canonical(blob["config"]) == canonical(config)
        card = blob["card"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a stored card ({type(e).__name__}: {e}); delete it to compute it again") from None
    if not ok:
        raise ValueError(f"{path}: holds another configuration than the one asked for; delete it to compute it again")
    return card


def store_card(folder, config: dict, card: dict) -> Path:
    """Write `card` under `folder` for `config` (see stored_card), atomically; returns its path."""
    path = _card_path(folder, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        f.write(json.dumps({"format": STORED_FORMAT, "config": config, "card": card}, indent=1, sort_keys=True,
                           allow_nan=True) + "\n")
    return path


def fetch_card(folder, config: dict, compute):
    """(card, where it came from): the card stored under `folder` for `config` ("stored"), or `compute()`'s, then
    stored ("computed"); `folder` None: always computed, never stored. Under GMLIB_STORE_READONLY=1 (nbval, CI) a
    missing card is an error naming the file, never a silent recompute."""
    if folder is not None:
        card = stored_card(folder, config)
        if card is not None:
            return card, "stored"
        if os.environ.get(READONLY_ENV, "") == "1":
            raise LookupError(f"no stored card {_card_path(folder, config)} for {canonical(config)}; "
                              f"{READONLY_ENV}=1 here: run the chapter without it to compute the card")
    card = compute()
    if folder is not None:
        store_card(folder, config, card)
    return card, "computed"
