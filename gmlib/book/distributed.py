"""The study's fine-tuning on several processes: `torchrun --nproc_per_node N -m gmlib.book.distributed`, with a
profile's data settings (scale, crop, split) and its recipe (pos_weight, defect oversampling); gmlib.distributed
does the work.
"""
import argparse
import os

import torch
import torch.distributed as dist

from .. import data
from ..distributed import rank_and_world, finetune, load_any
from ..persist import save_pruned
from .study import PROFILES


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="save_pruned file or training checkpoint to start from")
    ap.add_argument("--out", required=True, help="where rank 0 writes the fine-tuned network (save_pruned format)")
    ap.add_argument("--data-dir", required=True, help="Severstal layout: train_images/ + train.csv")
    ap.add_argument("--profile", default="quick", choices=["quick", "paper"], help="scale, crop and split from it")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True, help="global batch, split over the processes")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pos-weight", type=float, default=None, help="BCE weight of defect pixels (default: profile's)")
    ap.add_argument("--defect-oversampling", type=float, default=None,
                    help="how much more often defect strips are drawn (default: the profile's)")
    ap.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed")
    ap.add_argument("--no-augment", action="store_true",
                    help="whole downscaled strips, no random crop or flip (deterministic: same data on any W)")
    args = ap.parse_args(argv)
    cfg = PROFILES[args.profile][0]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    rank, world = rank_and_world()
    try:
        torch.manual_seed(args.seed)
        train_ids = data.SeverstalDataset(args.data_dir).split(cfg.val_fraction, cfg.data_seed, cfg.test_fraction)[0]
        augment = {} if args.no_augment else dict(crop=cfg.crop, flip=True,
                                                  generator=torch.Generator().manual_seed(args.seed + rank))
        dataset = data.SeverstalDataset(args.data_dir, train_ids, scale=cfg.scale, **augment)
        pos_weight = cfg.pos_weight if args.pos_weight is None else args.pos_weight
        oversampling = cfg.defect_oversampling if args.defect_oversampling is None else args.defect_oversampling
        model, history = finetune(load_any(args.checkpoint), dataset, steps=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, seed=args.seed, pos_weight=pos_weight, freeze_bn=args.freeze_bn,
                                  weights=data.oversampling_weights(dataset, oversampling))
        if rank == 0:
            save_pruned(model.cpu(), args.out, metadata={"finetune": {**vars(args), "world_size": world,
                                                                      "final_loss": float(history.loss.iloc[-1])}})
            print(f"{world} process(es), {args.steps} steps of {args.batch_size}: loss "
                  f"{history.loss.iloc[0]:.4f} -> {history.loss.iloc[-1]:.4f}; wrote {args.out}")
        if world > 1:
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
