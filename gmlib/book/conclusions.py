"""The study's claims read from the store, once, for chapter 11 (all of them) and chapter 13 (set beside real data).

`study_claims` gathers what chapter 11 answers from: chapter 07's grids (their design read from its parameters
cell), chapter 08's iterative run, chapter 03's compression tables, chapter 12's allocation points and chapter 10's
int8 candidate, each chapter's parameters read with papermill so that no chapter restates another's. `side_by_side`
sets each real-data question of chapter 13 against its synthetic counterpart.
"""
from pathlib import Path

import pandas as pd

from . import compression, deployment, findings, sweeps
from ..store import Store

__all__ = ["study_claims", "chapter_11_claims", "PAIRS", "side_by_side"]


def study_claims(study, notebooks, *, profile: str, lossless: float, policy: str, iterative_rates, tolerance: float,
                 grid_from="07_pruning_rates.ipynb", compression_from="03_compression_tables.ipynb",
                 allocation_from="12_where_to_prune.ipynb", deployment_from="10_deployment.ipynb") -> tuple:
    """(claims, sources): `findings.conclusions` on the synthetic study's records, and the tables it read (frames,
    history, allocation, int8) so that a chapter can say how many points stand behind it. `notebooks` is the
    folder of the chapters whose parameters cells define the records; `profile` is the study's ("quick", ...)."""
    notebooks = Path(notebooks)
    grid, ch03, ch10, ch12 = (sweeps.defaults_of(notebooks / p) for p in (grid_from, compression_from,
                                                                          deployment_from, allocation_from))
    base = study.baseline()
    frames = sweeps.collect(study, sweeps.design_of_notebook(notebooks / grid_from, study.epoch_steps))
    found = findings.answers(frames, base.scores, lossless=lossless, main_steps=study.epoch_steps(grid["BUDGET"]))
    history = study.iterative_run(iterative_rates, criterion="fpgm", policy=policy, metric="dice_kaggle",
                                  tolerance=tolerance, seed=study.config.seed)
    tables, _ = compression.compression_table(Store(study.store.root), ch03["MODELS"], ch03["POLICIES"],
                                              ch03["RATES"], criterion=ch03["CRITERION"],
                                              input_size=ch03["INPUT_SIZE"], num_classes=ch03["NUM_CLASSES"],
                                              seed=ch03["SEED"], progress=False)
    allocation = pd.DataFrame([study.allocated_point(m, c, criterion=k, policy=ch12["POLICY"], seed=s)
                               for c in ch12["CUTS"] for m in ch12["METHODS"] for k in ch12["CRITERIA"]
                               for s in ch12["SEEDS"]])
    candidate = {k: ch10[f"CANDIDATE_{k.upper()}"] for k in ("rate", "policy", "round_to")}
    int8 = deployment.int8_verdicts(deployment.int8_seeds(
        study, *candidate.values(), calibration_batches=ch10["CALIBRATION_BATCHES"], seeds=ch10["INT8_SEEDS"],
        timed_seed=ch10["SEED"], rounds=4 * deployment.rounds_for(profile, ch10["ROUNDS"]),
        threads=ch10["THREADS"]), lossless=lossless)
    claims = findings.conclusions(found, base.scores, compression=tables, history=history, allocation=allocation,
                                  steps_per_epoch=study.epoch_steps(1), quoted=tuple(ch03["PAPER_RESNET50_40"].values()),
                                  baseline_epochs=study.config.epochs + study.config.restart_epochs, int8=int8,
                                  candidate=candidate)
    return claims, {"frames": frames, "history": history, "allocation": allocation, "int8": int8}


# chapter 13's question -> the synthetic study's question it asks again (chapter 11's wording)
PAIRS = {
    "Real cells: is 10-30 % nearly lossless?": "Is 10-30 % nearly lossless (Figure 5)?",
    "Real cells: does FPGM beat the other criteria?": "Are FPGM's filters the ones to prune?",
    "Real cells: do inherited weights beat fresh ones?": "Do inherited weights beat fresh ones (Liu et al. 2019)?",
    "Real cells: does where to prune matter?": "Does where to prune matter more than which filters go?",
    "Pretrained encoder: does chapter 07's answer change?": "Are FPGM's filters the ones to prune?",
}
# the first words of a verdict, which say its kind ("holds ...", "not shown: ...")
KINDS = ("not answered yet", "does not hold", "not decided", "not shown", "holds", "within the bar",
         "worth something", "FPGM ahead", "ahead")


def _kind(verdict: str) -> str:
    return next((k for k in KINDS if verdict.startswith(k)), verdict.split(":")[0])


def side_by_side(real: pd.DataFrame, synthetic: pd.DataFrame) -> pd.DataFrame:
    """Per paired question: the synthetic verdict (and its chapter), the real one, and whether they are of the same
    kind (their first words: "not shown" and "not shown" agree; "open" while the real stage is not stored)."""
    syn = synthetic.set_index("question")
    rows = []
    for question, theirs in PAIRS.items():
        mine = real.set_index("question")["verdict"].get(question)
        if mine is None or theirs not in syn.index:
            continue
        other = syn.loc[theirs, "verdict"]
        same = "open" if mine.startswith("not answered yet") else "yes" if _kind(mine) == _kind(other) else "no"
        rows.append({"question": question, "synthetic": other, "chapter": syn.loc[theirs, "chapter"], "real": mine,
                     "same kind of verdict": same})
    return pd.DataFrame(rows)


def chapter_11_claims(study, notebooks, chapter: str = "11_conclusions.ipynb") -> tuple:
    """`study_claims` with chapter 11's own parameters (its bar, policy, iterative run), read from its parameters
    cell: what chapter 13 sets its real-data answers against."""
    p = sweeps.defaults_of(Path(notebooks) / chapter)
    return study_claims(study, notebooks, profile=p["PROFILE"], lossless=p["LOSSLESS"], policy=p["POLICY"],
                        iterative_rates=p["ITERATIVE_RATES"], tolerance=p["TOLERANCE"], grid_from=p["GRID_FROM"],
                        compression_from=p["COMPRESSION_FROM"], allocation_from=p["ALLOCATION_FROM"],
                        deployment_from=p["DEPLOYMENT_FROM"])
