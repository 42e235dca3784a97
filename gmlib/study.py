"""The set-up every chapter of the study shares: a profile (network, data, training budget), the data split, the
trained baseline, and the fine-tune and evaluate calls that the pruning chapters hand to `gmlib.schedule`.

The baseline is trained once and saved as results/baseline/<arch>-<key>.pt, key = hash of its configuration and of
the data it was trained on; every chapter asks for it by configuration and gets that file, or trains it through the
same call when it is missing. A checkpoint of another configuration has another name, so it is never reused.
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

from . import data, metrics, models, train
from .graph import analyse
from .surgery import apply_kept
from .utils import default_device

__all__ = ["BaselineConfig", "FinetuneConfig", "PROFILES", "Baseline", "Study"]

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
    val_fraction: float         # share held out, stratified by each image's rarest class
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


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning budget after pruning: the same for every criterion, rate and seed."""
    steps: int                  # optimiser steps (batches of the baseline's batch size)
    lr: float                   # AdamW peak lr, cosine to 0 over the steps
    weight_decay: float = 1e-4


PROFILES = {
    # a 2-core CPU: the small encoder, quarter-resolution strips (64 x 400), a few minutes of training
    "quick": (BaselineConfig(arch="fpn_resnest14d", n_images=2000, data_seed=0, val_fraction=0.25, scale=0.25,
                             crop=(64, 256), batch_size=8, epochs=3, lr=1e-3, weight_decay=1e-4, pos_weight=5.0,
                             defect_oversampling=3.0, monitor="dice_positive", seed=0),
              FinetuneConfig(steps=40, lr=5e-4)),
    # a GPU: the paper's FPN-ResNeSt50 on full-resolution strips, as many synthetic strips as the real train set
    "paper": (BaselineConfig(arch="fpn_resnest50", n_images=12568, data_seed=0, val_fraction=0.2, scale=1.0,
                             crop=(256, 512), batch_size=16, epochs=40, lr=3e-4, weight_decay=1e-4, pos_weight=5.0,
                             defect_oversampling=3.0, monitor="dice_positive", seed=0),
              FinetuneConfig(steps=2000, lr=1e-4)),
}


@dataclass
class Baseline:
    """The trained baseline: network (eval mode), tuned post-processing, validation scores, training history."""
    model: nn.Module
    postprocess: dict           # {"threshold": [4 floats], "min_area": [4 ints]} chosen on the validation strips
    scores: dict                # train.evaluate with that post-processing
    history: pd.DataFrame       # one row per epoch
    path: Path
    key: str
    seconds: float              # training wall time (when it was trained)
    trained_now: bool           # False: loaded from `path`

    def copy(self) -> nn.Module:
        """A deep copy of the network, to prune without touching the baseline."""
        return copy.deepcopy(self.model)


class Study:
    """One profile's data, baseline, fine-tuning and evaluation.

    Args:
        profile: "quick" or "paper" (see PROFILES), or a (BaselineConfig, FinetuneConfig) pair.
        data_dir: a Severstal-layout folder; the synthetic set is generated there unless it holds real data.
        results_dir: where results/baseline/ checkpoints live.
        device: default CUDA when present.
        overrides: BaselineConfig fields to change, e.g. seed=1 or epochs=10 (a new configuration, a new key).
    """

    def __init__(self, profile="quick", data_dir="../data/synthetic", results_dir="../results", *, device=None,
                 progress: bool = True, **overrides):
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
        self.progress = progress
        self.results_dir = Path(results_dir)
        self.data_dir = data.ensure_data(data_dir, cfg.n_images, cfg.data_seed, progress=progress)
        full = data.SeverstalDataset(self.data_dir)
        self.train_ids, self.val_ids = full.split(cfg.val_fraction, cfg.data_seed)
        self.train_set = data.SeverstalDataset(self.data_dir, self.train_ids, crop=cfg.crop, flip=True,
                                               scale=cfg.scale, generator=torch.Generator(), cache=True)
        self.val_set = data.SeverstalDataset(self.data_dir, self.val_ids, scale=cfg.scale, cache=True)
        self.val_loader = DataLoader(self.val_set, batch_size=16, num_workers=0)
        self._weights = [cfg.defect_oversampling if has else 1.0 for has in self.train_set.has_defect()]
        self.loss_fn = partial(train.bce_dice_loss, pos_weight=cfg.pos_weight)
        h, w = self.val_set.size
        self.input_size = (3, h + -h % 32, w + -w % 32)  # one validation strip, padded as the FPN sees it
        self._baseline = None

    # ------------------------------------------------------------------------------------------------ data
    def train_loader(self, seed: int, n_batches: int | None = None) -> DataLoader:
        """Random crops with flips, defect images oversampled; `n_batches` per pass (default: one epoch's worth)."""
        bs = self.config.batch_size
        n = len(self._weights) if n_batches is None else n_batches * bs
        self.train_set.generator.manual_seed(seed)
        sampler = WeightedRandomSampler(self._weights, n, replacement=True,
                                        generator=torch.Generator().manual_seed(seed))
        return DataLoader(self.train_set, batch_size=bs, sampler=sampler, num_workers=0)

    def val_target(self) -> torch.Tensor:
        return torch.cat([mask for _, mask in self.val_loader]).bool()

    def example_input(self) -> torch.Tensor:
        """A zero batch of one padded validation strip: what `prune` traces and counts MACs on."""
        return torch.zeros(1, *self.input_size, device=self.device)

    def data_identity(self) -> dict:
        """What the baseline key records about the data: the synthetic manifest, or a hash of real labels."""
        manifest = self.data_dir / "synthetic.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())
        return {"real": hashlib.sha256((self.data_dir / "train.csv").read_bytes()).hexdigest()[:16],
                "n_images": len(self.train_ids) + len(self.val_ids)}

    # ------------------------------------------------------------------------------------------------ training
    def fit(self, model: nn.Module, *, seed: int | None = None) -> pd.DataFrame:
        """Train `model` with the baseline's recipe (epochs, lr, loss, best epoch by validation `monitor`)."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        return train.fit(model, self.train_loader(seed), self.val_loader, epochs=cfg.epochs, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, device=self.device, seed=seed, monitor=cfg.monitor,
                         loss_fn=self.loss_fn, progress=self.progress)

    def finetune(self, model: nn.Module, seed: int = 0, *, steps: int | None = None) -> pd.DataFrame:
        """Fine-tune in place for the fixed budget (FinetuneConfig, or `steps`): no validation, last weights kept."""
        ft = self.finetune_config
        steps = ft.steps if steps is None else steps
        return train.fit(model, self.train_loader(seed, steps), None, epochs=1, lr=ft.lr,
                         weight_decay=ft.weight_decay, device=self.device, seed=seed, loss_fn=self.loss_fn,
                         progress=False)

    def evaluate(self, model: nn.Module, postprocess: dict | None = None) -> dict:
        """Validation loss and Dice (Kaggle, positive pairs, per class) with the baseline's tuned post-processing."""
        post = postprocess if postprocess is not None else self.baseline().postprocess
        return train.evaluate(model, self.val_loader, device=self.device, threshold=post["threshold"],
                              min_area=post["min_area"], loss_fn=self.loss_fn)

    def tune_postprocess(self, model: nn.Module) -> dict:
        """Per-class threshold and minimum area that maximise the validation Kaggle Dice of `model`."""
        probs = train.predict(model, self.val_loader, device=self.device)
        areas = sorted({int(round(a * self.config.scale ** 2)) for a in MIN_AREAS_FULL_RES})
        post = metrics.tune_postprocess(probs, self.val_target(), thresholds=THRESHOLDS, min_areas=areas)
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
        kept = getattr(pruned, "_gmlib_kept", None) or {}
        apply_kept(model, kept)
        model._gmlib_kept = copy.deepcopy(kept)
        return model.to(self.device)

    # ------------------------------------------------------------------------------------------------ baseline
    def key(self) -> str:
        blob = json.dumps({"config": dataclasses.asdict(self.config), "data": self.data_identity()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def checkpoint_path(self) -> Path:
        return self.results_dir / "baseline" / f"{self.config.arch}-{self.key()}.pt"

    def baseline(self, *, retrain: bool = False) -> Baseline:
        """The trained baseline of this configuration: loaded from its checkpoint, or trained (and saved) if the
        checkpoint is missing or `retrain`. Kept in memory after the first call."""
        if self._baseline is not None and not retrain:
            return self._baseline
        path, key = self.checkpoint_path(), self.key()
        if path.is_file() and not retrain:
            self._baseline = self._load(path, key)
        else:
            self._baseline = self._train(path, key)
        return self._baseline

    def _train(self, path, key) -> Baseline:
        cfg = self.config
        model = models.create(cfg.arch, seed=cfg.seed)
        start = time.perf_counter()
        history = self.fit(model)
        seconds = time.perf_counter() - start
        post = self.tune_postprocess(model)
        scores = self.evaluate(model, post)
        rows = [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()}  # plain Python numbers:
                for row in history.to_dict("records")]                              # weights_only-loadable
        train.save_checkpoint(path, model, key=key, config=dataclasses.asdict(cfg), data=self.data_identity(),
                              postprocess=post, scores=scores, history=rows, seconds=seconds)
        return Baseline(model.eval(), post, scores, pd.DataFrame(rows), path, key, seconds, True)

    def _load(self, path, key) -> Baseline:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            raise ValueError(f"{path} holds key {blob.get('key')!r}, expected {key!r}: delete it to retrain")
        model = models.create(self.config.arch)
        model.load_state_dict(blob["state_dict"])
        model.to(self.device).eval()
        return Baseline(model, blob["postprocess"], blob["scores"], pd.DataFrame(blob["history"]), path, key,
                        blob["seconds"], False)
