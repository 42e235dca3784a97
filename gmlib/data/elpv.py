"""ELPV: 2,624 real electroluminescence images of solar cells (Deitsch et al. 2019), read from the installed package.

Each 300 x 300 grey cell carries an expert's defect probability in {0, 1/3, 2/3, 1} and its type (mono / poly).
Classes: four (the probability's index) and binary (defective = probability >= 0.5). The split is fixed: stratified
by probability x type, the literature's 75 / 25 train / test, and a validation part carved from train for every
choice. Data licence CC BY-NC-SA 4.0: the project stores results derived from it, never the images.
"""
import hashlib
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F
from torch.utils.data import Dataset

__all__ = ["ELPV_PACKAGE", "package_root", "ELPV_PIP", "PROBABILITIES", "CELL_TYPES", "Elpv", "read_elpv_labels", "load_elpv",
           "elpv_split",
           "ElpvDataset", "ELPV_MEAN", "ELPV_STD"]

ELPV_PACKAGE = "elpv_dataset"
ELPV_PIP = "pip install elpv-dataset==1.0.0.post1"
PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)  # class index = position here
CELL_TYPES = ("mono", "poly")
IMAGE_SIZE = 300
ELPV_MEAN, ELPV_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the pretrained encoder expects


@dataclass(frozen=True)
class Elpv:
    """The whole set in memory: images uint8 (N, 300, 300), four-class labels (N,), types (N,) and file names."""
    images: np.ndarray
    classes: np.ndarray   # 0..3, index into PROBABILITIES
    types: np.ndarray     # "mono" | "poly"
    names: tuple

    @property
    def defective(self) -> np.ndarray:
        """The primary, binary label: probability >= 0.5."""
        return (self.classes >= 2).astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 over names, labels and types (16 hex digits): the set a record was computed on."""
        h = hashlib.sha256()
        for name, c, t in zip(self.names, self.classes, self.types):
            h.update(f"{name},{int(c)},{t};".encode())
        return h.hexdigest()[:16]


def package_root(root=None) -> Path:
    if root is not None:
        return Path(root)
    spec = util.find_spec(ELPV_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the ELPV data set is not installed; run `{ELPV_PIP}` (or `make test`, which "
                                  f"installs the project's `real` extra)")
    return Path(spec.origin).parent / "data"


def _read_cell(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            cell = np.array(im.convert("L"))  # a full decode: a truncated file fails here
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ELPV image missing (reinstall with `{ELPV_PIP}`)") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt or unreadable ELPV image ({exc})") from None
    if cell.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{path}: image is {cell.shape[0]}x{cell.shape[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return cell


def read_elpv_labels(root=None, limit: int | None = None) -> tuple:
    """(file names, grade indices, cell types) from labels.csv, without reading an image; a bad row names its
    file and line."""
    labels = package_root(root) / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: ELPV labels missing (reinstall with `{ELPV_PIP}`)")
    names, classes, types = [], [], []
    for line_no, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            name, prob, kind = parts[0], float(parts[1]), parts[2]
            cls = int(np.argmin([abs(prob - p) for p in PROBABILITIES]))
            if abs(PROBABILITIES[cls] - prob) > 1e-3 or kind not in CELL_TYPES:
                raise ValueError(line)
        except (IndexError, ValueError):
            raise ValueError(f"{labels}:{line_no}: not 'path probability type' with a probability in "
                             f"0, 1/3, 2/3, 1 and a type in {CELL_TYPES}: {line!r}") from None
        names.append(name), classes.append(cls), types.append(kind)
        if limit is not None and len(names) >= limit:
            break
    return tuple(names), np.array(classes, dtype=np.int64), np.array(types)


def load_elpv(root=None, limit: int | None = None) -> Elpv:
    """Read labels.csv and the images from the installed `elpv_dataset` package (or a folder in its layout).

    `limit` reads only the first n cells (tests). A missing package names the pip command; a bad row or image
    names its file.
    """
    root = package_root(root)
    names, classes, types = read_elpv_labels(root, limit)
    images = np.stack([_read_cell(root / n) for n in names])
    return Elpv(images=images, classes=classes, types=types, names=names)


def elpv_split(classes, types, *, test_fraction: float = 0.25, val_fraction: float = 0.15, seed: int = 0):
    """Indices (train, val, test), each sorted: every stratum (class x type) permuted once with `seed`; its first
    round(test_fraction n) go to test, the next round(val_fraction (n - n_test)) to validation, the rest to train."""
    classes, types = np.asarray(classes), np.asarray(types)
    if len(classes) != len(types):
        raise ValueError(f"classes ({len(classes)}) and types ({len(types)}) differ in length")
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < f < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {f!r}")
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for stratum in sorted({(int(c), str(t)) for c, t in zip(classes, types)}):
        members = np.flatnonzero((classes == stratum[0]) & (types == stratum[1]))
        members = members[rng.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        n_val = int(round(val_fraction * (len(members) - n_test)))
        test += members[:n_test].tolist()
        val += members[n_test:n_test + n_val].tolist()
        train += members[n_test + n_val:].tolist()
    return np.sort(train), np.sort(val), np.sort(test)


class ElpvDataset(Dataset):
    """(image, four-class label) pairs: float32 (3, size, size), the grey cell resized once (bilinear, antialiased)
    and normalised with ImageNet's statistics; with `augment`, label-preserving flips and 90-degree turns."""

    def __init__(self, elpv: Elpv, indices, size: int = 224, augment: bool = False, seed: int = 0):
        indices = np.asarray(indices, dtype=np.int64)
        if not isinstance(size, int) or size < 32:
            raise ValueError(f"size must be an int >= 32, got {size!r}")
        cells = torch.from_numpy(elpv.images[indices]).float().div_(255).unsqueeze(1)  # (n, 1, 300, 300)
        if size != IMAGE_SIZE:
            cells = F.interpolate(cells, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean, std = torch.tensor(ELPV_MEAN).view(1, 3, 1, 1), torch.tensor(ELPV_STD).view(1, 3, 1, 1)
        self.images = ((cells.clamp(0, 1).expand(-1, 3, -1, -1) - mean) / std).contiguous()  # (n, 3, size, size)
        self.labels = torch.from_numpy(elpv.classes[indices])
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        if self.augment:
            flip, turns = torch.randint(0, 2, (2,), generator=self.generator), torch.randint(0, 4, (1,),
                                                                                            generator=self.generator)
            if flip[0]:
                image = image.flip(-1)
            if flip[1]:
                image = image.flip(-2)
            image = torch.rot90(image, int(turns), dims=(-2, -1))
        return image, self.labels[i]
