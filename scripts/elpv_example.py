"""Chapter 14's real case from what the project holds: chapter 13's ELPV classifier and its cells, as a user has them.

    python scripts/elpv_example.py                  # writes results/elpv/classes/ and results/elpv/mobilenet_v2_elpv.pt

classes/: the ELPV cells as train/ and val/ folders of the classes "defective" and "ok" (gmlib.folders.
write_elpv_folders; chapter 13's split, its test cells left out). mobilenet_v2_elpv.pt: the state_dict of chapter
13's baseline (torchvision MobileNetV2 from ImageNet, fine-tuned 16 epochs on the cells at 128 x 128; the store's
fp16 weights, record BASELINE_KEY) with its one-logit head written as two logits [z, 0] for ["defective", "ok"]:
softmax gives sigmoid(z) for "defective", so the network is the same function, and `python -m gmlib compress
--builder torchvision:mobilenet_v2` loads it. Both are derived from CC BY-NC-SA data: results/ is not committed.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gmlib.folders import ELPV_CLASSES, write_elpv_folders  # noqa: E402
from gmlib.store import Store  # noqa: E402

BASELINE_KEY = "9a1d8080e47e4fe5"  # chapter 13's baseline: probability head, 128 x 128, ImageNet start, 16 epochs
WEIGHTS_NAME = "mobilenet_v2_elpv.pt"


def two_logit_state(state: dict) -> dict:
    """A one-logit MobileNetV2 state_dict (classifier.1: 1 x 1280) as a two-logit one, in float32: logits
    [z, 0] for ELPV_CLASSES ("defective", "ok"), so softmax(...)[0] = sigmoid(z)."""
    w, b = state["classifier.1.weight"], state["classifier.1.bias"]
    if tuple(w.shape)[:1] != (1,) or tuple(b.shape) != (1,):
        raise ValueError(f"expected a one-logit head (classifier.1.weight 1 x n), got {tuple(w.shape)}")
    out = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    out["classifier.1.weight"] = torch.cat([w.float(), torch.zeros_like(w, dtype=torch.float32)])  # (2, 1280)
    out["classifier.1.bias"] = torch.cat([b.float(), torch.zeros_like(b, dtype=torch.float32)])    # (2,)
    return out


def baseline_checkpoint(out, store_dir=ROOT / "data" / "store", key: str = BASELINE_KEY) -> Path:
    """Write chapter 13's baseline from the store as a two-logit torchvision state_dict at `out`."""
    assert ELPV_CLASSES == ("defective", "ok")  # the order the logits are written in
    record = Store(store_dir).read(Path(store_dir) / "elpv_baseline" / f"{key}.json")
    recipe = record.config["recipe"]
    if (record.config["arch"], record.config["outputs"], recipe["head"]) != \
            ("torchvision:mobilenet_v2", 1, "probability"):
        raise ValueError(f"store record {key} is not a one-logit MobileNetV2 ELPV baseline")
    out = Path(out)
    torch.save(two_logit_state(record.tensors()), out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "elpv"), help="folder to write (default results/elpv)")
    p.add_argument("--limit", type=int, help="only the first n cells (tests)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "classes").exists():
        counts = write_elpv_folders(out / "classes", limit=args.limit)
        print(f"{out / 'classes'}: {counts}")
    print(baseline_checkpoint(out / WEIGHTS_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
