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

from .. import export, latency
from ..store import Store, frame_rows, record_frame
from ..surgery import prune
from ..verdicts import MARGINS, against_bar, decide, summarise

__all__ = ["latency_table", "op_breakdown", "int8_table", "int8_seeds", "int8_verdicts", "rounds_for",
           "recommendation"]


def rounds_for(profile: str, rounds: int | None = None) -> int:
    """Chapter 10's timed rounds: `rounds`, or 7 in the quick profile and 11 otherwise (the int8 table times 4x)."""
    return int(rounds or (7 if profile == "quick" else 11))


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
    scored on the test strips in ORT and timed (ORT float and int8, median of `rounds`, and the fastest and slowest
    round): network, precision, MB, Kaggle and positive-pair Dice, ms, ms_min, ms_max, and the speedup over the
    unpruned float network. `seed` is the fine-tuning seed and draws the calibration batches. `rounds=0` scores
    without timing (no ms or speedup columns): the records that give the candidate's Dice more seeds."""
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
            if not rounds:
                return {"rows": rows}
            models = {"unpruned": base.copy().cpu().eval(), "pruned": pruned}
            small = latency.measure(models, example, ["ort", "ort-int8"], rounds=rounds, threads=threads,
                                    names=("network",), progress=False)
        small["precision"] = small.runtime.map({"ort": "float32", "ort-int8": "int8"})
        quant = pd.DataFrame(rows).merge(small[["network", "precision", "ms", "ms_min", "ms_max"]],
                                         on=["network", "precision"])
        quant["speedup"] = quant.ms.iloc[0] / quant.ms
        return {"rows": frame_rows(quant)}
    return record_frame(study.store.fetch("int8", config, compute))


def int8_seeds(study, rate: float, policy: str, round_to: int, *, calibration_batches: int, seeds,
               timed_seed: int, rounds: int, threads: int, score_threads: int = 1) -> pd.DataFrame:
    """The candidate's Dice over fine-tuning seeds, one `int8_table` record per seed: the `timed_seed`'s record is
    the timed one (`rounds`, `threads`), the others are scored without timing on `score_threads`. One row per seed:
    seed, and for Kaggle and positive-pair Dice the candidate's loss (unpruned minus pruned, both float32 in ORT)
    and int8's cost (the pruned network's float32 minus its int8 score)."""
    rows = []
    for seed in seeds:
        timed = int(seed) == int(timed_seed)
        quant = int8_table(study, rate, policy, round_to, calibration_batches=calibration_batches, seed=int(seed),
                           rounds=rounds if timed else 0, threads=threads if timed else score_threads)
        q = quant.set_index(["network", "precision"])
        row = {"seed": int(seed), "timed": timed}
        for metric, short in (("positive-pair Dice", ""), ("Kaggle Dice", " (Kaggle)")):
            row[f"loss{short}"] = q.loc[("unpruned", "float32"), metric] - q.loc[("pruned", "float32"), metric]
            row[f"int8 cost{short}"] = q.loc[("pruned", "float32"), metric] - q.loc[("pruned", "int8"), metric]
        rows.append(row)
    return pd.DataFrame(rows)


def int8_verdicts(seeds: pd.DataFrame, *, lossless: float, margin: float = MARGINS["dice_positive"]) -> pd.DataFrame:
    """The candidate under the study's rule (`gmlib.verdicts`), positive-pair Dice over the seeds of `int8_seeds`:
    its loss against chapter 07's bar `lossless` ("within the bar", "beyond the bar" or "undecided") and int8's cost
    against zero with the equivalence `margin` ("equivalent", "ahead": int8 costs more than the margin, "behind":
    it gains more, "not separated"). Each is a family of one. Rows: comparison, mean, ci, n, p, p_holm, call."""
    loss = against_bar(pd.DataFrame([summarise(seeds["loss"], center=lossless)]), lossless)
    cost = decide(pd.DataFrame([summarise(seeds["int8 cost"])]), margin)
    return pd.concat([loss, cost], ignore_index=True).assign(comparison=["the candidate's loss", "int8's cost"])[
        ["comparison", "mean", "ci", "n", "p", "p_holm", "call"]]


def _interval(row) -> str:
    """'+0.021 ± 0.004', or '+0.021' for a single seed."""
    return f"{row['mean'] + 0:+.3f}" + (f" ± {row['ci']:.3f}" if row["n"] > 1 else "")


def _over(row) -> str:
    return (f"95 % interval over {int(row['n'])} fine-tuning seeds" if row["n"] > 1 else
            "one fine-tuning seed, so no interval")


def _setting(row) -> str:
    return f"{row.policy}, round_to={row.round_to}, in {row.runtime}"


def _timed(row) -> str:
    """'78 ms (rounds 76-81)': the median and the fastest and slowest round, one decimal under 100 ms."""
    digits = 0 if row.ms >= 100 else 1
    return f"{row.ms:.{digits}f} ms (rounds {row.ms_min:.{digits}f}-{row.ms_max:.{digits}f})"


def recommendation(table: pd.DataFrame, quant: pd.DataFrame, candidate: dict, *, called: pd.DataFrame,
                   lossless: float, timed: str, trained: str) -> str:
    """Chapter 10's advice rendered from its numbers: at the candidate's rate, the fastest setting of `table` (a
    `latency_table` of the network `timed`) and whether its lead over the runner-up exceeds the spread over rounds,
    the best of each policy in ORT, where the candidate stands, and on the network `trained`: `called`
    (`int8_verdicts`) for what the candidate costs in Dice against `lossless` (chapter 07's bar) and what int8
    costs, `quant` (the timed `int8_table`) for what int8 buys in time."""
    at = table[(table.rate == candidate["rate"]) & (table.policy != "—")].sort_values("ms")
    if at.empty:
        raise ValueError(f"the latency table has no row at the candidate's rate {candidate['rate']!r}")
    best = at.iloc[0]
    if len(at) > 1:
        second = at.iloc[1]
        lead = ("its slowest round beats the runner-up's fastest" if best.ms_max < second.ms_min else
                "within the spread over rounds, so the two are not told apart here")
        runner_up = f"The runner-up, {_setting(second)}, takes {_timed(second)}: the lead is {lead}. "
    else:
        runner_up = "It is the only setting timed at this rate. "
    ort = at[at.runtime == "ort"]
    by_policy = {p: ort[ort.policy == p].iloc[0] for p in ort.policy.unique()}
    pick = at[(at.policy == candidate["policy"]) & (at.round_to == candidate["round_to"]) & (at.runtime == "ort")]
    if pick.empty:
        raise ValueError(f"the latency table has no ORT row for the candidate {candidate!r}")
    pick = pick.iloc[0]
    q = quant.set_index(["network", "precision"])
    int8 = q.loc[("pruned", "int8")]
    fp32 = q.loc[("pruned", "float32")]
    c = called.set_index("comparison")
    loss, cost = c.loc["the candidate's loss"], c.loc["int8's cost"]
    margin = MARGINS["dice_positive"]
    cost_words = {"equivalent": f"equivalent to no cost (its interval lies inside ± {margin})",
                  "ahead": f"a cost beyond the margin of {margin} (the test separates it)",
                  "behind": f"a gain beyond the margin of {margin} (the test separates it)",
                  "not separated": f"not separated (the rule's margin: ± {margin})"}[cost["call"]]
    policies = "; ".join(f"{p}: round_to={r.round_to}, {_timed(r)}, {r.realised:.2f}× the unpruned network"
                         for p, r in by_policy.items())
    where = ("is that fastest setting" if pick.name == best.name else
             f"runs in {_timed(pick)} in ORT, {pick.ms / best.ms:.2f}× the fastest setting's time")
    return (
        f"**Timed on {timed}, at {candidate['rate']:.0%} the fastest setting is {_setting(best)}: {_timed(best)}, "
        f"{best.realised:.2f}× the unpruned network in that runtime.** {runner_up}"
        f"The best of each policy in ORT: {policies}. "
        f"The candidate taken to int8 below ({candidate['policy']}, round_to={candidate['round_to']}) {where}.\n\n"
        f"**Its Dice is measured on another network: {trained}, trained in chapter 05.** Pruned to the candidate "
        f"and fine-tuned with chapter 07's budget, it loses {_interval(loss)} positive-pair Dice ({_over(loss)}); "
        f"against chapter 07's bar of {lossless:g} for \"nearly lossless\" the study's rule "
        f"calls it {loss['call']}. int8's cost in positive-pair Dice (float minus int8, the same seeds) is "
        f"{_interval(cost)}: {cost_words}. On one seed's networks, int8 takes the candidate's ORT time from "
        f"{_timed(fp32)} to {_timed(int8)}, {fp32.ms / int8.ms:.2f}× faster.")
