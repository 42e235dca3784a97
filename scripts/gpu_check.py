"""The paper profile on a GPU, for a fixed number of steps: images per second, peak GPU memory, and the share of the
time the training loop waited for data. Run it first on a GPU machine (at most a few minutes):

    python scripts/gpu_check.py [--steps 60] [--workers 4] [--batch-size 16] [--channels-last] [--out check.json]

It writes `--n-images` generated full-resolution strips (256 x 1600) to `--data`, builds Study("paper") on them
(FPN-ResNeSt50, 256 x 512 crops, defect oversampling, seeded draws, `--workers` loader processes, pinned memory),
and trains the network with the study's loss for `--warmup` + `--steps` steps (AdamW, bf16 autocast on CUDA), then
one pass of evaluation and post-processing tuning over the validation strips. "Waited for data" is the time the loop
spent blocked on the next batch, over the timed steps' wall time. `--device cpu --arch fpn_resnest14d` runs the same
path on a CPU at a tiny size (what tests/test_scripts.py does).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gmlib  # noqa: E402
from gmlib import models, train  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, worker start)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the paper profile's")
    ap.add_argument("--workers", type=int, default=4, help="loader worker processes")
    ap.add_argument("--n-images", type=int, default=400, help="generated full-resolution strips")
    ap.add_argument("--data", default=None, help="folder for the strips (default: a temporary one)")
    ap.add_argument("--arch", default=None, help="default: the paper profile's (fpn_resnest50)")
    ap.add_argument("--device", default=None, help="default: cuda when present")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default=None, help="also write the figures here (JSON)")
    args = ap.parse_args(argv)
    device = torch.device(args.device) if args.device else gmlib.default_device()
    gmlib.set_deterministic(0, deterministic=False)  # cuDNN picks its fastest kernels, as a long run would
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data) if args.data else Path(tmp) / "strips"
        start = time.perf_counter()
        gmlib.data.ensure_synthetic(data_dir, args.n_images, 0, progress=False, workers=max(1, args.workers))
        generated = time.perf_counter() - start
        overrides = {"n_images": args.n_images, **({"arch": args.arch} if args.arch else {}),
                     **({"batch_size": args.batch_size} if args.batch_size else {})}
        study = gmlib.Study("paper", data_dir, Path(tmp) / "results", store_dir=Path(tmp) / "store", device=device,
                            progress=False, workers=args.workers, **overrides)
        figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "arch": study.config.arch, "crop": list(study.config.crop), "batch_size": study.config.batch_size,
                   "workers": args.workers, "channels_last": args.channels_last, "strips": args.n_images,
                   "generate_seconds": round(generated, 1)}
        figures.update(_train(study, args, device))
        figures.update(_evaluate(study, device))
        figures["environment"] = gmlib.environment()
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(study, args, device) -> dict:
    model = models.create(study.config.arch, seed=0).to(device)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=study.config.lr, weight_decay=study.config.weight_decay)
    total = args.warmup + args.steps
    loader = iter(study.train_loader(seed=0, n_batches=total))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waited, start = 0.0, None
    for step in range(total):
        if step == args.warmup:
            _sync(device)
            waited, start = 0.0, time.perf_counter()
        before = time.perf_counter()
        images, masks = next(loader)
        waited += time.perf_counter() - before
        images = images.to(device, non_blocking=True, memory_format=layout)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        loss = study.loss_fn(logits.float(), masks.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"train_images_per_s": round(args.steps * study.config.batch_size / seconds, 2),
            "train_waited_for_data": round(waited / seconds, 3),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            if device.type == "cuda" else None,
            "final_loss": round(float(loss), 4)}


def _evaluate(study, device) -> dict:
    model = models.create(study.config.arch, seed=0).to(device)
    start = time.perf_counter()
    post = study.tune_postprocess(model)
    scores = study.evaluate(model, post, "val")
    seconds = time.perf_counter() - start
    return {"val_strips": len(study.val_set), "tune_and_evaluate_seconds": round(seconds, 1),
            "val_dice_kaggle_untrained": round(scores["dice_kaggle"], 4)}


if __name__ == "__main__":
    sys.exit(main())
