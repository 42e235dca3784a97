"""Severstal data: RLE against hand-made masks, both CSV formats, the Dataset, the synthetic generator, bad input."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from gmlib.data import (IMAGE_SHAPE, REAL_COUNTS, SeverstalDataset, ensure_data, ensure_synthetic, load_image,
                        make_synthetic_severstal, read_labels, render_strip, rle_decode, rle_encode,
                        train_val_split)
from gmlib.data import synthetic
from gmlib.data.__main__ import main as cli

N_IMAGES, SEED = 24, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_severstal(tmp_path_factory.mktemp("synth") / "set", N_IMAGES, SEED, progress=False)


def copy_layout(src, dst, csv_text=None):
    """A copy of a dataset folder (images hard-linked where possible), optionally with another train.csv."""
    shutil.copytree(src / "train_images", dst / "train_images", copy_function=_link_or_copy)
    (dst / "train.csv").write_text(csv_text if csv_text is not None else (src / "train.csv").read_text())
    return dst


def _link_or_copy(a, b):
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


# --- RLE ---------------------------------------------------------------------------------------------------------

def test_rle_is_column_major_on_a_hand_made_3x4_mask():
    # pixels are numbered down the columns: 1 2 3 in column 0, 4 5 6 in column 1, ...
    expected = np.array([[0, 0, 1, 0],
                         [1, 0, 0, 1],
                         [1, 0, 0, 1]], np.uint8)
    assert np.array_equal(rle_decode("2 2 7 1 11 2", shape=(3, 4)), expected)
    assert rle_encode(expected) == "2 2 7 1 11 2"
    assert not np.array_equal(rle_decode("2 2 7 1 11 2", shape=(4, 3)).T, expected)  # swapped H/W transposes


def test_full_image_and_empty_rle():
    assert rle_decode("1 409600").all()
    assert rle_decode("1 409600").shape == IMAGE_SHAPE
    assert rle_encode(np.ones(IMAGE_SHAPE, np.uint8)) == "1 409600"
    for empty in ("", None, float("nan")):
        assert not rle_decode(empty).any()
    assert rle_encode(np.zeros((3, 4))) == ""


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle, mask.shape), mask)
    runs = np.array(rle.split(), int).reshape(-1, 2)
    assert (np.diff(runs[:, 0]) > runs[:-1, 1]).all()  # sorted, non-overlapping, not even touching


def test_rle_accepts_torch_masks():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1:, 0] = True
    assert rle_encode(mask) == "2 2"


@pytest.mark.parametrize("rle, message", [
    ("1 2 3", "odd number"),
    ("1 two", "non-numeric"),
    ("1.5 2", "non-numeric"),
    ("-1 2", "non-numeric"),
    ("\u0663 2", "non-numeric"),
    ("10 2 1 2", "not sorted"),
    ("1 5 3 2", "overlap"),
    ("409600 2", "out of range"),
    ("0 3", "1-indexed"),
    ("3 0", "length 0"),
])
def test_malformed_rle_is_rejected(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle)


@pytest.mark.parametrize("mask, message", [(np.full((2, 2), 2), "only 0 and 1"), (np.zeros(4), "2-D")])
def test_rle_encode_rejects_bad_masks(mask, message):
    with pytest.raises(ValueError, match=message):
        rle_encode(mask)


# --- train.csv ---------------------------------------------------------------------------------------------------

def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_both_csv_formats_give_the_same_labels(tmp_path):
    new = write(tmp_path, "ImageId,ClassId,EncodedPixels\na.jpg,3,5 2\nb.jpg,1,1 409600\na.jpg,1,1 3\n", "new.csv")
    old = write(tmp_path, "ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},{ {('a.jpg', 1): '1 3', ('a.jpg', 3): '5 2', ('b.jpg', 1): '1 409600'}.get((i, c), '')}\n"
        for i in ("a.jpg", "b.jpg", "c.jpg") for c in (1, 2, 3, 4)), "old.csv")
    a, b = read_labels(new), read_labels(old)
    cols = ["ImageId", "ClassId", "EncodedPixels"]
    assert a[cols].equals(b[cols])
    assert a[cols].values.tolist() == [["a.jpg", 1, "1 3"], ["a.jpg", 3, "5 2"], ["b.jpg", 1, "1 409600"]]


@pytest.mark.parametrize("text, message", [
    ("", "empty CSV"),
    ("\n\n", "empty CSV"),
    ("a.jpg,1,1 3\nb.jpg,2,4 4\n", "headerless"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 3\n", r"line 2 \(a.jpg, class 5\): class id must be 1-4"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,x,1 3\n", "line 3.*class id"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\nb.jpg,2,9 2 3 1\n", r"line 3 \(b.jpg, class 2\): RLE is not sorted"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3 5\n", "line 2.*odd number"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,409599 5\n", "line 2.*out of range"),
    ("ImageId_ClassId,EncodedPixels\na.jpg_1,1 3\n\na.jpg,\n", "line 4.*no '_<class>' suffix"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\nb.jpg\n", r"line 3 \(b.jpg, class \): class id"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3,7\n", "not a readable CSV"),
    ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\na.jpg,1,5 3\n", "lines 2, 3: conflicting masks"),
])
def test_bad_csv_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_identical_duplicate_rows_are_dropped_with_a_warning(tmp_path):
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\nb.jpg,2,4 4\na.jpg,1,1 3\n")
    with pytest.warns(UserWarning, match="dropped 1 identical duplicate row.*line 4"):
        labels = read_labels(path)
    assert len(labels) == 2


def test_header_only_csv_means_no_defects(tmp_path):
    assert read_labels(write(tmp_path, "ImageId,ClassId,EncodedPixels\n")).empty


# --- the Dataset -------------------------------------------------------------------------------------------------

def test_dataset_lists_defect_free_images_from_the_folder(synth):
    ds = SeverstalDataset(synth)
    labelled = set(pd.read_csv(synth / "train.csv")["ImageId"])
    assert len(ds) == N_IMAGES == len(list((synth / "train_images").glob("*.jpg")))
    free = [i for i in ds.image_ids if i not in labelled]
    assert free, "the synthetic set should contain defect-free images"
    image, mask = ds[ds.image_ids.index(free[0])]
    assert mask.sum() == 0 and image.shape == (3, *IMAGE_SHAPE)


def test_dataset_item_matches_the_csv(synth):
    ds = SeverstalDataset(synth)
    row = pd.read_csv(synth / "train.csv").iloc[0]
    image, mask = ds[ds.image_ids.index(row.ImageId)]
    assert image.dtype == torch.float32 and mask.dtype == torch.uint8  # 0/1 until the loss
    assert 0 <= image.min() and image.max() <= 1
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey in 3 channels
    assert set(mask.unique().tolist()) <= {0, 1}
    assert torch.equal(mask[row.ClassId - 1], torch.from_numpy(rle_decode(row.EncodedPixels)))
    assert mask.sum(0).max() <= 1  # at most one class per pixel


def test_old_csv_format_gives_the_same_dataset(synth, tmp_path):
    new = pd.read_csv(synth / "train.csv")
    rles = {(r.ImageId, r.ClassId): r.EncodedPixels for r in new.itertuples()}
    ids = sorted(p.name for p in (synth / "train_images").glob("*.jpg"))
    old = "ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},{rles.get((i, c), '')}\n" for i in ids for c in (1, 2, 3, 4))
    a, b = SeverstalDataset(synth), SeverstalDataset(copy_layout(synth, tmp_path / "old", old))
    assert a.image_ids == b.image_ids
    for i in range(len(a)):
        assert np.array_equal(a.mask(a.image_ids[i]), b.mask(b.image_ids[i]))
    assert a.class_stats().equals(b.class_stats())


def test_scale_downsamples_image_and_mask(synth):
    full, half = SeverstalDataset(synth), SeverstalDataset(synth, scale=0.5, cache=True)
    i = next(k for k, image_id in enumerate(full.image_ids) if full.mask(image_id).any())
    image, mask = half[i]
    assert image.shape == (3, 128, 800) and mask.shape == (4, 128, 800)
    assert torch.equal(mask, full[i][1][:, 1::2, 1::2])  # nearest neighbour at pixel centres
    box = full[i][0].reshape(3, 128, 2, 800, 2).mean((2, 4))  # antialiased bilinear is close to a 2x2 mean
    assert (image - box).abs().mean() < 0.03 and abs(image.mean() - box.mean()) < 0.005
    assert torch.equal(half[i][0], image)  # the cached copy is the same


def test_crop_and_flips_are_deterministic_and_consistent(synth):
    plain = SeverstalDataset(synth)
    i = next(k for k, image_id in enumerate(plain.image_ids) if plain.mask(image_id).any())
    items = [SeverstalDataset(synth, crop=(256, 384), flip=True, generator=torch.Generator().manual_seed(7))[i]
             for _ in range(2)]
    assert torch.equal(items[0][0], items[1][0]) and torch.equal(items[0][1], items[1][1])
    image, mask = plain[i]
    found = False
    for dims in ([], [1], [2], [1, 2]):  # the crop of some flip of the full item
        im, m = (image.flip(dims), mask.flip(dims)) if dims else (image, mask)
        for left in range(0, 1600 - 384 + 1):
            if torch.equal(im[:, :, left:left + 384], items[0][0]):
                found = torch.equal(m[:, :, left:left + 384], items[0][1])
                break
        if found:
            break
    assert found, "the augmented image should be a crop of a flip of the image, with the mask moved alike"
    seen = {SeverstalDataset(synth, crop=(128, 128), generator=torch.Generator().manual_seed(s))[i][0].sum().item()
            for s in range(4)}
    assert len(seen) > 1  # different seeds, different crops


def test_jitter_changes_brightness_only_when_asked(synth):
    base = SeverstalDataset(synth)[0][0]
    jit = SeverstalDataset(synth, jitter=0.3, generator=torch.Generator().manual_seed(0))[0]
    assert not torch.equal(jit[0], base) and 0 <= jit[0].min() and jit[0].max() <= 1
    assert torch.equal(jit[1], SeverstalDataset(synth)[0][1])


def test_class_stats_count_the_labels(synth):
    ds = SeverstalDataset(synth)
    stats = ds.class_stats().set_index("class_id")
    labels = pd.read_csv(synth / "train.csv")
    for c in (1, 2, 3, 4):
        rows = labels[labels.ClassId == c]
        assert stats.loc[c, "images"] == len(rows)
        if len(rows):
            area = np.mean([rle_decode(r).mean() * 100 for r in rows.EncodedPixels])
            assert stats.loc[c, "mean_area_pct"] == pytest.approx(area)
    assert stats.loc[0, "images"] == N_IMAGES - labels.ImageId.nunique()


def test_train_val_split_is_deterministic_disjoint_and_stratified():
    ids = [f"{i:09x}.jpg" for i in range(100)]
    has = [i % 4 == 0 for i in range(100)]  # 25 defective
    train, val = train_val_split(ids, 0.2, seed=0, stratify=has)
    assert (train, val) == train_val_split(ids[::-1], 0.2, seed=0, stratify=has[::-1])
    assert not set(train) & set(val) and sorted(train + val) == ids
    assert len(val) == 20 and sum(has[ids.index(v)] for v in val) == 5
    assert train_val_split(ids, 0.2, seed=1, stratify=has)[1] != val
    assert len(train_val_split(ids[:3], 0.1, seed=0)[1]) == 1  # never an empty validation set


@pytest.mark.parametrize("ids, fraction, message", [
    (["a", "b"], 1.0, "val_fraction"), (["a", "a", "b"], 0.5, "duplicates"), (["a"], 0.5, "at least 2"),
])
def test_train_val_split_rejects_bad_input(ids, fraction, message):
    with pytest.raises(ValueError, match=message):
        train_val_split(ids, fraction, seed=0)


def test_dataset_split_stratifies_by_defect(synth):
    ds = SeverstalDataset(synth)
    train, val = ds.split(0.25, seed=0)
    has = dict(zip(ds.image_ids, ds.has_defect()))
    assert sorted(train + val) == sorted(ds.image_ids)
    assert any(has[v] for v in val) and not all(has[v] for v in val)


def test_rarest_class_and_a_split_that_gives_every_class_its_share(tmp_path):
    ds = SeverstalDataset(make_synthetic_severstal(tmp_path / "s", 300, 0, progress=False))
    rarest = dict(zip(ds.image_ids, ds.rarest_class()))
    classes = {i: set(ds.labels.loc[ds.labels["ImageId"] == i, "ClassId"]) for i in ds.image_ids}
    order = [2, 4, 1, 3]  # rarest first in the real train set
    for i, c in rarest.items():
        assert c == (min(classes[i], key=order.index) if classes[i] else 0)
    assert any(len(s) > 1 for s in classes.values())  # the rule was exercised on multi-class images
    train, val = ds.split(0.3, seed=0)
    for c in set(rarest.values()):
        n = sum(r == c for r in rarest.values())
        assert sum(rarest[i] == c for i in val) == round(0.3 * n)  # each stratum split in proportion


# --- bad folders and files -----------------------------------------------------------------------------------------

def test_missing_image_named_in_the_csv(synth, tmp_path):
    csv = (synth / "train.csv").read_text() + "0123456ab.jpg,1,1 10\n"
    root = copy_layout(synth, tmp_path / "d", csv)
    with pytest.raises(FileNotFoundError, match=r"train.csv, line \d+: labels 1 image\(s\) missing.*0123456ab.jpg"):
        SeverstalDataset(root)


def test_requested_image_missing(synth):
    with pytest.raises(FileNotFoundError, match="nothere.jpg: image file not found"):
        SeverstalDataset(synth, image_ids=["nothere.jpg"])


def test_no_train_images_folder_or_no_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_images: folder not found"):
        SeverstalDataset(tmp_path)
    (tmp_path / "train_images").mkdir()
    with pytest.raises(FileNotFoundError, match="train.csv: label file not found"):
        SeverstalDataset(tmp_path)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(FileNotFoundError, match="train_images: no .jpg images"):
        SeverstalDataset(tmp_path)


def test_wrong_size_and_corrupt_images_name_the_file(synth, tmp_path):
    root = copy_layout(synth, tmp_path / "d")
    small, broken = sorted((root / "train_images").glob("*.jpg"))[:2]
    small.unlink()
    Image.new("RGB", (800, 256)).save(small)
    data = broken.read_bytes()
    broken.unlink()
    broken.write_bytes(data[: len(data) // 3])
    ds = SeverstalDataset(root)
    with pytest.raises(ValueError, match=f"({small.name}: image is 256x800|{broken.name}: corrupt)"):
        ds.verify_images()
    with pytest.raises(ValueError, match=f"{small.name}: image is 256x800"):
        ds[ds.image_ids.index(small.name)]
    with pytest.raises(ValueError, match=f"{broken.name}: corrupt or unreadable image"):
        ds[ds.image_ids.index(broken.name)]
    (root / "train_images" / "0000000aa.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="0000000aa.jpg: corrupt"):
        load_image(root / "train_images" / "0000000aa.jpg")


def test_crop_and_scale_are_validated(synth):
    with pytest.raises(ValueError, match="crop"):
        SeverstalDataset(synth, scale=0.5, crop=(256, 384))
    with pytest.raises(ValueError, match="scale"):
        SeverstalDataset(synth, scale=2.0)


# --- the synthetic generator ---------------------------------------------------------------------------------------

def test_generator_is_deterministic_to_the_byte_with_any_worker_count(synth, tmp_path):
    again = make_synthetic_severstal(tmp_path / "again", N_IMAGES, SEED, progress=False, workers=2)
    files = sorted(p.relative_to(synth) for p in synth.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((synth / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = make_synthetic_severstal(tmp_path / "other", 4, SEED + 1, progress=False)
    assert (other / "train_images").glob("*.jpg") and \
        not set(os.listdir(other / "train_images")) & set(os.listdir(synth / "train_images"))


def test_generator_writes_the_real_layout(synth):
    names = os.listdir(synth / "train_images")
    assert all(len(n) == 13 and n.endswith(".jpg") and all(ch in "0123456789abcdef" for ch in n[:9])
               for n in names)
    assert pd.read_csv(synth / "train.csv").columns.tolist() == ["ImageId", "ClassId", "EncodedPixels"]
    with Image.open(synth / "train_images" / names[0]) as im:
        assert im.size == (1600, 256) and im.mode == "RGB"


def test_class_quotas_follow_the_real_shares():
    sets = synthetic.assign_classes(2000, np.random.default_rng(0))
    share = {c: np.mean([c in s for s in sets]) for c in (1, 2, 3, 4)}
    real = REAL_COUNTS["per_class"]
    for c in real:
        assert share[c] == pytest.approx(real[c] / REAL_COUNTS["images"], abs=0.005)
    assert np.mean([not s for s in sets]) == pytest.approx(REAL_COUNTS["defect_free"] / REAL_COUNTS["images"],
                                                           abs=0.01)
    assert np.mean([len(s) > 1 for s in sets]) == pytest.approx(REAL_COUNTS["multi"] / REAL_COUNTS["images"],
                                                                abs=0.01)


def test_defect_areas_and_grey_levels_are_near_the_real_ones():
    target_area = REAL_COUNTS["mean_area_pct"]  # % of the image, where present (real train set)
    grey = []
    for c, target in target_area.items():
        areas = []
        for i in range(10):
            image, masks = render_strip(np.random.default_rng([99, c, i]), (c,))
            assert masks.sum(0).max() <= 1 and not masks[[k for k in range(4) if k != c - 1]].any()
            areas.append(masks[c - 1].mean() * 100)
            grey.append(image / 255)
        assert 0.6 * target < np.mean(areas) < 1.5 * target, (c, np.mean(areas))
    for i in range(10):
        grey.append(render_strip(np.random.default_rng([99, 0, i]), ())[0] / 255)
    grey = np.stack(grey)
    assert grey.mean() == pytest.approx(0.344, abs=0.04) and grey.std() == pytest.approx(0.196, abs=0.04)


def test_ensure_synthetic_is_idempotent_and_safe(tmp_path):
    root = ensure_synthetic(tmp_path / "s", 3, 0, progress=False)
    stamp = (root / "train.csv").stat().st_mtime_ns, (root / "train.csv").stat().st_ino
    assert ensure_synthetic(root, 3, 0, progress=False) == root
    assert ((root / "train.csv").stat().st_mtime_ns, (root / "train.csv").stat().st_ino) == stamp
    ensure_synthetic(root, 4, 0, progress=False)  # other parameters: regenerated in place
    assert json.loads((root / "synthetic.json").read_text())["n_images"] == 4
    assert len(os.listdir(root / "train_images")) == 4
    real = tmp_path / "severstal"
    (real / "train_images").mkdir(parents=True)
    (real / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(FileExistsError, match="not a gmlib synthetic set"):
        ensure_synthetic(real, 3, 0, progress=False)
    assert os.listdir(real / "train_images") == []


def test_ensure_data_reads_real_folders_and_makes_synthetic_ones(synth, tmp_path):
    real = copy_layout(synth, tmp_path / "real")  # a train.csv without the manifest: treated as real data
    before = sorted(os.listdir(real / "train_images"))
    assert ensure_data(real, 3, 0, progress=False) == real and sorted(os.listdir(real / "train_images")) == before
    made = ensure_data(tmp_path / "new", 3, 0, progress=False)
    assert len(os.listdir(made / "train_images")) == 3 and (made / "synthetic.json").is_file()


def test_failed_generation_leaves_the_old_set_and_no_temp_files(tmp_path, monkeypatch):
    root = make_synthetic_severstal(tmp_path / "s", 3, 0, progress=False)
    before = {p.name: p.read_bytes() for p in (root / "train_images").iterdir()}
    calls = []

    def flaky(rng, classes=()):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return render_strip(rng, classes)

    monkeypatch.setattr(synthetic, "render_strip", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        make_synthetic_severstal(root, 5, 1, progress=False)
    assert {p.name: p.read_bytes() for p in (root / "train_images").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize("n_images, seed", [(0, 0), (2.5, 0), (3, -1), (True, 0)])
def test_generator_rejects_bad_arguments(tmp_path, n_images, seed):
    with pytest.raises(ValueError):
        make_synthetic_severstal(tmp_path / "s", n_images, seed)
    assert not (tmp_path / "s").exists()


def test_command_line(tmp_path, capsys):
    assert cli(["--root", str(tmp_path / "c"), "--n-images", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 images, seed 2" in out and "defect-free" in out
    assert len(os.listdir(tmp_path / "c" / "train_images")) == 3
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert cli(["--root", str(tmp_path / "x"), "--n-images", "3"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_show_masks_outlines_each_present_class():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from gmlib.data import show_masks

    mask = np.zeros((4, 20, 30), np.uint8)
    mask[0, 2:6, 2:6] = mask[3, 10:15, 5:25] = 1
    fig, ax = plt.subplots()
    show_masks(ax, torch.rand(3, 20, 30), torch.from_numpy(mask), title="t", legend=True)
    overlay = ax.images[-1].get_array()  # RGBA tint: opaque only where a class is
    assert (overlay[..., 3] > 0).sum() == mask.sum() and len(ax.get_legend().get_texts()) == 4
    plt.close(fig)
