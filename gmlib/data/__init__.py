"""Severstal steel-defect data: RLE masks, the train.csv reader, a torch Dataset, and a synthetic generator.

Real data and synthetic strips share one layout (`root/train_images/*.jpg`, `root/train.csv`) and one loader.
`elpv`: the real solar-cell defect images of chapter 13, read from their installed package.
"""
from .rle import IMAGE_SHAPE, rle_decode, rle_encode, rle_runs
from .labels import CLASS_NAMES, read_labels
from .dataset import MEAN, STD, SeverstalDataset, load_image, train_val_split, train_val_test_split
from .synthetic import (REAL_COUNTS, make_synthetic_severstal, ensure_synthetic, ensure_data, is_synthetic,
                        render_strip)
from .sampling import DistributedWeightedSampler, WeightedDraws, oversampling_weights
from .plot import CLASS_COLORS, show_masks
from .elpv import Elpv, ElpvDataset, elpv_split, load_elpv, read_elpv_labels

__all__ = [
    "IMAGE_SHAPE", "rle_decode", "rle_encode", "rle_runs",
    "CLASS_NAMES", "read_labels",
    "MEAN", "STD", "SeverstalDataset", "load_image", "train_val_split", "train_val_test_split",
    "REAL_COUNTS", "make_synthetic_severstal", "ensure_synthetic", "ensure_data", "is_synthetic", "render_strip",
    "DistributedWeightedSampler", "WeightedDraws", "oversampling_weights",
    "CLASS_COLORS", "show_masks",
    "Elpv", "ElpvDataset", "elpv_split", "load_elpv", "read_elpv_labels",
]
