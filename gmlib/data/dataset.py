"""SeverstalDataset: (image, mask) pairs from a folder in the Kaggle layout (`train_images/*.jpg` + `train.csv`).

image: float32 (3, H, W) in [0, 1] (not normalised; MEAN/STD below if you want to); mask: uint8 (4, H, W) of 0/1
(cast to float for a loss), channel c-1 for class c. The image list comes from the folder, so defect-free images
(absent from today's CSV) count.
Order of transforms: downscale by `scale` (image bilinear + antialias, mask nearest), random crop, flips, jitter.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .labels import CLASS_NAMES, REAL_CLASS_COUNTS, read_labels
from .rle import IMAGE_SHAPE, rle_decode

__all__ = ["MEAN", "STD", "SeverstalDataset", "load_image", "train_val_split",
           "train_val_test_split"]

MEAN, STD = 0.344, 0.196  # grey-level statistics of the real Severstal train images in [0, 1]


def load_image(path) -> np.ndarray:
    """Read a Severstal JPEG -> uint8 (256, 1600, 3); errors name the file (missing, corrupt, wrong size)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # forces a full decode, so truncated files fail here
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt or unreadable image ({exc})") from None
    if im.size != IMAGE_SHAPE[::-1]:
        raise ValueError(f"{path}: image is {im.size[1]}x{im.size[0]} (HxW), expected "
                         f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")
    return np.array(im)  # a writable copy, so torch.from_numpy does not warn


def train_val_split(image_ids, val_fraction: float, seed: int, *, stratify=None):
    """Deterministic split -> (train_ids, val_ids), both sorted; independent of the input order.

    With `stratify` (one label per id, e.g. "has a defect"), each label group is split in the same proportion.
    """
    train, val, _ = train_val_test_split(image_ids, val_fraction, 0.0, seed, stratify=stratify)
    return train, val


def train_val_test_split(image_ids, val_fraction: float, test_fraction: float, seed: int, *, stratify=None):
    """Deterministic three-way split -> (train_ids, val_ids, test_ids), each sorted; independent of the input order.

    Each label group of `stratify` is permuted once; its first round(test_fraction n) ids go to test, the next
    round(val_fraction n) to validation. With test_fraction 0 this is `train_val_split`.
    """
    ids = [str(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("image_ids contains duplicates")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1 - val_fraction), got {test_fraction}")
    if len(ids) < 2 + (test_fraction > 0):
        raise ValueError(f"need at least {2 + (test_fraction > 0)} image ids to split, got {len(ids)}")
    labels = [0] * len(ids) if stratify is None else list(stratify)
    if len(labels) != len(ids):
        raise ValueError(f"stratify has {len(labels)} labels for {len(ids)} image ids")
    rng = np.random.default_rng(seed)
    by_label = {}
    for i, label in sorted(zip(ids, labels)):
        by_label.setdefault(label, []).append(i)
    val, test = [], []
    for label in sorted(by_label, key=str):
        group = by_label[label]
        order = [group[j] for j in rng.permutation(len(group))]
        k_test, k_val = int(round(test_fraction * len(group))), int(round(val_fraction * len(group)))
        test += order[:k_test]
        val += order[k_test:k_test + k_val]
    rest = [i for i in sorted(ids) if i not in set(test)]
    if not val:  # tiny sets: keep at least one validation image
        val = [rest[int(rng.integers(len(rest)))]]
    if len(val) == len(rest):
        val = val[:-1]
    held = set(val) | set(test)
    return sorted(i for i in ids if i not in held), sorted(val), sorted(test)


class SeverstalDataset(Dataset):
    """Severstal steel images and their 4-class masks, read from `root/train_images/` and `root/train.csv`.

    Args:
        root: folder in the Kaggle layout (real data or `make_synthetic_severstal` output).
        image_ids: subset of image names ("0002cc93b.jpg"); default every jpg in `train_images/`.
        crop: (h, w) random crop taken after scaling (None: whole image).
        flip: random horizontal and vertical flips, each with probability 0.5.
        scale: downscale factor, e.g. 0.5 -> 128 x 800 (masks by nearest neighbour).
        jitter: brightness and contrast factors drawn from [1 - jitter, 1 + jitter].
        generator: torch.Generator for the random crop/flip/jitter (default: torch's global RNG, which DataLoader
            workers seed for you). An index given as a pair (i, seed) uses a generator seeded with `seed` instead
            (`data.WeightedDraws` makes such pairs: the augmentation then belongs to the draw, not the worker).
        cache: keep decoded, scaled images and masks in memory (fast epochs for small sets).

    The CSV and the file list are checked when the dataset is made; images are decoded (and checked) when read, or
    all at once by verify_images().
    """

    def __init__(self, root, image_ids=None, *, crop=None, flip=False, scale=1.0, jitter=0.0,
                 generator=None, cache=False):
        self.root = Path(root)
        self.image_dir = self.root / "train_images"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: folder not found (expected the Kaggle layout "
                                    f"root/train_images/*.jpg + root/train.csv)")
        self.labels = read_labels(self.root / "train.csv")
        on_disk = sorted(p.name for p in self.image_dir.glob("*.jpg"))
        if not on_disk:
            raise FileNotFoundError(f"{self.image_dir}: no .jpg images in the folder")
        missing = sorted(set(self.labels["ImageId"]) - set(on_disk))
        if missing:
            line = int(self.labels.loc[self.labels["ImageId"] == missing[0], "line"].iloc[0])
            raise FileNotFoundError(f"{self.root / 'train.csv'}, line {line}: labels {len(missing)} image(s) "
                                    f"missing from {self.image_dir}, first {missing[0]}")
        if image_ids is None:
            image_ids = on_disk
        image_ids = [str(i) for i in image_ids]
        absent = sorted(set(image_ids) - set(on_disk))
        if absent:
            raise FileNotFoundError(f"{self.image_dir / absent[0]}: image file not found "
                                    f"({len(absent)} requested id(s) missing)")
        self.image_ids = image_ids
        self.rles = {(r.ImageId, r.ClassId): r.EncodedPixels for r in self.labels.itertuples()}
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.scale = float(scale)
        self.size = (round(IMAGE_SHAPE[0] * scale), round(IMAGE_SHAPE[1] * scale))  # (H, W) after scaling
        if crop is not None:
            crop = tuple(int(c) for c in crop)
            if len(crop) != 2 or not (0 < crop[0] <= self.size[0] and 0 < crop[1] <= self.size[1]):
                raise ValueError(f"crop must be (h, w) within the scaled image {self.size}, got {crop}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.crop, self.flip, self.jitter, self.generator = crop, bool(flip), float(jitter), generator
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.image_ids)

    def mask(self, image_id) -> np.ndarray:
        """uint8 (4, 256, 1600) mask of one image at full resolution."""
        masks = np.zeros((len(CLASS_NAMES), *IMAGE_SHAPE), np.uint8)
        for c in CLASS_NAMES:
            if (image_id, c) in self.rles:
                masks[c - 1] = rle_decode(self.rles[image_id, c])
        return masks

    def _load(self, index):
        image_id = self.image_ids[index]
        if self._cache is not None and image_id in self._cache:
            return self._cache[image_id]
        image = torch.from_numpy(load_image(self.image_dir / image_id)).permute(2, 0, 1)  # (3, H, W) uint8
        mask = torch.from_numpy(self.mask(image_id))  # (4, H, W) uint8
        if self.scale != 1.0:
            image = TF.resize(image, list(self.size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            rows, cols = (((torch.arange(n) + 0.5) * full / n).long() for n, full in zip(self.size, IMAGE_SHAPE))
            mask = mask[:, rows][:, :, cols]  # nearest neighbour (pixel centres), like NEAREST_EXACT but faster
        if self._cache is not None:
            self._cache[image_id] = (image, mask)
        return image, mask

    def __getitem__(self, index):
        g = self.generator
        if isinstance(index, (tuple, list)):  # (index, seed) from WeightedDraws
            index, g = index[0], torch.Generator().manual_seed(int(index[1]))
        image, mask = self._load(index)  # uint8: cropped and flipped before the (elementwise) conversion to float
        if self.crop is not None:
            h, w = self.crop
            top = int(torch.randint(0, self.size[0] - h + 1, (1,), generator=g))
            left = int(torch.randint(0, self.size[1] - w + 1, (1,), generator=g))
            image, mask = TF.crop(image, top, left, h, w), TF.crop(mask, top, left, h, w)
        if self.flip:
            hflip, vflip = torch.rand(2, generator=g).tolist()
            if hflip < 0.5:
                image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
            if vflip < 0.5:
                image, mask = TF.vertical_flip(image), TF.vertical_flip(mask)
        image = image.float().div_(255.0)  # the mask stays uint8 (0/1) until the loss: a quarter of the bytes
        if self.jitter:
            brightness, contrast = (1.0 + self.jitter * (2 * torch.rand(2, generator=g) - 1)).tolist()
            image = TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)
        return image.contiguous(), mask.contiguous()

    def verify_images(self):
        """Decode every image once (images are otherwise read lazily): raises on the first missing, corrupt or
        wrongly sized file, naming it."""
        for image_id in self.image_ids:
            load_image(self.image_dir / image_id)

    def has_defect(self):
        """Bool per image in `image_ids`: does it carry any labelled defect?"""
        defective = set(self.labels["ImageId"])
        return [i in defective for i in self.image_ids]

    def rarest_class(self):
        """Per image in `image_ids`: its rarest class in the real train set (edge crack < rolled-in scale < pit <
        scratches), 0 when defect-free. A split stratified by it gives every class its share on both sides."""
        rank = {c: r for r, c in enumerate(sorted(CLASS_NAMES, key=REAL_CLASS_COUNTS.get), 1)}
        rarest = {}
        for image_id, c in zip(self.labels["ImageId"], self.labels["ClassId"]):
            if image_id not in rarest or rank[c] < rank[rarest[image_id]]:
                rarest[image_id] = c
        return [rarest.get(i, 0) for i in self.image_ids]

    def split(self, val_fraction: float, seed: int, test_fraction: float = 0.0):
        """(train_ids, val_ids) of this dataset's images, stratified by `rarest_class` (so also by has-a-defect);
        with `test_fraction`, (train_ids, val_ids, test_ids)."""
        parts = train_val_test_split(self.image_ids, val_fraction, test_fraction, seed, stratify=self.rarest_class())
        return parts if test_fraction else parts[:2]

    def class_stats(self) -> pd.DataFrame:
        """Per class: images carrying it, their share of all images, mean mask area (% of the image) where present.

        The last row (class 0, "defect-free") counts images with no label. Areas come from the RLE run lengths.
        """
        labels = self.labels[self.labels["ImageId"].isin(set(self.image_ids))]
        area = labels["EncodedPixels"].str.split().map(lambda t: sum(map(int, t[1::2])))
        labels = labels.assign(area_pct=100.0 * area / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1]))
        n = len(self.image_ids)
        rows = []
        for c, name in CLASS_NAMES.items():
            sub = labels[labels["ClassId"] == c]
            rows.append((c, name, len(sub), len(sub) / n, sub["area_pct"].mean() if len(sub) else float("nan")))
        free = n - labels["ImageId"].nunique()
        rows.append((0, "defect-free", free, free / n, 0.0))
        return pd.DataFrame(rows, columns=["class_id", "name", "images", "image_share", "mean_area_pct"])
