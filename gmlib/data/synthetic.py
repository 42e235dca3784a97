"""Synthetic steel strips written in the Severstal layout: `train_images/<9 hex>.jpg` + `train.csv` (today's format).

Texture: noise stretched along the rolling direction (horizontal), per-image brightness/contrast/gamma, occasional
black end bands. Defects, shaped like the real ones: 1 pit clusters, 2 jagged edge cracks, 3 long scratches along x,
4 dark blotchy rolled-in scale. Labels are coarse polygons around the faint, irregular visible defect (plus some
unlabelled faint look-alikes), so a model cannot reach Dice 1. Class shares follow the real train set (quotas).
Deterministic: image i depends only on (seed, i) and its classes; the same seed gives byte-identical JPEGs.
"""
import contextlib
import functools
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from .labels import NEW_HEADER, REAL_CLASS_COUNTS
from .rle import IMAGE_SHAPE, rle_encode

__all__ = ["REAL_COUNTS", "CONTRAST", "V4_CONTRAST", "make_synthetic_severstal", "ensure_synthetic", "ensure_data",
           "is_synthetic", "render_strip", "assign_classes"]

H, W = IMAGE_SHAPE
MANIFEST = "synthetic.json"
VERSION = 5  # bump when the images change, so ensure_synthetic regenerates old sets
# Contrast of texture and defects (grey levels of 255 for the ink; rng.uniform ranges). Version 5 halved the fine
# texture (streaks, grain) but not the slow shading, and darkened and widened the defects: in version 4 (V4_CONTRAST)
# they were hidden in the texture, and a network small enough for a CPU learnt scratches only. Notebook 04 shows both.
CONTRAST = {"shading amplitude": (0.20, 0.33), "texture amplitude": (0.10, 0.17), "pit ink": (90, 170),
            "pit dot radius (px)": (1.2, 3.0), "crack ink": (110, 190), "crack line width (px)": (2, 3),
            "scratch ink": (100, 170), "scratch line width (px)": (2, 3)}
V4_CONTRAST = {"shading amplitude": (0.20, 0.33), "texture amplitude": (0.20, 0.33), "pit ink": (30, 110),
               "pit dot radius (px)": (0.8, 2.8), "crack ink": (50, 130), "crack line width (px)": (1, 2),
               "scratch ink": (60, 140), "scratch line width (px)": (1, 2)}
# Real train set (12,568 images): images per class, defect-free images, images with 2+ classes, and the mean mask
# area (% of the image) of each class where present. The generator aims at these.
REAL_COUNTS = {"images": 12568, "per_class": REAL_CLASS_COUNTS, "defect_free": 5902, "multi": 427,
               "mean_area_pct": {1: 1.0, 2: 0.8, 3: 6.0, 4: 8.0}}


def assign_classes(n_images: int, rng) -> list:
    """Class sets per image with the real shares (rounded quotas, not coin flips): [(), (3,), (1, 3), ...]."""
    scale = n_images / REAL_COUNTS["images"]
    quota = {c: int(round(k * scale)) for c, k in REAL_COUNTS["per_class"].items()}
    n_multi = int(round(REAL_COUNTS["multi"] * scale))
    labels = [c for c, k in quota.items() for _ in range(k)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    n_defective = min(n_images, len(labels) - n_multi)
    sets = [{c} for c in labels[:n_defective]]
    for c in labels[n_defective:]:  # extra classes go to images that have only one class, and not this one
        options = [s for s in sets if len(s) == 1 and c not in s] or [s for s in sets if c not in s]
        if options:
            options[int(rng.integers(len(options)))].add(c)
    sets += [set() for _ in range(n_images - len(sets))]
    return [tuple(sorted(sets[i])) for i in rng.permutation(n_images)]


def _noise(rng, rows, cols):
    """Standard-normal noise on a rows x cols grid, bilinearly stretched to H x W (float32)."""
    small = Image.fromarray(rng.standard_normal((rows, cols)).astype(np.float32))
    return np.asarray(small.resize((W, H), Image.BILINEAR))


def _ellipse(rng, cx, cy, rx, ry, n, jitter):
    """A coarse polygon: n vertices on an ellipse, radii jittered by +-jitter."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
    r = 1 + rng.uniform(-jitter, jitter, n)
    return list(zip((cx + rx * r * np.cos(t)).tolist(), (cy + ry * r * np.sin(t)).tolist()))


class _Canvas:
    """Drawing surfaces for one image: a mask per class, dark/bright ink, scale ink; and the placed boxes."""

    def __init__(self, x_lo, x_hi):
        self.masks = {c: Image.new("L", (W, H)) for c in (1, 2, 3, 4)}
        self.inks = {k: Image.new("L", (W, H)) for k in ("dark", "bright", "scale")}
        self.draw = {k: ImageDraw.Draw(im) for k, im in {**self.masks, **self.inks}.items()}
        self.x_lo, self.x_hi, self.boxes = x_lo, x_hi, []

    def place(self, rng, w, h, y_range=None, tries=20):
        """Top-left of a free w x h box inside the strip (or None): objects of different classes never overlap."""
        for _ in range(tries):
            if self.x_hi - self.x_lo <= w:
                return None
            x = rng.uniform(self.x_lo, self.x_hi - w)
            y = rng.uniform(*(y_range or (0, max(1, H - h))))
            if all(x + w < a or b < x or y + h < c or d < y for a, c, b, d in self.boxes):
                self.boxes.append((x, y, x + w, y + h))
                return x, y
        return None


def _pits(rng, cv, faint=False):
    rx, ry = rng.uniform(8, 30), rng.uniform(6, 20)
    at = cv.place(rng, 2.6 * rx, 2.6 * ry)
    if at is None:
        return
    cx, cy = at[0] + 1.3 * rx, at[1] + 1.3 * ry
    n = int(rng.integers(4, 25))
    pts = rng.normal((cx, cy), (rx / 2.2, ry / 2.2), (n, 2))
    ink = cv.draw["dark" if rng.random() < 0.8 else "bright"]
    level = int(rng.uniform(10, 35) if faint else rng.uniform(*CONTRAST["pit ink"]))
    for (x, y), r in zip(pts.tolist(), rng.uniform(*CONTRAST["pit dot radius (px)"], n).tolist()):
        ink.ellipse([x - 1.5 * r, y - r, x + 1.5 * r, y + r], fill=level)
    if not faint:
        cv.draw[1].polygon(_ellipse(rng, cx, cy, 1.25 * rx, 1.25 * ry, 8, 0.2), fill=1)


def _crack(rng, cv):
    length, top = rng.uniform(40, 130), rng.random() < 0.5
    ys = np.arange(0, length, rng.uniform(3, 7))
    xs = np.cumsum(rng.normal(0, 3, len(ys))) + np.linspace(0, rng.uniform(-15, 15), len(ys))
    margin, spread = rng.uniform(5, 10), np.ptp(xs) + 2
    y_top = 0 if top else H - length - margin
    at = cv.place(rng, spread + 2 * margin, length + margin, y_range=(y_top, y_top + 1))
    if at is None:
        return
    x = at[0] + margin - xs.min() + xs
    y = ys if top else H - 1 - ys
    pts = list(zip(x.tolist(), y.tolist()))
    ink = cv.draw["dark"]
    level = int(rng.uniform(*CONTRAST["crack ink"]))
    lo, hi = CONTRAST["crack line width (px)"]
    ink.line(pts, fill=level, width=int(rng.integers(lo, hi + 1)))
    if rng.random() < 0.5 and len(pts) > 3:  # a short side branch
        k = int(rng.integers(1, len(pts) - 1))
        bx = pts[k][0] + np.cumsum(rng.normal(rng.choice([-3, 3]), 2, 4))
        by = pts[k][1] + np.cumsum(np.full(4, 3.0 if top else -3.0))
        ink.line([pts[k]] + list(zip(bx.tolist(), by.tolist())), fill=level, width=1)
    x0, x1 = min(p[0] for p in pts) - margin, max(p[0] for p in pts) + margin
    y0, y1 = (-2, length + margin) if top else (H - 1 - length - margin, H + 1)
    j = rng.uniform(-3, 3, (6, 2))
    box = [(x0, y0), ((x0 + x1) / 2, y0), (x1, y0), (x1, y1), ((x0 + x1) / 2, y1), (x0, y1)]
    cv.draw[2].polygon([(bx + dx, by + dy) for (bx, by), (dx, dy) in zip(box, j.tolist())], fill=1)


def _scratches(rng, cv, faint=False):
    length, n_lines, spacing = rng.uniform(100, 700), int(rng.integers(1, 5)), rng.uniform(3, 9)
    margin = rng.uniform(4, 10)
    height = (n_lines - 1) * spacing + 2 * margin + 8
    at = cv.place(rng, length, height, y_range=(5, H - 5 - height)) if not faint else \
        (rng.uniform(cv.x_lo, max(cv.x_lo + 1, cv.x_hi - length)), rng.uniform(5, H - 5 - height))
    if at is None:
        return
    xs = np.linspace(at[0], at[0] + length, max(3, int(length / 20)))
    t = (xs - at[0]) / length
    ys = at[1] + margin + 4 + rng.uniform(-4, 4) * t + rng.uniform(0, 3) * np.sin(2 * np.pi * t * rng.uniform(0.5, 3))
    ink = cv.draw["dark" if rng.random() < 0.5 else "bright"]
    for k in range(n_lines):
        a, b = np.sort(rng.integers(0, len(xs), 2))
        a, b = (a, b) if b - a >= 2 and k else (0, len(xs))  # the first line runs the whole length
        pts = list(zip(xs[a:b].tolist(), (ys[a:b] + k * spacing + rng.normal(0, 0.4)).tolist()))
        level = int(rng.uniform(10, 40) if faint else rng.uniform(*CONTRAST["scratch ink"]))
        lo, hi = (1, 2) if faint else CONTRAST["scratch line width (px)"]
        ink.line(pts, fill=level, width=int(rng.integers(lo, hi + 1)))
    if faint:
        return
    step = max(2, int(len(xs) / rng.uniform(3, 8)))  # coarse: a vertex every 60-270 px
    idx = np.unique(np.r_[np.arange(0, len(xs), step), len(xs) - 1])
    upper = list(zip(xs[idx].tolist(), (ys[idx] - margin + rng.uniform(-2, 2, len(idx))).tolist()))
    lower = list(zip(xs[idx].tolist(), (ys[idx] + (n_lines - 1) * spacing + margin
                                        + rng.uniform(-2, 2, len(idx))).tolist()))
    cv.draw[3].polygon(upper + lower[::-1], fill=1)


def _scale(rng, cv, faint=False):
    rx, ry = rng.uniform(40, 130), rng.uniform(30, 85)
    at = cv.place(rng, 2.5 * rx, 2.5 * ry) if not faint else (rng.uniform(cv.x_lo, cv.x_hi), rng.uniform(0, H))
    if at is None:
        return
    cx, cy = at[0] + 1.25 * rx, at[1] + 1.25 * ry
    outline = _ellipse(rng, cx, cy, rx, ry, 12, 0.25)
    inner = [(cx + 0.85 * (x - cx), cy + 0.85 * (y - cy)) for x, y in outline]
    cv.draw["scale"].polygon(inner, fill=int(rng.uniform(40, 80) if faint else rng.uniform(90, 255)))
    if not faint:
        cv.draw[4].polygon(outline, fill=1)


# class -> (draw one object, mean number of extra objects): 1 + Poisson objects, ~3.4 / 1.3 / 2.8 / 2.4 as in real data
DRAW = {1: (_pits, 2.4), 2: (_crack, 0.3), 3: (_scratches, 1.8), 4: (_scale, 1.4)}


def _blurred(ink, radius):
    """Gaussian-blurred ink in [0, 1] as float32 (H, W); only the drawn part is blurred (speed)."""
    out = np.zeros((H, W), np.float32)
    box = ink.getbbox()
    if box is not None:
        pad = int(3 * radius) + 1
        x0, y0, x1, y1 = max(0, box[0] - pad), max(0, box[1] - pad), min(W, box[2] + pad), min(H, box[3] + pad)
        out[y0:y1, x0:x1] = np.asarray(ink.crop((x0, y0, x1, y1)).filter(ImageFilter.GaussianBlur(radius))) / 255
    return out


def render_strip(rng, classes=()) -> tuple:
    """One synthetic strip -> (uint8 (H, W) grey image, uint8 (4, H, W) exclusive 0/1 masks)."""
    shading = 0.6 * _noise(rng, 6, 10)  # (H, W): slow light and dark patches
    texture = (0.5 * _noise(rng, 64, 12) + 0.35 * _noise(rng, H // 2, 80)
               + 0.1 * rng.standard_normal((H, W), dtype=np.float32))  # (H, W): streaks along x + grain
    band = None
    if rng.random() < 0.35:  # a black end band at the left or right, with a slightly ragged edge
        width = rng.uniform(40, 500)
        edge = width + np.cumsum(rng.normal(0, 0.7, H)).clip(-12, 12)  # (H,)
        band = (np.arange(W)[None, :] < edge[:, None]) if rng.random() < 0.5 else \
            (np.arange(W)[None, :] >= W - edge[:, None])
        x_lo, x_hi = (width + 20, W) if band[0, 0] else (0, W - width - 20)
    else:
        x_lo, x_hi = 0, W
    cv = _Canvas(x_lo, x_hi)
    for c in sorted(classes, key=lambda c: (2, 1, 4, 3).index(c)):  # small objects first: they get space
        draw, extra = DRAW[c]
        for _ in range(1 + int(rng.poisson(extra))):
            draw(rng, cv)
    for _ in range(int(rng.poisson(1.0))):  # unlabelled faint look-alikes keep the task honest
        (_pits, _scratches, _scratches, _scale)[int(rng.integers(4))](rng, cv, faint=True)

    dark, bright = _blurred(cv.inks["dark"], 0.8), _blurred(cv.inks["bright"], 0.8)
    scale_ink = _blurred(cv.inks["scale"], 5)
    blotch = np.clip(0.6 + 0.6 * _noise(rng, 48, 240), 0, 1)  # patchy inside the scale outline
    image = (rng.uniform(0.21, 0.53) + rng.uniform(*CONTRAST["shading amplitude"]) * shading
             + rng.uniform(*CONTRAST["texture amplitude"]) * texture - dark + bright)
    image *= 1 - rng.uniform(0.45, 0.7) * scale_ink * blotch
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)

    masks = np.stack([np.asarray(cv.masks[c], np.uint8) for c in (1, 2, 3, 4)])  # (4, H, W)
    taken = np.zeros((H, W), bool)
    for c in (1, 0, 3, 2):  # at most one class per pixel
        masks[c] &= ~taken
        taken |= masks[c].astype(bool)
    if band is not None:
        image[band] = rng.uniform(0, 0.02)
        masks[:, band] = 0
    return (image * 255 + 0.5).astype(np.uint8), masks


def _image_ids(n_images, rng):
    ids = set()
    while len(ids) < n_images:
        ids.update(f"{v:09x}.jpg" for v in rng.integers(0, 16 ** 9, n_images - len(ids)).tolist())
    return sorted(ids)


def _read_manifest(root: Path):
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(root: Path):
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and _read_manifest(root) is None:
        raise FileExistsError(f"{root}: folder is not empty and is not a gmlib synthetic set (no {MANIFEST}); "
                              f"refusing to overwrite it")


def _write_strip(job) -> list:
    """Render strip i of the set (its own generator, seeded by (seed, i)), write its JPEG; its CSV rows."""
    folder, seed, i, image_id, classes = job
    image, masks = render_strip(np.random.default_rng([seed, i]), classes)
    Image.fromarray(np.repeat(image[:, :, None], 3, axis=2)).save(Path(folder) / image_id, quality=90)
    return [(image_id, c + 1, rle_encode(m)) for c, m in enumerate(masks) if m.any()]


def make_synthetic_severstal(root, n_images: int, seed: int, *, progress: bool = True, workers: int = 1) -> Path:
    """Write n_images synthetic strips into `root` (Kaggle layout) atomically: built beside it, then renamed in.

    Replaces an older synthetic set in `root`; refuses to touch any other non-empty folder. Returns `root`.
    `workers` > 1 renders the strips in that many processes; the files are the same bytes as with one.
    """
    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (tmp / "train_images").mkdir()
        rng = np.random.default_rng(seed)
        ids, class_sets = _image_ids(n_images, rng), assign_classes(n_images, rng)
        jobs = [(tmp / "train_images", seed, i, image_id, classes)
                for i, (image_id, classes) in enumerate(zip(ids, class_sets))]
        with contextlib.ExitStack() as stack:
            mapper = map
            if workers > 1:  # spawn: the caller may hold torch's threads, which fork would copy mid-state
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")))
                mapper = functools.partial(pool.map, chunksize=16)
            per_strip = list(tqdm(mapper(_write_strip, jobs), total=n_images, desc="synthetic strips",
                                  disable=not progress))
        rows = [row for strip in per_strip for row in strip]  # in index order, whatever the worker count
        pd.DataFrame(rows, columns=NEW_HEADER).to_csv(tmp / "train.csv", index=False)
        manifest = {"generator": "gmlib.data.synthetic", "version": VERSION, "n_images": n_images, "seed": seed}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        if root.exists():
            os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_synthetic(root, n_images: int, seed: int, *, progress: bool = True, workers: int = 1) -> Path:
    """Make the synthetic set in `root` unless the one there already has these (n_images, seed). Returns `root`."""
    root = Path(root)
    manifest = _read_manifest(root)
    wanted = {"generator": "gmlib.data.synthetic", "version": VERSION, "n_images": n_images, "seed": seed}
    if manifest == wanted and (root / "train.csv").is_file() and \
            sum(1 for _ in (root / "train_images").glob("*.jpg")) == n_images:
        return root
    return make_synthetic_severstal(root, n_images, seed, progress=progress, workers=workers)


def is_synthetic(root) -> bool:
    """True when `root` holds a set written by make_synthetic_severstal (it has the manifest)."""
    return _read_manifest(Path(root)) is not None


def ensure_data(root, n_images: int, seed: int, *, progress: bool = True, workers: int = 1) -> Path:
    """What notebooks call: a folder with a train.csv and no manifest is real data and is only read; anything else
    (missing, empty, or an older synthetic set) gets the synthetic set via ensure_synthetic. Returns `root`."""
    root = Path(root)
    if (root / "train.csv").is_file() and not is_synthetic(root):
        return root
    return ensure_synthetic(root, n_images, seed, progress=progress, workers=workers)
