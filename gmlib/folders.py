"""The two data-folder layouts `compress` reads: Severstal (segmentation) and class sub-folders (classification).

Severstal: `root/train.csv` + `root/train_images/*.jpg` (gmlib.data; four defect masks per strip), split by
`SeverstalDataset.split`. Classes: `root/<class>/<image>` (torchvision's ImageFolder), split per class, or already
split as `root/train/<class>/` and `root/val/<class>/`. `open_data` tells them apart; a folder in neither layout is an
error naming it. Every score is measured on the validation part; fine-tuning and recalibration draw from the rest.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from . import data as severstal

__all__ = ["Data", "open_data", "layout", "TASKS", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD",
           "write_elpv_folders", "ELPV_CLASSES"]

TASKS = ("segmentation", "classification")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what timm / torchvision weights expect


@dataclass
class Data:
    """A task's loaders: `train` (shuffled, augmented: fine-tuning, BatchNorm recalibration, int8 calibration) and
    `val` (fixed order: every score); `input_size` (C, H, W) is where MACs are counted and ONNX is exported."""
    task: str
    train: DataLoader
    val: DataLoader
    num_classes: int
    input_size: tuple
    root: Path | None = None
    classes: list = field(default_factory=list)

    def example_input(self, device=None) -> torch.Tensor:
        """A zero batch of one input at `input_size`."""
        return torch.zeros(1, *self.input_size, device=device)

    def calibration(self, batches: int = 4) -> list:
        """The images of the first `batches` training batches (int8 calibration)."""
        out = []
        for images, _ in self.train:
            out.append(images)
            if len(out) == batches:
                break
        return out


def _class_dirs(root: Path) -> list:
    """Sub-folders of `root` that hold at least one image file, sorted."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir() if f.is_file()))


def layout(root) -> str:
    """"severstal", "split-classes" (train/ and val/ with class sub-folders) or "classes"; ValueError naming the
    folder when it is in neither layout, FileNotFoundError when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist or is not a folder")
    if (root / "train.csv").is_file() and (root / "train_images").is_dir():
        return "severstal"
    if all((root / s).is_dir() and len(_class_dirs(root / s)) >= 2 for s in ("train", "val")):
        return "split-classes"
    if len(_class_dirs(root)) >= 2:
        return "classes"
    raise ValueError(f"data folder {str(root)!r} is in neither layout: expected train.csv + train_images/ "
                     f"(Severstal, segmentation) or at least two class sub-folders of images (classification, "
                     f"e.g. {root.name}/ok/*.png and {root.name}/defect/*.png)")


def open_data(root, *, size: int = 224, scale: float = 0.25, crop=None, batch_size: int = 8,
              val_fraction: float = 0.2, seed: int = 0, normalize: bool = True, workers: int = 0) -> Data:
    """The Data of folder `root` (or `root` itself when it is a Data already).

    Segmentation: strips downscaled by `scale`, random `crop` (h, w) with flips for training (default the strip's
    height by at most 256, multiples of 32), whole strips for validation (padded to a multiple of 32 where scored).
    Classification: images resized to `size` x `size`, flipped for training, normalised with ImageNet statistics
    unless `normalize` is False. `val_fraction` of the images (per class) are held out, drawn with `seed`.
    """
    if isinstance(root, Data):
        return root
    kind = layout(root)
    root = Path(root)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if kind == "severstal":
        return _severstal(root, scale, crop, batch_size, val_fraction, seed, workers)
    return _classes(root, kind, size, batch_size, val_fraction, seed, normalize, workers)


def _loaders(train_set, val_set, batch_size, seed, workers):
    train = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(seed), num_workers=workers)
    return train, DataLoader(val_set, batch_size=batch_size, num_workers=workers)


def _severstal(root, scale, crop, batch_size, val_fraction, seed, workers) -> Data:
    full = severstal.SeverstalDataset(root)
    if len(full) < 3:
        raise ValueError(f"data folder {str(root)!r} holds {len(full)} images: too few to hold some out")
    train_ids, val_ids = full.split(val_fraction, seed)
    h, w = (max(1, round(n * scale)) for n in severstal.IMAGE_SHAPE)
    if crop is None:
        crop = (h - h % 32 or h, min(256, w - w % 32) or w)
    crop = tuple(int(c) for c in crop)
    if len(crop) != 2 or crop[0] > h or crop[1] > w or min(crop) < 1:
        raise ValueError(f"crop must be (h, w) within the scaled strip {h} x {w}, got {crop!r}")
    cache = len(full) * 7 * h * w <= 2 ** 30  # decoded strips kept in memory when they fit in 1 GiB
    train_set = severstal.SeverstalDataset(root, train_ids, crop=crop, flip=True, scale=scale, cache=cache,
                                           generator=torch.Generator().manual_seed(seed))
    val_set = severstal.SeverstalDataset(root, val_ids, scale=scale, cache=cache)
    train, val = _loaders(train_set, val_set, batch_size, seed, workers)
    size = (3, h + -h % 32, w + -w % 32)  # one strip, padded as the network sees it
    return Data("segmentation", train, val, len(severstal.CLASS_NAMES), size, root,
                list(severstal.CLASS_NAMES.values()))


def _classes(root, kind, size, batch_size, val_fraction, seed, normalize, workers) -> Data:
    from torchvision import datasets, transforms
    if not (isinstance(size, int) and size >= 8):
        raise ValueError(f"size must be an int >= 8 (pixels), got {size!r}")
    steps = [transforms.Resize((size, size)), transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    plain = transforms.Compose(steps)
    augmented = transforms.Compose([transforms.RandomHorizontalFlip(), *steps])
    if kind == "split-classes":
        train_set = datasets.ImageFolder(root / "train", augmented)
        val_set = datasets.ImageFolder(root / "val", plain)
        if train_set.classes != val_set.classes:
            raise ValueError(f"data folder {str(root)!r}: train/ has classes {train_set.classes}, val/ has "
                             f"{val_set.classes}")
        classes = train_set.classes
    else:
        train_all, val_all = datasets.ImageFolder(root, augmented), datasets.ImageFolder(root, plain)
        train_idx, val_idx = _split(np.array(train_all.targets), val_fraction, seed)
        train_set, val_set, classes = Subset(train_all, train_idx), Subset(val_all, val_idx), train_all.classes
    train, val = _loaders(train_set, val_set, batch_size, seed, workers)
    return Data("classification", train, val, len(classes), (3, size, size), root, list(classes))


def _split(labels: np.ndarray, val_fraction: float, seed: int):
    """(train indices, val indices): round(val_fraction n_c) of each class c (at least one) held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    rng, train, val = np.random.default_rng(seed), [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val += members[:k].tolist()
        train += members[k:].tolist()
    return sorted(train), sorted(val)


ELPV_CLASSES = ("defective", "ok")  # defect probability >= 0.5, and below


def write_elpv_folders(out, *, root=None, limit: int | None = None, seed: int = 0, val_fraction: float = 0.15,
                       test_fraction: float = 0.25) -> dict:
    """Lay the ELPV cells (gmlib.data.load_elpv's package) out as `out/train/<class>/` and `out/val/<class>/`, the
    classes "defective" (probability >= 0.5) and "ok": the split-classes layout `open_data` reads. The split is
    chapter 13's (gmlib.data.elpv_split with these fractions and `seed`); the test cells are left out, so every
    choice and score of `compress` reads validation cells only. The PNG files are copied as they are.

    Returns {"train": {class: n}, "val": {...}}. Written in a temporary folder beside `out`, renamed into place when
    complete; an `out` that exists already is an error naming it (the images are CC BY-NC-SA: keep them out of git).
    """
    import json
    import shutil
    import tempfile
    from .data.elpv import package_root, elpv_split, read_elpv_labels
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"ELPV folder {str(out)!r} exists already; remove it or choose another")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"ELPV folder {str(out)!r}: its parent folder does not exist")
    source = package_root(root)
    names, classes, types = read_elpv_labels(source, limit)
    train, val, _ = elpv_split(classes, types, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    for part, indices in (("train", train), ("val", val)):
        defective = int((classes[indices] >= 2).sum())
        if min(defective, len(indices) - defective) == 0:
            raise ValueError(f"ELPV cells (limit {limit}): the {part} part holds {defective} defective and "
                             f"{len(indices) - defective} ok cells; both classes must have some (raise the limit)")
    counts = {}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for part, indices in (("train", train), ("val", val)):
            counts[part] = {c: 0 for c in ELPV_CLASSES}
            for c in ELPV_CLASSES:
                (tmp / part / c).mkdir(parents=True)
            for i in indices:
                label = ELPV_CLASSES[0] if classes[i] >= 2 else ELPV_CLASSES[1]
                shutil.copyfile(source / names[i], tmp / part / label / Path(names[i]).name)
                counts[part][label] += 1
        (tmp / "elpv.json").write_text(json.dumps(
            {"source": "elpv_dataset (CC BY-NC-SA 4.0)", "seed": seed, "val_fraction": val_fraction,
             "test_fraction": test_fraction, "limit": limit, "counts": counts}, indent=1) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
