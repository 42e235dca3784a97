"""The set-up every chapter of the study shares: a profile (network, data, training budget), the three-way data
split, the trained baseline, and the experiments the chapters report, each read from the results store.

Every expensive result is a `gmlib.store` record keyed by its whole configuration: the baseline (its fp16-rounded
weights, post-processing, validation and test scores, learning curve), each pruned point (scores right after
pruning and after BatchNorm recalibration), each fine-tuned point, each from-scratch control. A chapter asks for a
record by configuration and gets the stored one, or computes and stores it when it is missing (never in a read-only
store). Validation strips pick the best epoch, the post-processing and every choice among pruned networks (the
fine-tuning learning rate, the iterative run's end and step: "finetuned_val" records hold the fine-tuned points'
validation scores); every reported score is on the test strips.
"""
import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from . import data, metrics, models, train
from .allocation import allocate, sensitivity, table_from_rows, table_rows
from .graph import analyse
from .recalibrate import recalibrate_bn
from .schedule import iterative, prune_and_score, scalars
from .pretrained import file_sha256
from .store import Store, fp16_state
from .shrink import apply_kept, kept_of, remember
from .surgery import prune
from .utils import default_device

__all__ = ["BaselineConfig", "FinetuneConfig", "PROFILES", "Baseline", "Study", "plateaued"]

# Minimum defect areas tried when tuning the post-processing, in pixels of a full-resolution strip (they are scaled by
# scale^2): the range strong Severstal solutions used (a few hundred to a few thousand pixels).
MIN_AREAS_FULL_RES = (0, 400, 800, 1600, 3200, 6400, 12800)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that decides the trained baseline: network, data, split and training recipe."""
    arch: str                   # a gmlib.models name
    n_images: int               # synthetic strips to generate (ignored for real data)
    data_seed: int              # seed of the synthetic set
    val_fraction: float         # share held out for the best epoch and the post-processing
    test_fraction: float        # share held out for every reported score; both stratified by each image's rarest class
    scale: float                # downscale factor of the strips (1.0 = 256 x 1600)
    crop: tuple                 # training crop (h, w) after scaling
    batch_size: int
    epochs: int
    lr: float                   # AdamW, per-step cosine schedule
    weight_decay: float
    pos_weight: float           # BCE weight of defect pixels
    defect_oversampling: float  # how much more often training draws images that carry a defect
    monitor: str                # validation score that picks the best epoch
    seed: int                   # initial weights, crops, sampling
    # a warm restart after the first cosine cycle (SGDR): `restart_epochs` more epochs from the best weights, cosine
    # from `restart_lr` to 0, kept only if they beat the first cycle; 0 = none. The restart's run is a record of its
    # own on top of the first cycle's, and its last epochs are the test of convergence: more training, no gain.
    restart_epochs: int = 0
    restart_lr: float = 0.0
    # a local timm weight file of the encoder to start from ("" = random init); keyed by its sha256, not its path
    pretrained: str = ""
    # every drawn crop gets a seed of its own (data.WeightedDraws), so loader workers give the same batches as none;
    # False: one generator in this process draws every crop in turn (how the quick profile's records were made)
    draw_seeds: bool = False


# fields added after records were stored: left out of a baseline's key at these values, so older keys stay valid
_KEYLESS_DEFAULTS = {"restart_epochs": 0, "restart_lr": 0.0, "pretrained": "", "draw_seeds": False}
# decoded strips are kept in memory when the whole set fits in this; otherwise each is decoded (JPEG, RLE) when read
CACHE_BUDGET_BYTES = 2 ** 31


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning budget after pruning: the same for every criterion, rate and seed."""
    steps: int                  # optimiser steps (batches of the baseline's batch size)
    lr: float                   # AdamW peak lr, cosine to 0 over the steps
    weight_decay: float = 1e-4
    recal_batches: int = 25     # training batches that re-estimate the BatchNorm statistics after pruning


PROFILES = {
    # a 2-core CPU: the small encoder, quarter-resolution strips (64 x 400), trained to convergence: 30 epochs and a
    # warm restart of 10 that no longer improves it (chapter 05 shows the curve)
    "quick": (BaselineConfig(arch="fpn_resnest14d", n_images=3000, data_seed=0, val_fraction=0.2, test_fraction=0.2,
                             scale=0.25, crop=(64, 256), batch_size=8, epochs=30, lr=1e-3, weight_decay=1e-4,
                             pos_weight=5.0, defect_oversampling=3.0, monitor="dice_positive", seed=0,
                             restart_epochs=10, restart_lr=3e-4),
              # 56 steps: a quarter of an epoch (225 batches of 8 crops); chapter 07 sweeps 0.25, 1 and 4 epochs
              FinetuneConfig(steps=56, lr=5e-4)),
    # a GPU: the paper's FPN-ResNeSt50 on full-resolution strips, as many synthetic strips as the real train set
    "paper": (BaselineConfig(arch="fpn_resnest50", n_images=12568, data_seed=0, val_fraction=0.15, test_fraction=0.15,
                             scale=1.0,
                             crop=(256, 512), batch_size=16, epochs=40, lr=3e-4, weight_decay=1e-4, pos_weight=5.0,
                             defect_oversampling=3.0, monitor="dice_positive", seed=0, draw_seeds=True),
              FinetuneConfig(steps=2000, lr=1e-4)),
    # seconds: every experiment path end to end on a handful of strips (tests, CI)
    "smoke": (BaselineConfig(arch="fpn_resnest14d", n_images=24, data_seed=1, val_fraction=0.25, test_fraction=0.25,
                             scale=0.125, crop=(32, 128), batch_size=4, epochs=2, lr=1e-3, weight_decay=1e-4,
                             pos_weight=5.0, defect_oversampling=3.0, monitor="dice_positive", seed=0),
              FinetuneConfig(steps=2, lr=1e-4, recal_batches=2)),
}
# chapter 12's per-set sensitivity: the rates each coupling set is pruned at alone, and the validation strips that
# score it (the first ones of the split: the table costs sets x rates evaluations)
SENSITIVITY_RATES = (0.2, 0.4, 0.6, 0.8)
SENSITIVITY_STRIPS = 160
# how far a recomputed fine-tune's test Dice may lie from the stored one when it ran on another CPU
# (finetuned_validation): fine-tuning carries another CPU's rounding into the second decimal at the swept 2e-3,
# within chapter 07's nearly-lossless bar; further off is another recipe
REPRODUCE_BAND = 0.03
RECAL_SEED = 10_000  # seed of the crops that recalibrate the norms: the same crops for every pruned network


def plateaued(history: pd.DataFrame, column: str, fraction: float = 0.25, tol: float = 0.005) -> bool:
    """True when the last `fraction` of the epochs raise the best `column` by less than `tol` over the epochs
    before them: the learning curve has flattened."""
    values = history[column].astype(float).tolist()
    tail = max(1, int(round(fraction * len(values))))
    if len(values) <= tail:
        return False
    return max(values[-tail:]) - max(values[:-tail]) < tol


@dataclass
class Baseline:
    """The trained baseline: network (eval mode, fp16-rounded weights), tuned post-processing, scores, history."""
    model: nn.Module
    postprocess: dict           # {"threshold": [4 floats], "min_area": [4 ints]} chosen on the validation strips
    scores: dict                # train.evaluate on the test strips with that post-processing
    val_scores: dict            # the same on the validation strips (which chose the post-processing: optimistic)
    raw_scores: dict            # test scores at the raw threshold 0.5, no minimum area
    history: pd.DataFrame       # one row per epoch
    path: Path                  # its store record
    key: str
    seconds: float              # training wall time
    trained_now: bool           # False: read from the store

    def copy(self) -> nn.Module:
        """A deep copy of the network, to prune without touching the baseline."""
        return copy.deepcopy(self.model)


class Study:
    """One profile's data, baseline, fine-tuning, evaluation and stored experiments.

    Args:
        profile: "quick", "paper" or "smoke" (see PROFILES), or a (BaselineConfig, FinetuneConfig) pair.
        data_dir: a Severstal-layout folder; the synthetic set is generated there unless it holds real data.
        results_dir: where figures, tables and resumable run folders go.
        store_dir: the results store (the study's committed one is data/store/); read-only under
            GMLIB_STORE_READONLY=1, as in `make nbval`.
        device: default CUDA when present.
        workers: loader worker processes (0: load in this process); needs `draw_seeds` for training. Results do
            not depend on it, so it is not part of any key. On CUDA batches go through pinned memory.
        overrides: BaselineConfig fields to change, e.g. seed=1 or epochs=10 (a new configuration, a new key).
    """

    def __init__(self, profile="quick", data_dir="../data/synthetic", results_dir="../results", *,
                 store_dir="../data/store", device=None, progress: bool = True, workers: int = 0, **overrides):
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
            self.name, (self.config, self.finetune_config) = profile, PROFILES[profile]
        else:
            self.name, (self.config, self.finetune_config) = "custom", profile
        fields = {f.name for f in dataclasses.fields(BaselineConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown BaselineConfig field(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(sorted(fields))}")
        self.config = dataclasses.replace(self.config, **overrides)
        cfg = self.config
        if cfg.arch not in models.NAMES:
            raise ValueError(f"config arch {cfg.arch!r} is not one of {', '.join(models.NAMES)}")
        self.device = torch.device(device) if device is not None else default_device()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative int, got {workers!r}")
        if workers and not cfg.draw_seeds:
            raise ValueError(f"workers={workers} needs draw_seeds=True: without it one generator in this process "
                             f"draws every crop in turn (as the {self.name} profile's records were made)")
        self.workers = workers
        self.progress = progress
        self.results_dir = Path(results_dir)
        self.store = Store(store_dir)
        self.data_dir = data.ensure_data(data_dir, cfg.n_images, cfg.data_seed, progress=progress)
        full = data.SeverstalDataset(self.data_dir)
        self.train_ids, self.val_ids, self.test_ids = full.split(cfg.val_fraction, cfg.data_seed, cfg.test_fraction)
        strip_bytes = 7 * round(256 * cfg.scale) * round(1600 * cfg.scale)  # 3 image + 4 mask channels, uint8
        cache = len(full) * strip_bytes <= CACHE_BUDGET_BYTES
        self.train_set = data.SeverstalDataset(self.data_dir, self.train_ids, crop=cfg.crop, flip=True,
                                               scale=cfg.scale, generator=torch.Generator(), cache=cache)
        self.val_set = data.SeverstalDataset(self.data_dir, self.val_ids, scale=cfg.scale, cache=cache)
        self.test_set = data.SeverstalDataset(self.data_dir, self.test_ids, scale=cfg.scale, cache=cache)
        self.val_loader = DataLoader(self.val_set, batch_size=16, **self._loader_options())
        self.test_loader = DataLoader(self.test_set, batch_size=16, **self._loader_options())
        self._weights = data.oversampling_weights(self.train_set, cfg.defect_oversampling)
        self.loss_fn = partial(train.bce_dice_loss, pos_weight=cfg.pos_weight)
        h, w = self.val_set.size
        self.input_size = (3, h + -h % 32, w + -w % 32)  # one strip, padded as the FPN sees it
        self._baseline = None

    # ------------------------------------------------------------------------------------------------ data
    def train_loader(self, seed: int, n_batches: int | None = None) -> DataLoader:
        """Random crops with flips, defect images oversampled; `n_batches` per pass (default: one epoch's worth)."""
        bs = self.config.batch_size
        n = len(self._weights) if n_batches is None else n_batches * bs
        if self.config.draw_seeds:
            sampler = data.WeightedDraws(self._weights, n, seed=seed)
        else:
            self.train_set.generator.manual_seed(seed)
            sampler = WeightedRandomSampler(self._weights, n, replacement=True,
                                            generator=torch.Generator().manual_seed(seed))
        return DataLoader(self.train_set, batch_size=bs, sampler=sampler, **self._loader_options())

    def _loader_options(self) -> dict:
        return {"num_workers": self.workers, "persistent_workers": self.workers > 0,
                "pin_memory": self.device.type == "cuda"}

    def loader(self, split: str) -> DataLoader:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return self.val_loader if split == "val" else self.test_loader

    def target(self, split: str = "test") -> torch.Tensor:
        """The masks of a split's strips, (N, 4, H, W) bool."""
        return torch.cat([mask for _, mask in self.loader(split)]).bool()

    def val_target(self) -> torch.Tensor:
        return self.target("val")

    def example_input(self) -> torch.Tensor:
        """A zero batch of one padded strip: what `prune` traces and counts MACs on."""
        return torch.zeros(1, *self.input_size, device=self.device)

    def data_identity(self) -> dict:
        """What the baseline key records about the data: the synthetic manifest, or a hash of real labels."""
        manifest = self.data_dir / "synthetic.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())
        return {"real": hashlib.sha256((self.data_dir / "train.csv").read_bytes()).hexdigest()[:16],
                "n_images": len(self.train_ids) + len(self.val_ids) + len(self.test_ids)}

    def epoch_steps(self, epochs: float) -> int:
        """Optimiser steps in `epochs` of the baseline's training (one epoch = one pass's worth of batches)."""
        return max(1, int(round(epochs * len(self._weights) / self.config.batch_size)))

    # ------------------------------------------------------------------------------------------------ training
    def fit(self, model: nn.Module, *, seed: int | None = None, resume=None) -> pd.DataFrame:
        """Train `model` with the baseline's recipe (epochs, lr, loss, best epoch by validation `monitor`);
        `resume`: a path for the training state after every epoch (see `train.fit`)."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        return train.fit(model, self.train_loader(seed), self.val_loader, epochs=cfg.epochs, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, device=self.device, seed=seed, monitor=cfg.monitor,
                         loss_fn=self.loss_fn, resume=resume, progress=self.progress)

    def finetune(self, model: nn.Module, seed: int = 0, *, steps: int | None = None,
                 lr: float | None = None) -> pd.DataFrame:
        """Fine-tune in place for a fixed budget (FinetuneConfig, or `steps` / `lr`): no validation, last weights."""
        ft = self.finetune_config
        return train.fit(model, self.train_loader(seed, ft.steps if steps is None else steps), None, epochs=1,
                         lr=ft.lr if lr is None else lr, weight_decay=ft.weight_decay, device=self.device,
                         seed=seed, loss_fn=self.loss_fn, progress=False)

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate the BatchNorm statistics of `model` on `recal_batches` training batches (fixed crops)."""
        n = self.finetune_config.recal_batches
        return recalibrate_bn(model, self.train_loader(RECAL_SEED, n), n, device=self.device)

    def evaluate(self, model: nn.Module, postprocess: dict | None = None, split: str = "test") -> dict:
        """Loss and Dice (Kaggle, positive pairs, per class) on a split's strips (default: test) with the baseline's
        tuned post-processing."""
        post = postprocess if postprocess is not None else self.baseline().postprocess
        return train.evaluate(model, self.loader(split), device=self.device, threshold=post["threshold"],
                              min_area=post["min_area"], loss_fn=self.loss_fn)

    def evaluate_many(self, model: nn.Module, postprocesses: dict, split: str = "test", tuner=None) -> dict:
        """`evaluate` under each of several post-processings ({name: postprocess}) from one forward pass over a
        split, the same numbers as one `evaluate` per post-processing; `tuner` (a metrics.PostprocessTuner), when
        given, sees every batch's probabilities too. Returns {name: scores}."""
        loader = self.loader(split)
        was_training = model.training
        model.eval().to(self.device)
        loss_sum, n_images = 0.0, 0
        meters = {name: metrics.DiceMeter() for name in postprocesses}
        with torch.no_grad():
            for images, masks in loader:
                images, masks = images.to(self.device), masks.to(self.device)
                logits = train.padded_forward(model, images)
                loss_sum += self.loss_fn(logits, masks.float()).item() * len(images)
                n_images += len(images)
                probs = torch.sigmoid(logits)  # (N, 4, H, W)
                for name, post in postprocesses.items():
                    meters[name].update(metrics.postprocess(probs, threshold=post["threshold"],
                                                            min_area=post["min_area"]), masks > 0.5)
                if tuner is not None:
                    tuner.update(probs.float().cpu(), masks.bool().cpu())
        model.train(was_training)
        return {name: {"loss": loss_sum / n_images, **meter.compute()} for name, meter in meters.items()}

    def _min_areas(self) -> list:
        return sorted({int(round(a * self.config.scale ** 2)) for a in MIN_AREAS_FULL_RES})

    def tune_postprocess(self, model: nn.Module) -> dict:
        """Per-class threshold and minimum area that maximise the validation Kaggle Dice of `model` (streamed
        batch by batch: memory does not grow with the strips)."""
        tuner = metrics.PostprocessTuner(thresholds=THRESHOLDS, min_areas=self._min_areas())
        for probs, masks in train.predictions(model, self.val_loader, device=self.device):
            tuner.update(probs, masks.bool())
        post = tuner.compute()
        return {"threshold": post["threshold"], "min_area": post["min_area"]}

    def prune_kwargs(self, criterion: str, model: nn.Module) -> dict:
        """Extra `prune` arguments a criterion needs on this network: "bn" ranks filters by the gammas of the norm
        that follows them, so convs without one (the FPN's laterals) are left unpruned; the others need none."""
        if criterion != "bn":
            return {}
        graph = analyse(model, self.example_input())
        producers = {name for r in graph.spaces.roots() for kind, name in graph.spaces.producers[r] if kind == "conv"}
        return {"ignored_layers": sorted(producers - set(graph.norm_after))}

    def scratch_like(self, pruned: nn.Module, seed: int | None = None) -> nn.Module:
        """The pruned architecture with fresh random weights (the network's own init, sliced to the kept channels):
        the "train the small network from scratch" control of Liu et al. (2019)."""
        model = models.create(self.config.arch, seed=self.config.seed if seed is None else seed)
        kept = kept_of(pruned)
        apply_kept(model, kept)
        remember(model, kept)
        return model.to(self.device)

    # ------------------------------------------------------------------------------------------------ baseline
    def baseline_config(self) -> dict:
        config = {k: v for k, v in dataclasses.asdict(self.config).items()
                  if not (k in _KEYLESS_DEFAULTS and v == _KEYLESS_DEFAULTS[k])}
        if self.config.pretrained:  # the weights decide the baseline, wherever the file lives
            config["pretrained"] = {"sha256": _file_sha256(self.config.pretrained)}
        return {"config": config, "data": self.data_identity()}

    def key(self) -> str:
        return self.store.path("baseline", self.baseline_config()).stem

    def baseline(self) -> Baseline:
        """The trained baseline of this configuration: read from the store, or trained, rounded to fp16, tuned,
        scored and stored when missing. Kept in memory after the first call."""
        if self._baseline is None:
            trained_now = []

            def compute():
                trained_now.append(True)
                return self._train()
            record = self.store.fetch("baseline", self.baseline_config(), compute)
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
        return {"baseline": self.baseline().key, "criterion": criterion, "rate": float(rate), "policy": policy,
                "seed": int(seed) if criterion == "random" else 0,
                "recal_batches": self.finetune_config.recal_batches}

    def _budget(self, steps, lr):
        ft = self.finetune_config
        return ft.steps if steps is None else int(steps), ft.lr if lr is None else float(lr)

    def _finetuned_config(self, criterion, rate, policy, seed, steps, lr):
        return {**self._pruned_config(criterion, rate, policy, seed), "finetune_seed": int(seed), "steps": steps,
                "lr": lr, "weight_decay": self.finetune_config.weight_decay}

    def _prune(self, criterion, rate, policy, seed, evaluate_before):
        base = self.baseline()
        return prune_and_score(base.model, self.example_input(), rate, evaluate=self.evaluate,
                               recalibrate=self.recalibrate, criterion=criterion, policy=policy, seed=seed,
                               evaluate_before=evaluate_before, **self.prune_kwargs(criterion, base.model))

    def pruned_point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0) -> dict:
        """Sizes and test scores of the baseline pruned at `rate`: right after pruning (`<score>_before`) and after
        BatchNorm recalibration (`<score>_recal`). Stored; `seed` matters for the random criterion only."""
        def compute():
            _, report, scores, _ = self._prune(criterion, rate, policy, seed, True)
            return {"params": report.params_after, "macs": report.macs_after,
                    "params_reduction": 100.0 * (1 - report.params_after / report.params_before),
                    "macs_reduction": report.macs_reduction, **scores}
        return self.store.fetch("pruned", self._pruned_config(criterion, rate, policy, seed), compute).result

    def finetuned_point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
                        steps: int | None = None, lr: float | None = None) -> dict:
        """Test scores (`<score>_after`) of the pruned, recalibrated network after fine-tuning with `seed` for
        `steps` at `lr` (default FinetuneConfig). Stored."""
        steps, lr = self._budget(steps, lr)
        config = self._finetuned_config(criterion, rate, policy, seed, steps, lr)

        def compute():
            pruned, *_ = self._prune(criterion, rate, policy, seed, False)
            history = self.finetune(pruned, seed, steps=steps, lr=lr)
            return {**scalars(self.evaluate(pruned), "_after"),
                    "train_loss": float(history["train_loss"].iloc[-1])}
        return self.store.fetch("finetuned", config, compute).result

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
        steps, lr = self._budget(steps, lr)
        config = self._finetuned_config(criterion, rate, policy, seed, steps, lr)

        def compute():
            stored = self.finetuned_point(criterion, rate, policy=policy, seed=seed, steps=steps, lr=lr)
            pruned = self._pruned_copy(criterion, rate, policy, seed)
            self.finetune(pruned, seed, steps=steps, lr=lr)
            base_post = self.baseline().postprocess
            tuner = metrics.PostprocessTuner(thresholds=THRESHOLDS, min_areas=self._min_areas())
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
        return self.store.fetch("finetuned_val", config, compute).result

    def _pruned_copy(self, criterion, rate, policy, seed):
        """A copy of the pruned and recalibrated network (`_prune`), the last one kept: the seeds of a deterministic
        criterion share it."""
        key = json.dumps(self._pruned_config(criterion, rate, policy, seed), sort_keys=True)
        if getattr(self, "_last_pruned", (None, None))[0] != key:
            self._last_pruned = (key, self._prune(criterion, rate, policy, seed, False)[0])
        return copy.deepcopy(self._last_pruned[1])

    def point(self, criterion: str, rate: float, *, policy: str = "or-merge", seed: int = 0,
              steps: int | None = None, lr: float | None = None) -> dict:
        """One row of the study: the pruned point and its fine-tuned seed, both from the store (or computed)."""
        budget = self._budget(steps, lr)
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
        """Whether every record of point `p` (`point` arguments, or a `gmlib.sweeps` point) is in the store."""
        criterion, rate, policy, seed = p["criterion"], p["rate"], p.get("policy", "or-merge"), p.get("seed", 0)
        if p.get("kind", "pruned") == "scratch":
            arch, budget = self._scratch_configs(criterion, rate, policy, seed, p.get("steps"), p.get("lr"), "budget")
            records = [("finetuned", {**arch, "scratch": "budget", **budget})]
        else:
            steps, lr = self._budget(p.get("steps"), p.get("lr"))
            records = [("pruned", self._pruned_config(criterion, rate, policy, seed)),
                       ("finetuned", self._finetuned_config(criterion, rate, policy, seed, steps, lr))]
        return all(self.store.get(kind, config) is not None for kind, config in records)

    def _scratch_configs(self, criterion, rate, policy, seed, steps, lr, recipe):
        """(architecture, budget) parts of a from-scratch control's configuration."""
        ft = self.finetune_config
        steps = ft.steps if steps is None else int(steps)
        lr = (self.config.lr if recipe == "budget" else ft.lr) if lr is None else float(lr)
        arch = {"baseline": self.baseline().key, "criterion": criterion, "rate": float(rate), "policy": policy,
                "init_seed": 100 + int(seed)}
        return arch, {"finetune_seed": int(seed), "steps": steps, "lr": lr, "weight_decay": ft.weight_decay}

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
            config = {**arch, "scratch": "budget", **budget}
        else:
            def train_scratch():
                model = self.scratch_like(pruned, seed=100 + seed)
                start = time.perf_counter()
                history = self.fit(model, seed=100 + seed)
                return ({"history": _history_rows(history), "train_seconds": time.perf_counter() - start},
                        fp16_state(model))
            trained = self.store.fetch("scratch", arch, train_scratch)

            def compute():
                model = self._load_weights(self.scratch_like(pruned, seed=100 + seed), trained.tensors())
                self.finetune(model, seed, steps=steps, lr=lr)
                return scalars(self.evaluate(model), "_after")
            config = {**arch, "scratch": trained.key, **budget}
        tuned = self.store.fetch("finetuned", config, compute)
        return {"criterion": "scratch", "recipe": recipe, "architecture": criterion, "policy": policy,
                "rate": float(rate), "seed": seed, "steps": steps, "lr": lr, **tuned.result}

    # ------------------------------------------------------------------------------------------------ allocation
    def sensitivity_table(self, criterion: str = "fpgm", *, policy: str = "or-merge", rates=SENSITIVITY_RATES,
                          strips: int = SENSITIVITY_STRIPS) -> pd.DataFrame:
        """gmlib.allocation.sensitivity of the baseline: each coupling set pruned alone at `rates`, recalibrated,
        scored by positive-pair Dice (baseline post-processing) on the first `strips` validation strips. Stored;
        while it is computed, results_dir/sensitivity/<key>.json keeps every score, so a killed run resumes."""
        config = {"baseline": self.baseline().key, "criterion": criterion, "policy": policy,
                  "rates": [float(r) for r in rates], "strips": int(strips),
                  "recal_batches": self.finetune_config.recal_batches}
        cache = self.results_dir / "sensitivity" / f"{self.store.path('sensitivity', config).stem}.json"

        def compute():
            base = self.baseline()
            post = base.postprocess
            loader = DataLoader(torch.utils.data.Subset(self.val_set, range(min(strips, len(self.val_set)))),
                                batch_size=16, **self._loader_options())

            def evaluate(model):
                return train.evaluate(model, loader, device=self.device, threshold=post["threshold"],
                                      min_area=post["min_area"], loss_fn=self.loss_fn)["dice_positive"]
            table = sensitivity(base.model, self.example_input(), evaluate, recalibrate=self.recalibrate,
                                rates=rates, cache=cache, progress=self.progress, criterion=criterion,
                                policy=policy, **self.prune_kwargs(criterion, base.model))
            return {"rows": table_rows(table), "baseline_score": table.attrs["baseline_score"]}
        record = self.store.fetch("sensitivity", config, compute)
        return table_from_rows(record.result["rows"], record.result["baseline_score"])

    def allocation(self, method: str, cut: float, *, criterion: str = "fpgm", policy: str = "or-merge",
                   seed: int = 0) -> dict:
        """gmlib.allocate on the baseline for a `cut` share of its MACs: "uniform", "random" (`seed` draws it) or
        "sensitivity" (on `criterion`'s stored table). {"rates": {set index: rate}, "reached", "threshold"}. Stored."""
        config = {"baseline": self.baseline().key, "method": method, "cut": float(cut), "criterion": criterion,
                  "policy": policy, "seed": int(seed) if method == "random" else 0}

        def compute():
            base = self.baseline()
            table = self.sensitivity_table(criterion, policy=policy) if method == "sensitivity" else None
            result = allocate(base.model, self.example_input(), "macs", cut, method=method, seed=seed, table=table,
                              progress=False, criterion=criterion, policy=policy,
                              **self.prune_kwargs(criterion, base.model))
            return {"rates": {str(i): r for i, r in result.rates.items()}, "reached": result.reached,
                    "threshold": result.threshold}
        return self.store.fetch("allocation", config, compute).result

    def allocated_point(self, method: str, cut: float, *, criterion: str = "fpgm", policy: str = "or-merge",
                        seed: int = 0, allocation_seed: int | None = None) -> dict:
        """Chapter 12's row: the baseline pruned with `allocation(method, cut)`'s rates by `criterion`, scored on the
        test strips right after pruning, after recalibration and after fine-tuning (FinetuneConfig, `seed`).
        `allocation_seed` draws a random allocation (default: `seed`). Stored (a pruned and a finetuned record)."""
        alloc_seed = seed if allocation_seed is None else allocation_seed
        chosen = self.allocation(method, cut, criterion=criterion, policy=policy, seed=alloc_seed)
        rates = {int(i): r for i, r in chosen["rates"].items()}
        config = {"baseline": self.baseline().key, "allocation": {"method": method, "cut": float(cut),
                                                                  "seed": alloc_seed if method == "random" else 0},
                  "rates": chosen["rates"], "criterion": criterion, "policy": policy,
                  "recal_batches": self.finetune_config.recal_batches}
        ft = self.finetune_config
        tuned_config = {**config, "finetune_seed": int(seed), "steps": ft.steps, "lr": ft.lr,
                        "weight_decay": ft.weight_decay}

        def prune_it(evaluate_before):
            base = self.baseline()
            return prune_and_score(base.model, self.example_input(), lambda entry: rates.get(entry.index, 0.0),
                                   evaluate=self.evaluate, recalibrate=self.recalibrate, criterion=criterion,
                                   policy=policy, evaluate_before=evaluate_before,
                                   **self.prune_kwargs(criterion, base.model))

        def compute_pruned():
            _, report, scores, _ = prune_it(True)
            return {"params": report.params_after, "macs": report.macs_after,
                    "params_reduction": 100.0 * (1 - report.params_after / report.params_before),
                    "macs_reduction": report.macs_reduction, **scores}

        def compute_tuned():
            pruned, *_ = prune_it(False)
            history = self.finetune(pruned, seed)
            return {**scalars(self.evaluate(pruned), "_after"), "train_loss": float(history["train_loss"].iloc[-1])}
        pruned = self.store.fetch("pruned", config, compute_pruned).result
        tuned = self.store.fetch("finetuned", tuned_config, compute_tuned).result
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
        ft = self.finetune_config
        config = {"baseline": self.baseline().key, "rates": [float(r) for r in rates], "criterion": criterion,
                  "policy": policy, "metric": metric, "tolerance": tolerance, "macs_target": macs_target,
                  "seed": int(seed), "steps": ft.steps, "lr": ft.lr, "weight_decay": ft.weight_decay,
                  "recal_batches": ft.recal_batches, "chosen_on": "val"}
        folder = self.results_dir / "iterative" / self.store.path("iterative", config).stem

        def compute():
            base = self.baseline()
            run = iterative(base.model, self.example_input(), rates, finetune=self.finetune, evaluate=self.evaluate,
                            recalibrate=self.recalibrate, metric=metric, tolerance=tolerance, macs_target=macs_target,
                            criterion=criterion, policy=policy, seed=seed, checkpoint_dir=folder,
                            reference=base.scores, validate=partial(self.evaluate, split="val"),
                            validation_reference=base.val_scores, progress=self.progress,
                            **self.prune_kwargs(criterion, base.model))
            return {"history": _history_rows(run.history), "chosen_step": run.chosen_step}
        record = self.store.fetch("iterative", config, compute)
        history = pd.DataFrame(record.result["history"])
        history.attrs["chosen_step"] = record.result["chosen_step"]
        return history


def _file_sha256(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {str(path)!r} not found (BaselineConfig.pretrained)")
    return file_sha256(path)


def _history_rows(frame: pd.DataFrame) -> list:
    return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in frame.to_dict("records")]
