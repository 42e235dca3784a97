"""Chapter 03's compression tables (the paper's Tables 3-5) as results-store records: params and MACs of each network
pruned at each rate and policy, and each pruned layer's sparsity, counted once instead of on every run.

reduction % = 100 (1 - after / before); MACs by torch.utils.flop_counter on a zero input of the tables' size.
"""
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import models
from ..store import Store, frame_rows, record_frame
from ..surgery import prune

__all__ = ["compression_table", "criterion_gap", "paper_table", "PAPER_COLUMNS"]

# the columns of the paper's Tables 3-5, as compression_table names them
PAPER_COLUMNS = ["params (M)", "params reduction %", "MACs (M)", "FLOPs reduction %"]


def compression_table(store: Store, networks, policies, rates, *, criterion: str, input_size, num_classes: int,
                      seed: int = 0, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, layers) of every `networks` x `policies` x `rates` (gmlib.models names, random init of `seed`):
    table has one row per run (params (M), MACs (M), params and FLOPs reduction %), layers one row per pruned layer
    of each run (model, policy, rate, name, kind, out_before, out_after, sparsity)."""
    config = {"networks": list(networks), "policies": list(policies), "rates": [float(r) for r in rates],
              "criterion": criterion, "input_size": [int(s) for s in input_size], "num_classes": int(num_classes),
              "seed": int(seed)}

    def compute():
        rows, layers = [], []
        example = torch.zeros(1, *input_size)
        runs = [(n, p, r) for n in config["networks"] for p in config["policies"] for r in config["rates"]]
        for name, policy, rate in tqdm(runs, desc=f"prune ({criterion})", disable=not progress):
            model = models.create(name, num_classes=num_classes, seed=seed).eval()
            report = prune(model, example, rate, criterion=criterion, policy=policy)
            run = {"model": name, "policy": policy, "rate": rate}
            rows.append({**run, "params (M)": report.params_after / 1e6, "MACs (M)": report.macs_after / 1e6,
                         "params reduction %": report.params_reduction, "FLOPs reduction %": report.macs_reduction})
            frame = report.to_frame()[["name", "kind", "out_before", "out_after", "sparsity"]]
            layers += [{**run, **layer} for layer in frame_rows(frame)]
        return {"rows": rows, "layers": layers}
    record = store.fetch("compression", config, compute)
    return record_frame(record), pd.DataFrame(record.result["layers"])


def paper_table(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """One network's rows of `compression_table` as the paper's Tables 3-5 give them, for people: one row per rate
    (in %) and policy, the params and MACs after pruning (M) and their reductions (%)."""
    rows = table[table.model == model].sort_values(["rate", "policy"], kind="stable")
    return rows.assign(rate=rows.rate.map(lambda r: f"{r:.0%}")).set_index(["rate", "policy"])[PAPER_COLUMNS]


def criterion_gap(store: Store, a: str = "fpgm", b: str = "fpgm-sum") -> pd.DataFrame:
    """How far the stored compression tables of criteria `a` and `b` differ: for every pair of records that count
    the same networks, policies, input, head and seed with the two criteria, the largest |difference| in params and
    FLOPs reduction (points) over the (model, policy, rate) rows both hold, one row per policy, and how many rows
    were compared. Chapter 03 stores such a pair (the relaxation and the exact median); an empty frame if none."""
    cols = ["params reduction %", "FLOPs reduction %"]
    same = ("networks", "policies", "input_size", "num_classes", "seed")
    records = store.records("compression")
    frames = []
    for ra in (r for r in records if r.config["criterion"] == a):
        for rb in (r for r in records if r.config["criterion"] == b):
            if all(ra.config[k] == rb.config[k] for k in same):
                merged = record_frame(ra).merge(record_frame(rb), on=["model", "policy", "rate"], suffixes=("_a", "_b"))
                frames.append(pd.DataFrame({c: (merged[f"{c}_a"] - merged[f"{c}_b"]).abs() for c in cols})
                              .assign(policy=merged.policy))
    if not frames:
        return pd.DataFrame(columns=[*cols, "rows"])
    gaps = pd.concat(frames)
    return gaps.groupby("policy")[cols].max().assign(rows=gaps.groupby("policy").size())
