"""The study's experiments: a profile's baseline and every experiment the chapters report on it, each a record of
the results store.

Three parts: gmlib.book.setup (the profile's data and training recipe), gmlib.book.records (every record's key) and
this file (what each experiment computes when its record is missing). The records: the baseline (its fp16-rounded
weights, post-processing, validation and test scores, learning curve), each pruned point (scores right after
pruning and after BatchNorm recalibration), each fine-tuned point, each from-scratch control, sensitivity tables,
allocations, the iterative run. A chapter asks for a record by configuration and gets the stored one, or computes
and stores it when it is missing (never in a read-only store). Validation strips pick the best epoch, the
post-processing and every choice among pruned networks (the fine-tuning learning rate, the iterative run's end and
step: "finetuned_val" records hold the fine-tuned points' validation scores); every reported score is on the test
strips.
"""
import copy
import dataclasses
import time
from functools import partial
from pathlib import Path

import pandas as pd
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .. import metrics, models, train
from ..allocation import allocate, sensitivity, table_from_rows, table_rows
from ..schedule import iterative, prune_and_score, scalars
from ..store import fp16_state
from ..surgery import prune
from .profiles import (PROFILES, REPRODUCE_BAND, SENSITIVITY_RATES, SENSITIVITY_STRIPS, THRESHOLDS, Baseline,
                       BaselineConfig, FinetuneConfig, plateaued)
from .setup import StudySetup, pretrained_sha256

__all__ = ["BaselineConfig", "FinetuneConfig", "PROFILES", "Baseline", "Study", "plateaued"]


class Study(StudySetup):
    """A profile's baseline and the experiments the chapters report on it, each a record of the store
    (`records` builds every key): pruned and fine-tuned points, from-scratch controls, per-set sensitivity and
    allocations, the iterative run. Arguments: those of gmlib.book.setup.StudySetup."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._baseline = None

    def default_postprocess(self) -> dict:
        """The baseline's post-processing, tuned on the validation strips: what every score of the study uses."""
        return self.baseline().postprocess

    # ------------------------------------------------------------------------------------------------ baseline
    def baseline_config(self) -> dict:
        """The baseline record's config (gmlib.book.records): the profile, the pretrained file's hash, the data."""
        sha = pretrained_sha256(self.config.pretrained) if self.config.pretrained else None
        return self.records.baseline(self.data_identity(), sha)

    def key(self) -> str:
        return self.records.key("baseline", self.baseline_config())

    def baseline(self) -> Baseline:
        """The trained baseline of this configuration: read from the store, or trained, rounded to fp16, tuned,
        scored and stored when missing. Kept in memory after the first call."""
        if self._baseline is None:
            trained_now = []

            def compute():
                trained_now.append(True)
                return self._train()
            record = self.records.fetch("baseline", self.baseline_config(), compute)
            self.resume_path().unlink(missing_ok=True)  # the record is safe: the training state has done its job
            model = self._load_weights(models.create(self.config.arch), record.tensors())
            r = record.result
            self._baseline = Baseline(model.eval(), r["postprocess"], r["test"], r["val"], r["test_raw"],
                                      pd.DataFrame(r["history"]), record.path, record.key, r["train_seconds"],
                                      bool(trained_now))
        return self._baseline

    def resume_path(self) -> Path:
        """Where the baseline's training state goes after every epoch while it trains (results_dir/training/<key>.pt):
        a killed training, run again, resumes at the next epoch. Removed once the record is stored."""
        return self.results_dir / "training" / f"{self.key()}.pt"

    def _load_weights(self, model, tensors):
        """`tensors` into `model`, which goes to the study's device."""
        model.load_state_dict(tensors)  # copy_ casts the fp16 weights to the model's float32
        return model.to(self.device)

    def _train(self):
        cfg = self.config
        if cfg.restart_epochs:
            return self._train_restart()
        model = models.create(cfg.arch, seed=cfg.seed, pretrained=cfg.pretrained or None)
        start = time.perf_counter()
        history = self.fit(model, resume=self.resume_path())  # saved before post-processing is tuned
        return self.finish_baseline(model, history, time.perf_counter() - start)

    def _train_restart(self):
        """The first cycle's baseline (its own record), then `restart_epochs` more from its weights at
        `restart_lr`; the restart's best epoch is kept if it beats the first cycle's best, else the first cycle's."""
        cfg = self.config
        first = Study((dataclasses.replace(cfg, restart_epochs=0, restart_lr=0.0), self.finetune_config),
                      self.data_dir, self.results_dir, store_dir=self.store.root, device=self.device,
                      progress=self.progress, workers=self.workers).baseline()
        model = first.copy()
        start = time.perf_counter()
        more = train.fit(model, self.train_loader(cfg.seed + 1), self.val_loader, epochs=cfg.restart_epochs,
                         lr=cfg.restart_lr, weight_decay=cfg.weight_decay, device=self.device, seed=cfg.seed + 1,
                         monitor=cfg.monitor, loss_fn=self.loss_fn, resume=self.resume_path(),
                         progress=self.progress)
        column = f"val_{cfg.monitor}"
        improved = more[column].max() > first.history[column].max()
        if not improved:
            model = first.copy()
        history = pd.concat([first.history, more.assign(epoch=more.epoch + len(first.history))], ignore_index=True)
        scores = history[column].astype(float)
        history["best"] = scores > scores.cummax().shift(fill_value=-float("inf"))  # a new best over both cycles
        return self.finish_baseline(model, history, first.seconds + time.perf_counter() - start)

    def finish_baseline(self, model: nn.Module, history: pd.DataFrame, seconds: float):
        """(result, fp16 weights) of a trained baseline: the weights rounded to fp16 once (what every chapter then
        uses), the post-processing tuned on the validation strips, scores on validation and test."""
        half = fp16_state(model)
        model = self._load_weights(model, half).eval()
        post = self.tune_postprocess(model)
        rows = _history_rows(history)
        raw = {"threshold": [0.5] * 4, "min_area": None}
        result = {"postprocess": post, "val": self.evaluate(model, post, "val"),
                  "test": self.evaluate(model, post, "test"), "test_raw": self.evaluate(model, raw, "test"),
                  "history": rows, "train_seconds": seconds}
        return result, half

    # ------------------------------------------------------------------------------------------------ experiments
    def _pruned_config(self, criterion, rate, policy, seed):
        return self.records.pruned(self.baseline().key, criterion, rate, policy, seed)

    def _finetuned_config(self, criterion, rate, policy, seed, steps, lr):
        return self.records.finetuned(self.baseline().key, criterion, rate, policy, seed, steps, lr)

    def _sized(self, prune_it) -> dict:
        """Sizes and scores right after pruning and after recalibration, of `prune_it(evaluate_before=True)`."""
        _, report, scores, _ = prune_it(True)
        return {"params": report.params_after, "macs": report.macs_after,
                "params_reduction": 100.0 * (1 - report.params_after / report.params_before),
                "macs_reduction": report.macs_reduction, **scores}

    def _tuned(self, prune_it, seed, steps=None, lr=None) -> dict:
        """Test scores after fine-tuning `prune_it(evaluate_before=False)`'s network with `seed`."""
        pruned, *_ = prune_it(False)
        history = self.finetune(pruned, seed, steps=steps, lr=lr)
        return {**scalars(self.evaluate(pruned), "_after"), "train_loss": float(history["train_loss"].iloc[-1])}

    def _prune(self, criterion, rate, policy, seed, evaluate_before):
        base = self.baseline()
        return prune_and_score(base.model, self.example_input(), rate, evaluate=self.evaluate,
                               recalibrate=self.recalibrate, criterion=criterion, policy=policy, seed=seed,
                               evaluate_before=evaluate_before, **self.prune_kwargs(criterion, base.model))

    def pruned_point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0) -> dict:
        """Sizes and test scores of the baseline pruned at `rate`: right after pruning (`<score>_before`) and after
        BatchNorm recalibration (`<score>_recal`). Stored; `seed` matters for the random criterion only."""
        prune_it = partial(self._prune, criterion, rate, policy, seed)
        return self.records.fetch("pruned", self._pruned_config(criterion, rate, policy, seed),
                                  partial(self._sized, prune_it)).result

    def finetuned_point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
                        steps: int | None = None, lr: float | None = None) -> dict:
        """Test scores (`<score>_after`) of the pruned, recalibrated network after fine-tuning with `seed` for
        `steps` at `lr` (default FinetuneConfig). Stored."""
        steps, lr = self.records.budget(steps, lr)
        config = self._finetuned_config(criterion, rate, policy, seed, steps, lr)
        prune_it = partial(self._prune, criterion, rate, policy, seed)
        return self.records.fetch("finetuned", config, partial(self._tuned, prune_it, seed, steps, lr)).result

    def finetuned_validation(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
                             steps: int | None = None, lr: float | None = None) -> dict:
        """Validation scores of `finetuned_point`'s network, and the post-processing re-tuned for it. Stored as a
        "finetuned_val" record keyed by the fine-tuned point's own configuration (its record is left as it is).

        The fine-tune is recomputed (deterministic) and scored on the test strips first (`test`). On the CPU kind
        that computed the stored point, its test scores equal the stored ones bit for bit, which shows it is the same
        network (`same_network`); another CPU's kernels round differently and fine-tuning carries that into the
        second or third decimal, so there it is the same recipe re-run, and a Dice more than REPRODUCE_BAND from the
        stored one is an error. Then, with the baseline's post-processing, the validation scores (`val`: what a choice among
        fine-tuned points reads); and the post-processing re-tuned on the validation strips for this network
        (`retuned`: threshold and min_area, and the test scores with it), to measure what reusing the baseline's
        costs. Returns {"val", "test", "same_network", "retuned": {"postprocess", "test"}}; scores `<score>_after`.
        """
        steps, lr = self.records.budget(steps, lr)
        config = self._finetuned_config(criterion, rate, policy, seed, steps, lr)

        def compute():
            stored = self.finetuned_point(criterion, rate, policy=policy, seed=seed, steps=steps, lr=lr)
            pruned = self._pruned_copy(criterion, rate, policy, seed)
            self.finetune(pruned, seed, steps=steps, lr=lr)
            base_post = self.baseline().postprocess
            tuner = metrics.PostprocessTuner(thresholds=THRESHOLDS, min_areas=self.min_areas())
            val = self.evaluate_many(pruned, {"base": base_post}, "val", tuner=tuner)["base"]
            post = tuner.compute()
            post = {"threshold": post["threshold"], "min_area": post["min_area"]}
            test = self.evaluate_many(pruned, {"base": base_post, "retuned": post}, "test")
            now = scalars(test["base"], "_after")
            far = [k for k in ("dice_kaggle_after", "dice_positive_after") if abs(now[k] - stored[k]) > REPRODUCE_BAND]
            if far:
                raise RuntimeError(f"the recomputed fine-tune of {config} is not the stored network: "
                                   + ", ".join(f"{k} {now[k]!r} now, {stored[k]!r} stored" for k in far))
            return {"val": scalars(val, "_after"), "test": now, "same_network": all(now[k] == stored[k] for k in now),
                    "retuned": {"postprocess": post, "test": scalars(test["retuned"], "_after")}}
        return self.records.fetch("finetuned_val", config, compute).result

    def _pruned_copy(self, criterion, rate, policy, seed):
        """A copy of the pruned and recalibrated network (`_prune`), the last one kept: the seeds of a deterministic
        criterion share it."""
        key = self.records.pruned_copy_tag(self.baseline().key, criterion, rate, policy, seed)
        if getattr(self, "_last_pruned", (None, None))[0] != key:
            self._last_pruned = (key, self._prune(criterion, rate, policy, seed, False)[0])
        return copy.deepcopy(self._last_pruned[1])

    def point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
              steps: int | None = None, lr: float | None = None) -> dict:
        """One row of the study: the pruned point and its fine-tuned seed, both from the store (or computed)."""
        budget = self.records.budget(steps, lr)
        return {"criterion": criterion, "policy": policy, "rate": float(rate), "seed": seed,
                "steps": budget[0], "lr": budget[1],
                **self.pruned_point(criterion, rate, policy=policy, seed=seed),
                **self.finetuned_point(criterion, rate, policy=policy, seed=seed, steps=steps, lr=lr)}

    def points(self, grid, desc: str = "points") -> pd.DataFrame:
        """`point(**p)` for every dict `p` of `grid`, one row each; missing ones are computed (and stored) in turn,
        so a killed run resumes at the first point it had not finished."""
        grid = [{"policy": "or-merge", "seed": 0, "steps": None, "lr": None, **p} for p in grid]
        missing = [p for p in grid if not self.is_stored(p)]
        bar = tqdm(total=len(missing), desc=f"{desc} to compute", mininterval=10,
                   disable=not self.progress or not missing)  # no bar when all are stored (nbval, a reader)
        rows = []
        for p in grid:
            rows.append(self.point(**p))
            bar.update(p in missing)
        bar.close()
        return pd.DataFrame(rows)

    def is_stored(self, p: dict) -> bool:
        """Whether every record of point `p` (`point` arguments, or a `gmlib.book.sweeps` point) is in the store."""
        criterion, rate, policy, seed = p["criterion"], p["rate"], p.get("policy", "or-merge"), p.get("seed", 0)
        if p.get("kind", "pruned") == "scratch":
            arch, budget = self._scratch_configs(criterion, rate, policy, seed, p.get("steps"), p.get("lr"), "budget")
            records = [("finetuned", self.records.scratch_budget(arch, budget))]
        else:
            steps, lr = self.records.budget(p.get("steps"), p.get("lr"))
            records = [("pruned", self._pruned_config(criterion, rate, policy, seed)),
                       ("finetuned", self._finetuned_config(criterion, rate, policy, seed, steps, lr))]
        return all(self.records.get(kind, config) is not None for kind, config in records)

    def _scratch_configs(self, criterion, rate, policy, seed, steps, lr, recipe):
        return self.records.scratch(self.baseline().key, criterion, rate, policy, seed, steps, lr, recipe)

    def scratch_point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
                      steps: int | None = None, lr: float | None = None, recipe: str = "budget") -> dict:
        """The from-scratch control (Liu et al. 2019): the architecture `criterion` leaves at `rate` with fresh
        weights (init seed 100 + `seed`). Test scores `<score>_after`. Stored.

        recipe "budget": trained for the pruned twin's fine-tuning budget only (`steps`, with the baseline's lr
        unless `lr` is given, cosine to 0, the same crops as the twin's seed): what inherited weights are worth at
        that budget is the twin's score minus this one. recipe "full" (Scratch-B): trained with the baseline's
        whole recipe first (those weights stored once, shared by every budget), then given the twin's budget.
        """
        if recipe not in ("budget", "full"):
            raise ValueError(f"recipe must be 'budget' or 'full', got {recipe!r}")
        arch, budget = self._scratch_configs(criterion, rate, policy, seed, steps, lr, recipe)
        steps, lr = budget["steps"], budget["lr"]
        pruned = self._architecture(criterion, rate, policy, seed)
        if recipe == "budget":
            def compute():
                model = self.scratch_like(pruned, seed=100 + seed)
                self.finetune(model, seed, steps=steps, lr=lr)
                return scalars(self.evaluate(model), "_after")
            config = self.records.scratch_budget(arch, budget)
        else:
            def train_scratch():
                model = self.scratch_like(pruned, seed=100 + seed)
                start = time.perf_counter()
                history = self.fit(model, seed=100 + seed)
                return ({"history": _history_rows(history), "train_seconds": time.perf_counter() - start},
                        fp16_state(model))
            trained = self.records.fetch("scratch", arch, train_scratch)

            def compute():
                model = self._load_weights(self.scratch_like(pruned, seed=100 + seed), trained.tensors())
                self.finetune(model, seed, steps=steps, lr=lr)
                return scalars(self.evaluate(model), "_after")
            config = self.records.scratch_full(arch, trained.key, budget)
        tuned = self.records.fetch("finetuned", config, compute)
        return {"criterion": "scratch", "recipe": recipe, "architecture": criterion, "policy": policy,
                "rate": float(rate), "seed": seed, "steps": steps, "lr": lr, **tuned.result}

    # ------------------------------------------------------------------------------------------------ allocation
    def sensitivity_table(self, criterion: str = "fpgm", *, policy: str = "or-merge", rates=SENSITIVITY_RATES,
                          strips: int = SENSITIVITY_STRIPS) -> pd.DataFrame:
        """gmlib.allocation.sensitivity of the baseline: each coupling set pruned alone at `rates`, recalibrated,
        scored by positive-pair Dice (baseline post-processing) on the first `strips` validation strips. Stored;
        while it is computed, results_dir/sensitivity/<key>.json keeps every score, so a killed run resumes."""
        config = self.records.sensitivity(self.baseline().key, criterion, policy, rates, strips)
        cache = self.results_dir / "sensitivity" / f"{self.records.key('sensitivity', config)}.json"

        def compute():
            base = self.baseline()
            post = base.postprocess
            loader = DataLoader(Subset(self.val_set, range(min(strips, len(self.val_set)))),
                                batch_size=16, **self._loader_options())

            def evaluate(model):
                return train.evaluate(model, loader, device=self.device, threshold=post["threshold"],
                                      min_area=post["min_area"], loss_fn=self.loss_fn)["dice_positive"]
            table = sensitivity(base.model, self.example_input(), evaluate, recalibrate=self.recalibrate,
                                rates=rates, cache=cache, progress=self.progress, criterion=criterion,
                                policy=policy, **self.prune_kwargs(criterion, base.model))
            return {"rows": table_rows(table), "baseline_score": table.attrs["baseline_score"]}
        record = self.records.fetch("sensitivity", config, compute)
        return table_from_rows(record.result["rows"], record.result["baseline_score"])

    def allocation(self, method: str, cut: float, *, criterion: str = "fpgm", policy: str = "or-merge",
                   seed: int = 0) -> dict:
        """gmlib.allocate on the baseline for a `cut` share of its MACs: "uniform", "random" (`seed` draws it) or
        "sensitivity" (on `criterion`'s stored table). {"rates": {set index: rate}, "reached", "threshold"}. Stored."""
        config = self.records.allocation(self.baseline().key, method, cut, criterion, policy, seed)

        def compute():
            base = self.baseline()
            table = self.sensitivity_table(criterion, policy=policy) if method == "sensitivity" else None
            result = allocate(base.model, self.example_input(), "macs", cut, method=method, seed=seed, table=table,
                              progress=False, criterion=criterion, policy=policy,
                              **self.prune_kwargs(criterion, base.model))
            return {"rates": {str(i): r for i, r in result.rates.items()}, "reached": result.reached,
                    "threshold": result.threshold}
        return self.records.fetch("allocation", config, compute).result

    def allocated_point(self, method: str, cut: float, *, criterion: str = "fpgm", policy: str = "or-merge",
                        seed: int = 0, allocation_seed: int | None = None) -> dict:
        """Chapter 12's row: the baseline pruned with `allocation(method, cut)`'s rates by `criterion`, scored on the
        test strips right after pruning, after recalibration and after fine-tuning (FinetuneConfig, `seed`).
        `allocation_seed` draws a random allocation (default: `seed`). Stored (a pruned and a finetuned record)."""
        alloc_seed = seed if allocation_seed is None else allocation_seed
        chosen = self.allocation(method, cut, criterion=criterion, policy=policy, seed=alloc_seed)
        rates = {int(i): r for i, r in chosen["rates"].items()}
        config, tuned_config = self.records.allocated(self.baseline().key, method, cut, alloc_seed, chosen["rates"],
                                                      criterion, policy, seed)

        def prune_it(evaluate_before):
            base = self.baseline()
            return prune_and_score(base.model, self.example_input(), lambda entry: rates.get(entry.index, 0.0),
                                   evaluate=self.evaluate, recalibrate=self.recalibrate, criterion=criterion,
                                   policy=policy, evaluate_before=evaluate_before,
                                   **self.prune_kwargs(criterion, base.model))
        pruned = self.records.fetch("pruned", config, partial(self._sized, prune_it)).result
        tuned = self.records.fetch("finetuned", tuned_config, partial(self._tuned, prune_it, seed)).result
        return {"method": method, "cut": float(cut), "criterion": criterion, "policy": policy, "seed": seed,
                "reached": chosen["reached"], **pruned, **tuned}

    def _architecture(self, criterion, rate, policy, seed):
        """The baseline pruned at `rate` (sizes only matter: the from-scratch controls re-initialise it)."""
        pruned = copy.deepcopy(self.baseline().model)
        prune(pruned, self.example_input(), rate, criterion=criterion, policy=policy, seed=seed, count_macs=False,
              verify=False, **self.prune_kwargs(criterion, pruned))
        return pruned

    def reseeded(self, seed: int) -> "Study":
        """The same study around the baseline trained with another seed (its own record)."""
        return Study((self.config, self.finetune_config), self.data_dir, self.results_dir, store_dir=self.store.root,
                     device=self.device, progress=self.progress, workers=self.workers, seed=seed)

    def iterative_run(self, rates, *, criterion: str = "fpgm", policy: str = "or-merge", metric: str = "dice_kaggle",
                      tolerance: float | None = None, macs_target: float | None = None, seed: int = 0) -> pd.DataFrame:
        """The history of `gmlib.iterative` on the baseline (prune, recalibrate, fine-tune with FinetuneConfig, one
        row per step): test scores at every stage (`<score>_before`, `_recal`, `_after`), which only report, and
        validation scores after fine-tuning (`val_<score>`, the baseline's post-processing), which the end condition
        (`metric` within `tolerance` of the unpruned network's) and the chosen step read. Stored; while it is
        computed, every finished step is also checkpointed under results_dir/iterative/<key>/, so a killed run
        resumes after its last finished step."""
        config = self.records.iterative(self.baseline().key, rates, criterion, policy, metric, tolerance, macs_target,
                                        seed)
        folder = self.results_dir / "iterative" / self.records.key("iterative", config)

        def compute():
            base = self.baseline()
            run = iterative(base.model, self.example_input(), rates, finetune=self.finetune, evaluate=self.evaluate,
                            recalibrate=self.recalibrate, metric=metric, tolerance=tolerance, macs_target=macs_target,
                            criterion=criterion, policy=policy, seed=seed, checkpoint_dir=folder,
                            reference=base.scores, validate=partial(self.evaluate, split="val"),
                            validation_reference=base.val_scores, progress=self.progress,
                            **self.prune_kwargs(criterion, base.model))
            return {"history": _history_rows(run.history), "chosen_step": run.chosen_step}
        record = self.records.fetch("iterative", config, compute)
        history = pd.DataFrame(record.result["history"])
        history.attrs["chosen_step"] = record.result["chosen_step"]
        return history


def _history_rows(frame: pd.DataFrame) -> list:
    return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in frame.to_dict("records")]
