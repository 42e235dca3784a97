"""Chapter 10's measurements as results-store records: the latency of pruned variants in each runtime, where the time
of one forward goes, and int8 on the trained network. Once measured, timings are data: a record keeps the machine
it was measured on (its environment), and a reader sees those numbers, not a re-measurement on their own machine.

Every table is a list of rows in its record; the functions return them as DataFrames.
"""
import tempfile
from itertools import islice
from pathlib import Path

import pandas as pd
import torch

from . import export, latency
from .store import Store, frame_rows, record_frame
from .surgery import prune

__all__ = ["latency_table", "op_breakdown", "int8_table"]



def latency_table(store: Store, arch: str, rates, policies, round_tos, runtimes, size, *, rounds: int,
                  threads: int, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """`latency.measure` of `arch` (random init) pruned at every rate, policy and round_to, with its MACs and
    speedups against the unpruned network (`latency.add_speedups`), on a random input of `size` (N, C, H, W)."""
    config = {"table": "runtimes", "arch": arch, "rates": [float(r) for r in rates], "policies": list(policies),
              "round_tos": [int(r) for r in round_tos], "runtimes": list(runtimes), "size": [int(s) for s in size],
              "rounds": int(rounds), "threads": int(threads), "seed": int(seed)}

    def compute():
        variants, counts = latency.pruned_variants(arch, rates, policies, round_tos, size[1:], seed=seed)
        x = torch.randn(*size, generator=torch.Generator().manual_seed(seed))
        names = ["network", "policy", "rate", "round_to"]
        table = latency.measure(variants, x, runtimes, rounds=rounds, threads=threads, names=names,
                                progress=progress)
        table = latency.add_speedups(table.merge(counts, on=names), lambda t: t.rate == 0)
        return {"rows": frame_rows(table)}
    return record_frame(store.fetch("latency", config, compute))


def op_breakdown(store: Store, arch: str, candidate: dict, size, *, threads: int, seed: int = 0,
                 rounds: int = 3) -> pd.DataFrame:
    """Eager time per kind of op (`latency.by_kind`) of the unpruned `arch` and of `candidate` (rate, policy,
    round_to), and their ratio; the last row is the whole forward. Also each network's GMACs."""
    config = {"table": "op_times", "arch": arch, "candidate": {k: candidate[k] for k in ("rate", "policy", "round_to")},
              "size": [int(s) for s in size], "threads": int(threads), "seed": int(seed), "rounds": int(rounds)}

    def compute():
        variants, counts = latency.pruned_variants(arch, [candidate["rate"]], [candidate["policy"]],
                                                   [candidate["round_to"]], size[1:], seed=seed)
        x = torch.randn(*size, generator=torch.Generator().manual_seed(seed))
        ref = (arch, "—", 0.0, 1)
        cand = (arch, candidate["policy"], float(candidate["rate"]), int(candidate["round_to"]))
        kinds = pd.DataFrame({name: latency.by_kind(latency.op_times(variants[key], x, rounds))
                              for name, key in [("unpruned ms", ref), ("candidate ms", cand)]}).fillna(0)
        macs = counts.set_index(["network", "policy", "rate", "round_to"]).GMACs
        return {"rows": frame_rows(kinds.rename_axis("kind").reset_index()),
                "gmacs": {"unpruned": float(macs.loc[ref]), "candidate": float(macs.loc[cand])}}
    record = store.fetch("latency", config, compute)
    kinds = record_frame(record).set_index("kind")
    kinds.loc["total"] = kinds.sum()
    kinds["time ratio"] = kinds["unpruned ms"] / kinds["candidate ms"]
    kinds.attrs["gmacs"] = record.result["gmacs"]
    return kinds


def int8_table(study, rate: float, policy: str, round_to: int, *, calibration_batches: int, seed: int = 0,
               rounds: int = 12, threads: int = 2) -> pd.DataFrame:
    """The trained baseline and its pruned, recalibrated and fine-tuned twin (`study.finetune`'s budget) exported to
    ONNX, quantised to int8 (`export.quantize_int8`, calibrated on `calibration_batches` training batches), each
    scored on the test strips in ORT and timed (ORT float and int8, median of `rounds`): network, precision, MB,
    Kaggle and positive-pair Dice, ms, and the speedup over the unpruned float network."""
    base = study.baseline()
    ft = study.finetune_config
    config = {"baseline": base.key, "rate": float(rate), "policy": policy, "round_to": int(round_to),
              "calibration_batches": int(calibration_batches), "seed": int(seed), "steps": ft.steps, "lr": ft.lr,
              "recal_batches": ft.recal_batches, "rounds": int(rounds), "threads": int(threads)}

    def compute():
        pruned = base.copy()
        prune(pruned, study.example_input(), rate, policy=policy, round_to=round_to)
        study.recalibrate(pruned)
        study.finetune(pruned, seed=seed)
        pruned.eval()
        batches = islice(study.train_loader(seed, calibration_batches), calibration_batches)
        calibration = [images for images, _ in batches]
        example = study.example_input().cpu()
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for name, model in [("unpruned", base.copy().cpu()), ("pruned", pruned.cpu())]:
                fp32 = export.to_onnx(model, Path(folder) / f"{name}.onnx", example)
                int8 = export.quantize_int8(fp32, Path(folder) / f"{name}.int8.onnx", calibration)
                for precision, path in [("float32", fp32), ("int8", int8)]:
                    scores = study.evaluate(export.OrtModule(export.session(path, threads=threads)))
                    rows.append({"network": name, "precision": precision, "MB": path.stat().st_size / 2**20,
                                 "Kaggle Dice": scores["dice_kaggle"], "positive-pair Dice": scores["dice_positive"]})
            models = {"unpruned": base.copy().cpu().eval(), "pruned": pruned}
            small = latency.measure(models, example, ["ort", "ort-int8"], rounds=rounds, threads=threads,
                                    names=("network",), progress=False)
        small["precision"] = small.runtime.map({"ort": "float32", "ort-int8": "int8"})
        quant = pd.DataFrame(rows).merge(small[["network", "precision", "ms"]], on=["network", "precision"])
        quant["speedup"] = quant.ms.iloc[0] / quant.ms
        return {"rows": frame_rows(quant)}
    return record_frame(study.store.fetch("int8", config, compute))
