"""A profile set up: its data (generated when missing, split three ways, loaded) and its training recipe (the
baseline's fit, the fixed-budget fine-tune, BatchNorm recalibration, evaluation and post-processing tuning on a
split). The experiments (gmlib.book.study) stand on it; nothing here reads or writes a record but the keys' parts.

The training loss is BCE (defect pixels weighted `pos_weight`) plus soft Dice; Dice is scored after a per-class
threshold and minimum area, tuned on the validation strips. Every reported score is on the test strips.
"""
import dataclasses
import hashlib
import json
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from .. import data, metrics, models, train
from ..graph import analyse
from ..pretrained import file_sha256
from ..recalibrate import recalibrate_bn
from ..shrink import apply_kept, kept_of, remember
from ..store import Store
from ..utils import default_device
from .profiles import CACHE_BUDGET_BYTES, MIN_AREAS_FULL_RES, PROFILES, RECAL_SEED, THRESHOLDS, BaselineConfig
from .records import StudyRecords

__all__ = ["StudySetup"]


class StudySetup:
    """One profile's data and recipe: the three-way split and its loaders, training, fine-tuning, BatchNorm
    recalibration, evaluation with a post-processing, and the store's records (`records`: every key).

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
        self.records = StudyRecords(self.store, self.config, self.finetune_config)
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

    def default_postprocess(self) -> dict:
        """What `evaluate` applies unless told: the raw threshold 0.5, no minimum area (a Study: its baseline's)."""
        return {"threshold": [0.5] * 4, "min_area": None}

    def evaluate(self, model: nn.Module, postprocess: dict | None = None, split: str = "test") -> dict:
        """Loss and Dice (Kaggle, positive pairs, per class) on a split's strips (default: test) with
        `postprocess` (default: `default_postprocess()`)."""
        post = postprocess if postprocess is not None else self.default_postprocess()
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

    def min_areas(self) -> list:
        """The minimum areas post-processing tuning tries, scaled to the profile's strips."""
        return sorted({int(round(a * self.config.scale ** 2)) for a in MIN_AREAS_FULL_RES})

    def tune_postprocess(self, model: nn.Module) -> dict:
        """Per-class threshold and minimum area that maximise the validation Kaggle Dice of `model` (streamed
        batch by batch: memory does not grow with the strips)."""
        tuner = metrics.PostprocessTuner(thresholds=THRESHOLDS, min_areas=self.min_areas())
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


def pretrained_sha256(path) -> str:
    """The sha256 of a pretrained weight file (BaselineConfig.pretrained), which keys the baseline."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {str(path)!r} not found (BaselineConfig.pretrained)")
    return file_sha256(path)
