"""The results store: each expensive experiment is computed once, committed with the code, and read back.

A record is <root>/<kind>/<key>.json, key = sha256(kind, VERSIONS[kind], config)[:16]; weights, when an experiment
has them, sit beside it as <key>.safetensors with their sha256 in the record. Bump a kind's version when what it
computes changes: its old records then no longer match their keys (stale) and `check` fails on them.
Read-only (CI, nbval): a record that is asked for and missing is an error, never a silent recompute.
"""
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .utils import atomic_open, environment

__all__ = ["VERSIONS", "Store", "Record", "StoreError", "MissingRecord", "record_key", "READONLY_ENV", "fp16_state",
           "frame_rows", "canonical",
           "record_frame"]

# One version per experiment kind: what a record of that kind holds and how it is computed. A change of the code an
# experiment runs (its recipe, its metric, its data) bumps it; tests/test_store.py recomputes one cheap record for
# real and compares it with the committed one, so a change that forgets the bump shows there.
VERSIONS = {"baseline": 1, "pruned": 1, "finetuned": 1, "finetuned_val": 1, "scratch": 1, "iterative": 2,
            "latency": 2, "int8": 2, "zoo": 1, "sensitivity": 1, "allocation": 1, "compression": 1, "unstructured": 1,
            "elpv_baseline": 1, "elpv_pruned": 1, "elpv_finetuned": 1, "elpv_scratch": 1,
            "elpv_sensitivity": 1, "elpv_allocated": 1, "elpv_deployment": 1}
# where a record's config["baseline"] key points: the Severstal study's baselines, or the real-data arm's
BASELINE_KINDS = ("baseline", "elpv_baseline")
READONLY_ENV = "GMLIB_STORE_READONLY"  # "1": missing records are errors (set by `make nbval`)
FRESH_MARKER = "FRESH"  # <root>/FRESH holds a time: records made before it count as missing (make reproduce FRESH=1)
HOW_TO_REGENERATE = "run `make reproduce` to compute missing records (`make reproduce FRESH=1` recomputes all)"


class StoreError(ValueError):
    """A record or weights file in the store is corrupt, truncated or inconsistent."""


class MissingRecord(LookupError):
    """A read-only store lacks a record that was asked for."""


def canonical(config) -> str:
    """The config as the JSON every key hashes: sorted keys, no spaces, no NaN."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def record_key(kind: str, config: dict) -> str:
    """sha256 of (kind, its version, the config as canonical JSON), 16 hex digits."""
    if kind not in VERSIONS:
        raise ValueError(f"unknown record kind {kind!r}; choose one of {', '.join(VERSIONS)}")
    blob = canonical({"kind": kind, "version": VERSIONS[kind], "config": config})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Record:
    """One stored experiment: what decided it (config), what it found (result), where and how long it ran."""
    kind: str
    key: str
    config: dict
    result: dict
    environment: dict
    seconds: float
    created: float
    path: Path
    weights_sha256: str | None = None

    def tensors(self) -> dict:
        """The record's weights (name -> tensor), checked against the hash the record holds."""
        if self.weights_sha256 is None:
            raise StoreError(f"{self.path} has no weights")
        path = self.path.with_suffix(".safetensors")
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path}: weights file missing; {HOW_TO_REGENERATE}") from None
        if hashlib.sha256(blob).hexdigest() != self.weights_sha256:
            raise StoreError(f"{path}: weights file is corrupt or truncated (hash mismatch); delete it and "
                             f"{self.path.name}, then {HOW_TO_REGENERATE}")
        try:
            return load_tensors(blob)
        except SafetensorError as e:
            raise StoreError(f"{path}: not a safetensors file ({e}); {HOW_TO_REGENERATE}") from None


class Store:
    """Records under `root`, one folder per kind.

    Args:
        root: the store's folder (the study's is data/store/, committed).
        readonly: missing records raise MissingRecord; default from the GMLIB_STORE_READONLY environment variable.
    """

    def __init__(self, root, readonly: bool | None = None):
        self.root = Path(root)
        self.readonly = os.environ.get(READONLY_ENV, "") == "1" if readonly is None else bool(readonly)

    def path(self, kind: str, config: dict) -> Path:
        return self.root / kind / f"{record_key(kind, config)}.json"

    def _fresh_since(self) -> float | None:
        marker = self.root / FRESH_MARKER
        return float(marker.read_text().strip()) if marker.is_file() else None

    def get(self, kind: str, config: dict) -> Record | None:
        """The record of (kind, config), or None when there is none (or, during a FRESH run, it is older)."""
        path = self.path(kind, config)
        if not path.is_file():
            return None
        record = self.read(path)
        since = self._fresh_since()
        return None if since is not None and record.created < since else record

    def read(self, path) -> Record:
        """Parse one record file; a corrupt, truncated or misnamed one raises StoreError naming it."""
        path = Path(path)
        try:
            blob = json.loads(path.read_text())
            record = Record(kind=blob["kind"], key=blob["key"], config=blob["config"], result=blob["result"],
                            environment=blob["environment"], seconds=float(blob["seconds"]),
                            created=float(blob["created"]), path=path, weights_sha256=blob.get("weights_sha256"))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path}: corrupt or truncated record ({type(e).__name__}: {e}); delete it and "
                             f"{HOW_TO_REGENERATE}") from None
        if record.key != path.stem:
            raise StoreError(f"{path}: holds key {record.key!r} under another name; delete it and "
                             f"{HOW_TO_REGENERATE}")
        return record

    def put(self, kind: str, config: dict, result: dict, *, seconds: float, tensors: dict | None = None) -> Record:
        """Write a record atomically (weights first, the JSON last: a reader never sees a half-written record)."""
        if self.readonly:
            raise MissingRecord(f"the store {self.root} is read-only ({READONLY_ENV}=1): cannot write a {kind} record")
        key, path = record_key(kind, config), self.path(kind, config)
        sha = None
        if tensors is not None:
            blob = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            sha = hashlib.sha256(blob).hexdigest()
            with atomic_open(path.with_suffix(".safetensors")) as f:
                f.write(blob)
        record = {"kind": kind, "key": key, "version": VERSIONS[kind], "config": config, "result": result,
                  "seconds": float(seconds), "created": time.time(), "environment": _where(),
                  **({"weights_sha256": sha} if sha else {})}
        text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True)
        with atomic_open(path, "w") as f:
            f.write(text + "\n")
        return self.read(path)

    def fetch(self, kind: str, config: dict, compute) -> Record:
        """The stored record of (kind, config), or `compute()` run now and stored.

        `compute()` returns the result dict, or (result, tensors) for an experiment with weights. In a read-only
        store a missing record raises MissingRecord naming the experiment and how to compute it.
        """
        record = self.get(kind, config)
        if record is not None:
            return record
        if self.readonly:
            raise MissingRecord(f"no {kind} record for {canonical(config)} in {self.root} (expected "
                                f"{self.path(kind, config).name}); the store is read-only here ({READONLY_ENV}=1): "
                                f"{HOW_TO_REGENERATE}")
        start = time.perf_counter()
        out = compute()
        result, tensors = out if isinstance(out, tuple) else (out, None)
        return self.put(kind, config, result, seconds=time.perf_counter() - start, tensors=tensors)

    def records(self, kind: str | None = None) -> list:
        """Every record (of `kind`), sorted by path."""
        folders = [self.root / kind] if kind else [p for p in sorted(self.root.iterdir()) if p.is_dir()] \
            if self.root.is_dir() else []
        return [self.read(p) for folder in folders for p in sorted(folder.glob("*.json"))]

    def problems(self) -> list:
        """What is wrong with the committed records: unknown kinds, stale keys (config or version changed), weights
        that do not match, records whose baseline is not in the store. Empty when all is well."""
        found = []
        if not self.root.is_dir():
            return found
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.json")):
                try:
                    r = self.read(path)
                except StoreError as e:
                    found.append(str(e))
                    continue
                if r.kind not in VERSIONS or r.kind != folder.name:
                    found.append(f"{path}: kind {r.kind!r} is not a store kind here")
                elif record_key(r.kind, r.config) != r.key:
                    found.append(f"{path}: stale (its config or {r.kind} version {VERSIONS[r.kind]} gives key "
                                 f"{record_key(r.kind, r.config)}); {HOW_TO_REGENERATE}")
                if r.weights_sha256 is not None:
                    try:
                        r.tensors()
                    except StoreError as e:
                        found.append(str(e))
                base = r.config.get("baseline") if isinstance(r.config, dict) else None
                if isinstance(base, str) and not any((self.root / k / f"{base}.json").is_file()
                                                     for k in BASELINE_KINDS):
                    found.append(f"{path}: its baseline {base} is not in the store")
            for weights in sorted(folder.glob("*.safetensors")):
                if not weights.with_suffix(".json").is_file():
                    found.append(f"{weights}: weights without a record")
        return found


def fp16_state(model) -> dict:
    """The state dict with floating tensors rounded to fp16 on the CPU: half the bytes in the store, and the weights
    every experiment then starts from (so a fresh clone computes on exactly what the store holds)."""
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
            for k, v in model.state_dict().items()}


def frame_rows(frame) -> list:
    """A table as a record's "rows": one dict of plain Python values per row (numpy scalars unwrapped for JSON)."""
    return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in frame.to_dict("records")]


def record_frame(record):
    """A record's "rows" as a DataFrame, with the environment they were computed in as attrs["environment"]."""
    frame = pd.DataFrame(record.result["rows"])
    frame.attrs["environment"] = record.environment
    return frame


def _where() -> dict:
    env = environment()
    env["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return env
