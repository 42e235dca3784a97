"""The real-data arm: the study's questions asked of an ImageNet-pretrained MobileNetV2 on real solar-cell defects.

Every experiment is a store record keyed by its whole configuration: the baselines (pretrained or random init, at a
resolution), each pruned point (scores right after pruning and after BatchNorm recalibration, and how much of the
baseline's function it keeps on the test cells), each fine-tuned point and each from-fresh-weights control.
Validation cells choose (best epoch, learning rate); the test cells only report.
"""
import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import export
from .. import pretrained as weights
from ..allocation import allocate, sensitivity, table_from_rows, table_rows
from ..latency import measure
from ..complexity import count
from ..classify import agreement, balanced_class_weights, class_probabilities, classifier_scores, fit_classifier
from ..data.elpv import PROBABILITIES, ElpvDataset, elpv_split, load_elpv
from ..recalibrate import recalibrate_bn
from ..store import Store, fp16_state
from ..surgery import prune
from ..utils import default_device

__all__ = ["ElpvRecipe", "ElpvBaseline", "ElpvStudy", "fresh_init", "DESIGN", "chosen_setup", "chosen_lr",
           "planned_points"]

N_GRADES = len(PROBABILITIES)
HEADS = {"probability": 1, "grades": N_GRADES}  # outputs of each head
RECAL_SEED = 10_000  # the training batches that re-estimate BatchNorm statistics: the same for every pruned network


@dataclass(frozen=True)
class ElpvRecipe:
    """Everything that decides a baseline: split, resolution, network start and training recipe."""
    size: int = 128             # cells are resized once from 300 x 300
    # "probability": one output regressing the expert's defect probability (binary cross-entropy on the soft
    # target, the two binary classes weighted alike); "grades": a softmax over the four grades, each weighted alike
    head: str = "probability"
    pretrained: bool = True     # ImageNet weights (checked file) or torchvision's random init
    epochs: int = 16
    lr: float = 1e-3            # AdamW one-cycle peak
    weight_decay: float = 1e-4
    batch_size: int = 32
    seed: int = 0               # head init, batches, augmentation
    split_seed: int = 0
    val_fraction: float = 0.15  # of the train part, for every choice
    test_fraction: float = 0.25
    recal_batches: int = 10     # after pruning


@dataclass
class ElpvBaseline:
    """A trained baseline: network (eval mode, fp16-rounded weights), its scores and learning curve."""
    model: nn.Module
    val: dict
    test: dict
    history: pd.DataFrame
    key: str
    seconds: float
    macs: int
    params: int
    probabilities: dict = dataclasses.field(default_factory=dict)  # split -> its outputs, the reference of agreement


def fresh_init(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights in place, with torchvision's MobileNetV2 initialisation (conv: Kaiming normal, fan out;
    norms: 1 and 0; linear: N(0, 0.01)), whatever the widths: the from-scratch control of Liu et al. (2019)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.01, generator=gen)
                m.bias.zero_()
    return model


class ElpvStudy:
    """ELPV's split, loaders and stored experiments on MobileNetV2.

    Args:
        store_dir: the results store (read-only under GMLIB_STORE_READONLY=1).
        recipe: the baseline's ElpvRecipe; fields can be overridden by keyword (a new configuration, a new key).
        data_root: a folder in the elpv_dataset layout (default: the installed package); `limit` reads only the
            first n cells (the tests' smoke path).
        seg_data_dir, results_dir, seg_profile: the synthetic strips, results folder and Study profile of the
            segmentation stages.
    """

    def __init__(self, store_dir="../data/store", recipe: ElpvRecipe = ElpvRecipe(), *, data_root=None,
                 limit: int | None = None, device=None, progress: bool = True, seg_data_dir="../data/synthetic",
                 results_dir="../results", seg_profile: str = "quick", **overrides):
        fields = {f.name for f in dataclasses.fields(ElpvRecipe)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown ElpvRecipe field(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(sorted(fields))}")
        self.recipe = dataclasses.replace(recipe, **overrides)
        self.store, self.progress = Store(store_dir), progress
        self.device = torch.device(device) if device is not None else default_device()
        self.data = load_elpv(data_root, limit)
        r = self.recipe
        self.train_idx, self.val_idx, self.test_idx = elpv_split(
            self.data.classes, self.data.types, test_fraction=r.test_fraction, val_fraction=r.val_fraction,
            seed=r.split_seed)
        self.train_set = ElpvDataset(self.data, self.train_idx, r.size, augment=True)
        self.plain_train_set = ElpvDataset(self.data, self.train_idx, r.size)
        self.val_set, self.test_set = (ElpvDataset(self.data, i, r.size) for i in (self.val_idx, self.test_idx))
        if self.recipe.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.recipe.head!r}")
        labels = self.data.classes[self.train_idx]
        self.outputs = HEADS[self.recipe.head]
        self.class_weights = balanced_class_weights((labels >= 2).astype(int), 2) if self.outputs == 1 else \
            balanced_class_weights(labels, N_GRADES)
        self._baselines, self._identity = {}, None
        self.seg_data_dir, self.results_dir, self.seg_profile, self._seg = seg_data_dir, results_dir, seg_profile, {}

    # ------------------------------------------------------------------------------------------------ data
    def train_loader(self, seed: int) -> DataLoader:
        """One epoch of augmented training cells in an order drawn from `seed` (the flips and turns too)."""
        self.train_set.generator.manual_seed(seed)
        return DataLoader(self.train_set, batch_size=self.recipe.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(seed))

    def loader(self, split: str) -> DataLoader:
        sets = {"val": self.val_set, "test": self.test_set, "train": self.plain_train_set}
        if split not in sets:
            raise ValueError(f"split must be one of {', '.join(sets)}, got {split!r}")
        return DataLoader(sets[split], batch_size=64)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.recipe.size, self.recipe.size, device=self.device)

    def data_identity(self) -> dict:
        if self._identity is None:  # hashed once: every record's key holds it
            self._identity = {"elpv": self.data.fingerprint(), "cells": len(self.data.classes)}
        return dict(self._identity)

    # ------------------------------------------------------------------------------------------------ scoring
    def probabilities(self, model: nn.Module, split: str) -> torch.Tensor:
        return class_probabilities(model, self.loader(split), device=self.device)[0]

    def scores(self, model: nn.Module, split: str, reference: torch.Tensor | None = None) -> dict:
        """Binary accuracy and balanced accuracy, grade accuracy and loss on a split; with `reference` (the
        baseline's probabilities on that split) also the agreement with it."""
        probs, labels = class_probabilities(model, self.loader(split), device=self.device)
        out = classifier_scores(probs, labels, class_weights=self.class_weights)
        if reference is not None:
            out.update(agreement(probs, reference))
        return out

    def _both(self, model, suffix, base=None) -> dict:
        out = {}
        for split in ("val", "test"):
            ref = None if base is None else self._reference(base, split)
            out.update({f"{split}_{k}{suffix}": v for k, v in self.scores(model, split, ref).items()})
        return out

    def _reference(self, base: ElpvBaseline, split: str) -> torch.Tensor:
        if split not in base.probabilities:
            base.probabilities[split] = self.probabilities(base.model, split)
        return base.probabilities[split]

    # ------------------------------------------------------------------------------------------------ baselines
    def baseline_config(self, **overrides) -> dict:
        recipe = dataclasses.replace(self.recipe, **overrides)
        config = dataclasses.asdict(recipe)
        if recipe.pretrained:
            config["pretrained"] = {"sha256": weights.MOBILENET_V2.sha256}
        return {"arch": "torchvision:mobilenet_v2", "outputs": HEADS[recipe.head], "recipe": config,
                "data": self.data_identity()}

    def fit(self, model: nn.Module, epochs: int, lr: float, seed: int, validate: bool, resume=None) -> pd.DataFrame:
        r = self.recipe
        return fit_classifier(model, self.train_loader(seed), self.loader("val") if validate else None,
                              epochs=epochs, lr=lr, weight_decay=r.weight_decay, class_weights=self.class_weights,
                              seed=seed, device=self.device, progress=self.progress, resume=resume)

    def baseline(self, **overrides) -> ElpvBaseline:
        """The baseline of this recipe (fields overridden, e.g. pretrained=False or size=224): read from the store,
        or trained (best epoch on validation), rounded to fp16, scored and stored."""
        config = self.baseline_config(**overrides)
        key = self.store.path("elpv_baseline", config).stem
        if key in self._baselines:
            return self._baselines[key]
        recipe = dataclasses.replace(self.recipe, **overrides)
        if (recipe.size, recipe.head) != (self.recipe.size, self.recipe.head):  # other cells or class weights
            return ElpvStudy(self.store.root, recipe, device=self.device, progress=self.progress,
                             results_dir=self.results_dir).baseline()

        def compute():
            torch.manual_seed(recipe.seed)
            model = weights.mobilenet_v2(HEADS[recipe.head], pretrained=recipe.pretrained)
            if not recipe.pretrained:
                fresh_init(model, recipe.seed)
            resume.parent.mkdir(parents=True, exist_ok=True)
            history = self.fit(model, recipe.epochs, recipe.lr, recipe.seed, validate=True, resume=resume)
            seconds = float(history["seconds"].sum())  # training only, over every (resumed) run
            half = fp16_state(model)
            model.load_state_dict(half)
            return {**self._both(model, ""), "history": history.to_dict("records"), "train_seconds": seconds}, half

        # the training state after every epoch: a killed training, run again, resumes; removed once stored
        resume = Path(self.results_dir) / "training" / f"elpv-{key}.pt"
        record = self.store.fetch("elpv_baseline", config, compute)
        resume.unlink(missing_ok=True)
        base = self._from_record(record, recipe)
        base.model.load_state_dict(record.tensors())
        base.model = base.model.to(self.device).eval()
        self._baselines[key] = base
        return base

    def baseline_scores(self, **overrides) -> ElpvBaseline | None:
        """A stored baseline's scores, curve, time and size with its untrained network, neither its weights nor its
        cells read (None when it is not stored): what the choices stage compares at another head or resolution."""
        record = self.store.get("elpv_baseline", self.baseline_config(**overrides))
        return None if record is None else self._from_record(record, dataclasses.replace(self.recipe, **overrides))

    @staticmethod
    def _from_record(record, recipe: ElpvRecipe) -> ElpvBaseline:
        model = weights.mobilenet_v2(HEADS[recipe.head], pretrained=False).eval()
        params, macs = count(model, (3, recipe.size, recipe.size))
        r = record.result
        return ElpvBaseline(model, {k[4:]: v for k, v in r.items() if k.startswith("val_")},
                            {k[5:]: v for k, v in r.items() if k.startswith("test_")},
                            pd.DataFrame(r["history"]), record.key, r["train_seconds"], macs, params)

    # ------------------------------------------------------------------------------------------------ pruning
    def recalibrate(self, model: nn.Module) -> nn.Module:
        n = self.recipe.recal_batches
        return recalibrate_bn(model, self.train_loader(RECAL_SEED), n, device=self.device)

    def _pruned(self, base, criterion, rate, seed):
        model = copy.deepcopy(base.model)
        report = prune(model, self.example_input(), rate, criterion=criterion, seed=seed)
        sizes = {"params": report.params_after, "macs": report.macs_after,
                 "params_reduction": 100.0 * (1 - report.params_after / report.params_before),
                 "macs_reduction": report.macs_reduction}
        return model, sizes

    def _point_config(self, base, criterion, rate, seed, **more) -> dict:
        return {"baseline": base.key, "criterion": criterion, "rate": float(rate),
                "seed": int(seed) if criterion == "random" else 0, "recal_batches": self.recipe.recal_batches, **more}

    def _fetch(self, kind: str, config: dict, compute, run: bool):
        if not run:
            record = self.store.get(kind, config)
            return None if record is None else record.result
        return self.store.fetch(kind, config, compute).result

    def pruned_point(self, criterion: str, rate: float, *, seed: int = 0, pretrained: bool = True,
                     compute: bool = True) -> dict | None:
        """Sizes, and scores right after pruning (`_before`) and after BatchNorm recalibration (`_recal`) on val and
        test, with each one's agreement with the baseline (what the criterion kept of its function). Stored;
        `compute=False` returns None instead of computing a missing point."""
        base = self.baseline(pretrained=pretrained)
        return self._fetch("elpv_pruned", self._point_config(base, criterion, rate, seed),
                           lambda: self.pruned_scores(criterion, rate, seed=seed, pretrained=pretrained), compute)

    def pruned_scores(self, criterion: str, rate: float, *, seed: int = 0, pretrained: bool = True) -> dict:
        """What `pruned_point` stores, computed now and written nowhere (the store's reproducibility test)."""
        base = self.baseline(pretrained=pretrained)
        model, sizes = self._pruned(base, criterion, rate, seed)
        out = {**sizes, **self._both(model, "_before", base)}
        self.recalibrate(model)
        return {**out, **self._both(model, "_recal", base)}

    def finetuned_point(self, criterion: str, rate: float, *, seed: int = 0, epochs: int = 2, lr: float = 3e-4,
                        pretrained: bool = True, compute: bool = True) -> dict | None:
        """The pruned, recalibrated network fine-tuned `epochs` at `lr` (fine-tuning seed `seed`; the last epoch
        kept), scored on val and test (`_after`) with the agreement with the baseline. Stored."""
        base = self.baseline(pretrained=pretrained)
        config = self._point_config(base, criterion, rate, seed, finetune_seed=int(seed), epochs=int(epochs),
                                    lr=float(lr))

        def work():
            model, sizes = self._pruned(base, criterion, rate, seed)
            self.recalibrate(model)
            start = time.perf_counter()
            self.fit(model, epochs, lr, seed, validate=False)
            return {**sizes, **self._both(model, "_after", base), "finetune_seconds": time.perf_counter() - start}
        return self._fetch("elpv_finetuned", config, work, compute)

    def fresh_point(self, rate: float, *, seed: int = 0, epochs: int = 2, lr: float | None = None,
                    criterion: str = "fpgm", compute: bool = True) -> dict | None:
        """The architecture `criterion` leaves at `rate`, from fresh random weights, trained the same epochs
        (at the baseline's lr unless given): what the inherited weights are worth. Stored."""
        base = self.baseline()
        lr = self.recipe.lr if lr is None else float(lr)
        config = {"baseline": base.key, "criterion": criterion, "rate": float(rate), "init_seed": int(seed),
                  "epochs": int(epochs), "lr": lr}

        def work():
            model, sizes = self._pruned(base, criterion, rate, 0)
            fresh_init(model, seed)
            start = time.perf_counter()
            self.fit(model, epochs, lr, seed, validate=False)
            return {**sizes, **self._both(model, "_after"), "train_seconds": time.perf_counter() - start}
        return self._fetch("elpv_scratch", config, work, compute)

    # ------------------------------------------------------------------------------------------------ where to prune
    def sensitivity_table(self, criterion: str = "fpgm") -> pd.DataFrame:
        """gmlib.allocation.sensitivity of the pretrained baseline: each coupling set pruned alone at
        DESIGN["sensitivity_rates"], recalibrated, scored by minus the validation loss (smoother than accuracy on
        295 cells; the test cells play no part). Stored; a killed run resumes from results_dir/sensitivity/."""
        base = self.baseline()
        rates = [float(r) for r in DESIGN["sensitivity_rates"]]
        config = {"baseline": base.key, "criterion": criterion, "rates": rates, "score": "-val_loss",
                  "recal_batches": self.recipe.recal_batches}
        cache = Path(self.results_dir) / "sensitivity" / f"elpv-{self.store.path('elpv_sensitivity', config).stem}.json"

        def compute():
            cache.parent.mkdir(parents=True, exist_ok=True)
            table = sensitivity(base.model, self.example_input(), lambda m: -self.scores(m, "val")["loss"],
                                recalibrate=self.recalibrate, rates=rates, cache=cache, progress=self.progress,
                                criterion=criterion)
            return {"rows": table_rows(table), "baseline_score": table.attrs["baseline_score"]}
        record = self.store.fetch("elpv_sensitivity", config, compute)
        return table_from_rows(record.result["rows"], record.result["baseline_score"])

    def allocated_point(self, method: str, cut: float, *, seed: int = 0, criterion: str = "fpgm",
                        compute: bool = True) -> dict | None:
        """The pretrained baseline pruned to remove `cut` of its MACs with rates from gmlib.allocate ("uniform",
        "sensitivity" on the stored table, or "random" drawn with `seed`), recalibrated and fine-tuned (seed `seed`,
        the grid's budget at the lr chosen on validation); scores before, after recalibration and after. Stored."""
        base = self.baseline()
        lr = chosen_lr(self)
        if lr is None:
            raise ValueError("the lr stage is not stored yet: the allocation points fine-tune at its chosen lr")
        epochs = DESIGN["epochs"]
        config = {"baseline": base.key, "method": method, "cut": float(cut), "criterion": criterion,
                  "allocation_seed": int(seed) if method == "random" else 0, "finetune_seed": int(seed),
                  "epochs": epochs, "lr": lr, "recal_batches": self.recipe.recal_batches}

        def work():
            table = self.sensitivity_table(criterion) if method == "sensitivity" else None
            chosen = allocate(base.model, self.example_input(), "macs", cut, method=method, seed=seed, table=table,
                              progress=False, criterion=criterion)
            model, sizes = self._pruned(base, criterion, lambda entry: chosen.rates.get(entry.index, 0.0), 0)
            out = {**sizes, "reached": chosen.reached, "rates": {str(i): r for i, r in chosen.rates.items()},
                   **self._both(model, "_before", base)}
            self.recalibrate(model)
            out.update(self._both(model, "_recal", base))
            self.fit(model, epochs, lr, seed, validate=False)
            return {**out, **self._both(model, "_after", base)}
        return self._fetch("elpv_allocated", config, work, compute)

    # ------------------------------------------------------------------------------------------------ deployment
    def deployment(self, rates=None, *, rounds: int = 7, threads: int = 1, compute: bool = True) -> dict | None:
        """What a factory PC buys with each cut: the baseline and FPGM at `rates` (default DESIGN["deploy_rates"]),
        each fine-tuned (seed 0, the grid's budget), exported to ONNX and quantised to int8 (calibrated on training
        cells), timed side by side on one cell at the network's resolution in ONNX Runtime (`threads`, interleaved
        rounds) and scored on the test cells in each runtime. Stored (timings keep the machine they ran on)."""
        base = self.baseline()
        lr = chosen_lr(self)
        if lr is None:
            raise ValueError("the lr stage is not stored yet: the candidates fine-tune at its chosen lr")
        rates = [float(r) for r in (DESIGN["deploy_rates"] if rates is None else rates)]
        config = {"baseline": base.key, "criterion": "fpgm", "rates": rates, "epochs": DESIGN["epochs"], "lr": lr,
                  "rounds": int(rounds), "threads": int(threads), "input": [1, 3, self.recipe.size, self.recipe.size]}

        def work():
            variants = {0.0: copy.deepcopy(base.model).eval()}
            for rate in rates:
                model, _ = self._pruned(base, "fpgm", rate, 0)
                self.recalibrate(model)
                self.fit(model, DESIGN["epochs"], lr, 0, validate=False)
                variants[rate] = model.eval()
            calibration = [images for images, _ in self.loader("train")][:4]
            rows = []
            with tempfile.TemporaryDirectory() as folder:
                for rate, model in variants.items():
                    params, macs = count(model, (3, self.recipe.size, self.recipe.size))
                    path = export.to_onnx(model, Path(folder) / f"{rate}.onnx", self.example_input().cpu())
                    int8 = export.quantize_int8(path, Path(folder) / f"{rate}.int8.onnx", calibration)
                    for runtime, file in (("ort", path), ("ort-int8", int8)):
                        sess = export.session(file, threads=threads, spinning=False)
                        scores = self.scores(export.OrtModule(sess), "test")
                        rows.append({"rate": rate, "runtime": runtime, "params": params, "macs": macs,
                                     **{f"test_{k}": v for k, v in scores.items()},
                                     "size_bytes": Path(file).stat().st_size})
            times = measure(variants, self.example_input().cpu(), ("ort", "ort-int8"), rounds=rounds,
                            threads=threads, calibration=calibration, names=("rate",), progress=self.progress)
            timed = {(r["rate"], r["runtime"]): r for r in times.to_dict("records")}
            for row in rows:
                t = timed[row["rate"], row["runtime"]]
                row.update(ms=t["ms"], ms_min=t["ms_min"], ms_max=t["ms_max"])
            return {"rows": rows}
        return self._fetch("elpv_deployment", config, work, compute)

    # ------------------------------------------------------------------------------------------------ points
    def baseline_missing(self, **overrides) -> bool:
        return self.store.get("elpv_baseline", self.baseline_config(**overrides)) is None

    def segmentation(self, pretrained: bool):
        """The segmentation arm's Study (see segmentation_study), made once."""
        if pretrained not in self._seg:
            self._seg[pretrained] = segmentation_study(pretrained, self.store.root, self.seg_data_dir,
                                                       self.results_dir, self.progress, self.seg_profile)
        return self._seg[pretrained]

    def _run_segmentation(self, point: dict, compute: bool):
        study = self.segmentation(point["pretrained"])
        if not compute and study.store.get("baseline", study.baseline_config()) is None:
            return None
        if point["kind"] == "seg_baseline":
            return study.baseline()
        p = {k: point[k] for k in ("criterion", "rate", "seed")}
        if not compute:
            return True if study.is_stored(p) else None
        return study.point(**p)

    def run(self, point: dict, compute: bool = True):
        """One point of DESIGN (a dict with "kind" and the method's arguments): its stored result, computed when
        missing (or None with compute=False)."""
        if point["kind"] in ("seg_baseline", "seg_point"):
            return self._run_segmentation(point, compute)
        args = {k: v for k, v in point.items() if k != "kind"}
        needs = args.get("pretrained", True)
        if not compute and point["kind"] != "baseline" and self.baseline_missing(pretrained=needs):
            return None
        if point["kind"] == "baseline":
            return self.baseline(**args) if compute else self.baseline_scores(**args)
        method = {"pruned": self.pruned_point, "finetuned": self.finetuned_point, "fresh": self.fresh_point,
                  "allocated": self.allocated_point, "deployment": self.deployment}
        if point["kind"] not in method:
            raise ValueError(f"unknown point kind {point['kind']!r}; choose baseline, {', '.join(method)}")
        return method[point["kind"]](**args, compute=compute)

    def stored(self, point: dict) -> bool:
        return self.run(point, compute=False) is not None


# ---------------------------------------------------------------------------------------------------- the design
# What scripts/compute_elpv.py computes, stage by stage, and chapter 13 reads. Within a stage, points come in order
# of how much they tell: the first seeds of every cell before the later ones, the middle rates before the ends.
DESIGN = {
    "stages": ("choices", "baselines", "lr", "scratch_baseline", "grid", "seg_baselines", "seg_grid", "allocation",
               "deployment", "budgets", "scratch_init"),
    # the head and the input resolution, chosen on validation: the pretrained network trained `choice_epochs` with
    # each head at the first resolution, and with the first head at each resolution (accuracy against cost)
    "heads": ("probability", "grades"),
    "resolutions": (128, 224),
    "choice_epochs": 4,
    "choice_margin": 0.01,
    "criteria": ("fpgm", "l1", "random", "fpgm-sum", "bn"),
    "rates": (0.3, 0.5, 0.2, 0.4, 0.6, 0.1, 0.7),
    "seeds": {"fpgm": 5, "l1": 5, "random": 5, "fpgm-sum": 3, "bn": 3},
    # the fine-tuning budget of the grid: one epoch, 52 steps of 32 cells, as chapter 07's main budget is 56 steps
    "epochs": 1,
    "lr_candidates": (1e-4, 3e-4, 1e-3),  # chosen on validation at the rates below, seed 0
    "lr_rates": (0.3, 0.5),
    "budget_epochs": (3, 6),            # longer fine-tuning, with the from-fresh-weights control at every budget
    "budget_rates": (0.3, 0.5),
    "budget_seeds": 3,
    "scratch_criteria": ("fpgm", "l1", "random"),  # the random-init baseline pruned: does pretraining matter?
    "scratch_rates": (0.3, 0.5),
    "scratch_seeds": 3,
    # at equal MACs: one rate for every set, rates from the per-set sensitivity table, and a random allocation
    "allocation_cuts": (0.3, 0.5),
    "allocation_methods": ("uniform", "sensitivity", "random"),
    "allocation_seeds": 3,
    "sensitivity_rates": (0.2, 0.4, 0.6, 0.8),
    "deploy_rates": (0.3, 0.5, 0.7),
    # the segmentation task of the quick profile (synthetic strips) with an FPN on the ImageNet MobileNetV2
    # encoder, and the same from random init: does a pretrained encoder change chapter 07's answer?
    "seg_epochs": 15,
    "seg_criteria": ("fpgm", "l1", "random"),
    "seg_rates": (0.3, 0.5),
    "seg_seeds": 3,
}


def segmentation_study(pretrained: bool, store_dir, data_dir, results_dir, progress: bool = True,
                       profile: str = "quick"):
    """The quick profile's study with fpn_mobilenet_v2, its encoder from the ImageNet file or random init, trained
    DESIGN["seg_epochs"] epochs (one cosine cycle, no restart); profile "smoke" for the tests."""
    from .study import Study
    epochs = {"epochs": DESIGN["seg_epochs"]} if profile == "quick" else {}
    return Study(profile, data_dir, results_dir, store_dir=store_dir, progress=progress, arch="fpn_mobilenet_v2",
                 pretrained=str(weights.find_weights()) if pretrained else "", restart_epochs=0, restart_lr=0.0,
                 **epochs)


def chosen_setup(study: "ElpvStudy") -> dict | None:
    """The head and the resolution the choices stage picks on validation balanced accuracy (None until it is all
    stored): the better head at the first resolution; the cheapest resolution unless a dearer one beats it by more
    than `margin` (a point of balanced accuracy: what it costs must buy something)."""
    scores = {}
    for point in planned_points(study, "choices"):
        stored = study.baseline_scores(**{k: v for k, v in point.items() if k != "kind"})
        if stored is None:
            return None
        scores[point["head"], point["size"]] = stored.val["balanced_accuracy"]
    first = DESIGN["resolutions"][0]
    head = max(DESIGN["heads"], key=lambda h: scores[h, first])
    size = first
    for s in DESIGN["resolutions"][1:]:
        if (DESIGN["heads"][0], s) in scores and scores[DESIGN["heads"][0], s] > scores[DESIGN["heads"][0], first] + \
                DESIGN["choice_margin"]:
            size = s
    return {"head": head, "size": size}


def chosen_lr(study: "ElpvStudy") -> float | None:
    """The fine-tuning lr with the best mean validation balanced accuracy over the lr stage's points (None until
    they are all stored): the test cells play no part."""
    means = {}
    for lr in DESIGN["lr_candidates"]:
        rows = [study.finetuned_point("fpgm", rate, seed=0, epochs=DESIGN["epochs"], lr=lr, compute=False)
                for rate in DESIGN["lr_rates"]]
        if any(r is None for r in rows):
            return None
        means[lr] = sum(r["val_balanced_accuracy_after"] for r in rows) / len(rows)
    return max(means, key=lambda lr: (means[lr], -lr))


def planned_points(study: "ElpvStudy", stage: str) -> list:
    """The points of one stage of DESIGN, as dicts for ElpvStudy.run."""
    d, ep = DESIGN, DESIGN["epochs"]
    if stage == "baselines":
        return [dict(kind="baseline", pretrained=True)]
    if stage == "scratch_baseline":  # the same network and recipe from torchvision's random init
        return [dict(kind="baseline", pretrained=False)]
    if stage == "choices":
        first = dict(kind="baseline", pretrained=True, epochs=d["choice_epochs"], size=d["resolutions"][0])
        return [{**first, "head": h} for h in d["heads"]] + \
               [{**first, "head": d["heads"][0], "size": s} for s in d["resolutions"][1:]]
    if stage == "lr":
        return [dict(kind="finetuned", criterion="fpgm", rate=r, seed=0, epochs=ep, lr=lr)
                for r in d["lr_rates"] for lr in d["lr_candidates"]]
    if stage == "seg_baselines":
        return [dict(kind="seg_baseline", pretrained=p) for p in (True, False)]
    if stage == "seg_grid":
        return [dict(kind="seg_point", pretrained=p, criterion=c, rate=r, seed=s) for s in range(d["seg_seeds"])
                for p in (True, False) for r in d["seg_rates"] for c in d["seg_criteria"]]
    lr = chosen_lr(study)
    if lr is None:
        return []
    if stage == "grid":
        pruned = [dict(kind="pruned", criterion=c, rate=r, seed=s) for r in d["rates"] for c in d["criteria"]
                  for s in (range(d["seeds"][c]) if c == "random" else (0,))]
        tuned = [dict(kind="finetuned", criterion=c, rate=r, seed=s, epochs=ep, lr=lr)
                 for s in range(max(d["seeds"].values())) for r in d["rates"] for c in d["criteria"]
                 if s < d["seeds"][c]]
        return pruned + tuned
    if stage == "allocation":
        return [dict(kind="allocated", method=m, cut=c, seed=s) for s in range(d["allocation_seeds"])
                for c in d["allocation_cuts"] for m in d["allocation_methods"]]
    if stage == "deployment":
        return [dict(kind="deployment")]
    if stage == "budgets":
        return [p for s in range(d["budget_seeds"]) for r in d["budget_rates"] for p in
                [dict(kind="fresh", rate=r, seed=s, epochs=ep)] +
                [q for e in d["budget_epochs"] for q in (dict(kind="finetuned", criterion="fpgm", rate=r, seed=s,
                                                              epochs=e, lr=lr), dict(kind="fresh", rate=r, seed=s,
                                                                                     epochs=e))]]
    if stage == "scratch_init":
        return [dict(kind="pruned", criterion=c, rate=r, seed=0, pretrained=False)
                for r in d["scratch_rates"] for c in d["scratch_criteria"]] + \
               [dict(kind="finetuned", criterion=c, rate=r, seed=s, epochs=ep, lr=lr, pretrained=False)
                for s in range(d["scratch_seeds"]) for r in d["scratch_rates"] for c in d["scratch_criteria"]]
    raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(d['stages'])}")
