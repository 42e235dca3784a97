"""Severstal run-length encoding: "start length start length ...", 1-indexed, pixels counted column-major.

Pixel p (1-based) sits at row (p-1) % H, column (p-1) // H of an H x W image (top to bottom, then left to right),
so `1 409600` covers a whole 256 x 1600 image. Valid RLE is sorted, positive, in range and non-overlapping.
"""
import numpy as np

__all__ = ["IMAGE_SHAPE", "rle_decode", "rle_encode", "rle_runs"]

IMAGE_SHAPE = (256, 1600)  # (H, W) of every Severstal image


def rle_runs(rle, n_pixels: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]):
    """Parse and validate an RLE string; return (starts, lengths) as int64 arrays with 0-based starts.

    An empty string, None or NaN (an empty pandas cell) means an empty mask. Raises ValueError saying what is wrong.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        rle = ""
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)}); expected 'start length' pairs")
    bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
    if bad is not None:
        raise ValueError(f"RLE has a non-numeric value {bad!r}; expected positive integers")
    runs = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any():
        raise ValueError("RLE start 0 found; starts are 1-indexed")
    if (lengths < 1).any():
        raise ValueError(f"RLE run of length 0 at start {starts[lengths < 1][0] + 1}")
    ends = starts + lengths  # exclusive
    if len(ends) and ends.max() > n_pixels:
        i = int(np.argmax(ends > n_pixels))
        raise ValueError(f"RLE run {starts[i] + 1} {lengths[i]} ends at pixel {ends[i]}, out of range "
                         f"(image has {n_pixels} pixels)")
    if (np.diff(starts) <= 0).any():
        i = int(np.argmax(np.diff(starts) <= 0))
        raise ValueError(f"RLE is not sorted: start {starts[i + 1] + 1} follows start {starts[i] + 1}")
    if (starts[1:] < ends[:-1]).any():
        i = int(np.argmax(starts[1:] < ends[:-1]))
        raise ValueError(f"RLE runs overlap: {starts[i] + 1} {lengths[i]} and {starts[i + 1] + 1} {lengths[i + 1]}")
    return starts, lengths


def rle_decode(rle, shape=IMAGE_SHAPE) -> np.ndarray:
    """RLE string -> uint8 mask of `shape` (H, W) with 1 on the encoded pixels (column-major, 1-indexed)."""
    h, w = shape
    starts, lengths = rle_runs(rle, h * w)
    edges = np.zeros(h * w + 1, np.int32)  # +1 at each run start, -1 after its end, then a running sum
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    return np.cumsum(edges[:-1]).astype(np.uint8).reshape(w, h).T


def rle_encode(mask) -> str:
    """(H, W) 0/1 mask (numpy, torch or bool) -> RLE string; an empty mask gives ''."""
    pixels = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    if pixels.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {pixels.shape}")
    if not ((pixels == 0) | (pixels == 1)).all():
        raise ValueError("mask must contain only 0 and 1")
    flat = np.concatenate([[0], pixels.T.reshape(-1).astype(np.int8), [0]])  # column-major, padded
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # 1-based starts and (exclusive) ends, interleaved
    changes[1::2] -= changes[0::2]
    return " ".join(map(str, changes))
