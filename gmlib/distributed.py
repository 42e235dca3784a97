"""Fine-tuning on several processes with DistributedDataParallel: `finetune` runs on each rank of a
`torchrun` job, with the study's loss, defect oversampling and pos_weight.

Each of the W ranks takes B / W samples of every global batch of B (a DistributedSampler: the k-th local batches
together are the k-th batch of one process reading the same permutation). DDP averages gradients, so a loss that is
a mean over samples needs nothing more; the soft-Dice term is not (its sums run over the whole batch), so
`global_bce_dice_loss` adds its per-class sums over ranks and back-propagates the global Dice through a local
surrogate. With frozen BatchNorm statistics (or SyncBatchNorm, GPUs only) a W-rank run then follows the
one-process run with the same global batch up to float rounding. NCCL on GPUs, gloo on CPU; rank 0 writes.
"""
import os
import time

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import data, models
from .persist import load_pruned
from .rules.norms import is_batch_norm
from .train import class_sums, dice_term, padded_forward, weighted_bce

__all__ = ["global_bce_dice_loss", "finetune", "load_any", "rank_and_world"]


def rank_and_world():
    """(this process's rank, the number of processes): (0, 1) outside a torchrun job."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def global_bce_dice_loss(logits, target, pos_weight=None):
    """`train.bce_dice_loss` of the global batch, from this rank's share of it.

    Value: local BCE + the global batch's Dice term. Gradient, once DDP has averaged it over the W ranks: that of
    the one-process loss (BCE is a mean over equal shares; the Dice term goes through W * g . s_local, with g its
    gradient at the summed class sums).
    """
    rank, world = rank_and_world()
    bce = weighted_bce(logits, target, pos_weight)
    local = class_sums(logits, target)  # (3, C)
    total = local.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    total.requires_grad_(True)
    with torch.enable_grad():
        dice = dice_term(total)
        (g,) = torch.autograd.grad(dice, total)
    surrogate = world * (g * local).sum()
    return bce + surrogate - surrogate.detach() + dice.detach()


def load_any(path) -> nn.Module:
    """A network from `save_pruned` (pruned or not) or from `train.save_checkpoint` (a state_dict with its arch)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if "manifest" in blob:
        return load_pruned(path)
    if "state_dict" in blob and blob.get("arch") in models.NAMES:
        model = models.create(blob["arch"])
        model.load_state_dict(blob["state_dict"])
        return model
    raise ValueError(f"{path}: neither a save_pruned file nor a training checkpoint with a known arch")


def _freeze_norms(model):
    for m in model.modules():
        if is_batch_norm(m):
            m.eval()


def finetune(model: nn.Module, dataset, *, steps: int, batch_size: int, lr: float, weight_decay: float = 1e-4,
             seed: int = 0, pos_weight=None, weights=None, freeze_bn: bool = False, device=None,
             progress: bool = True):
    """Fine-tune `model` in place for `steps` global batches of `batch_size`, on every rank of the process group
    (or alone without one): AdamW, per-step cosine lr, `global_bce_dice_loss`. Returns (model, history).

    `weights` (one per sample, e.g. `data.oversampling_weights`): each epoch draws with replacement by them, as the
    study's training does (`data.DistributedWeightedSampler`); without, every sample once per epoch, shuffled.

    `freeze_bn` keeps BatchNorm statistics fixed (their affine still trains); otherwise on GPUs with W > 1 the norms
    become SyncBatchNorm, and on CPU each rank normalises by its own share (the usual DDP behaviour).
    """
    rank, world = rank_and_world()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes")
    if len(dataset) < batch_size:
        raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one batch of {batch_size}")
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if world > 1 and device.type == "cuda" and not freeze_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    if weights is not None:
        if len(weights) != len(dataset):
            raise ValueError(f"weights has {len(weights)} entries for a dataset of {len(dataset)} samples")
        sampler = data.DistributedWeightedSampler(weights, len(dataset) // batch_size * batch_size, rank=rank,
                                                  world=world, seed=seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, drop_last=True, num_workers=0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history, step, epoch = [], 0, 0
    bar = tqdm(total=steps, desc=f"fine-tune ({world} process{'es' if world > 1 else ''})",
               disable=not progress or rank != 0)
    start = time.perf_counter()
    while step < steps:
        sampler.set_epoch(epoch)
        for images, masks in loader:
            net.train()
            if freeze_bn:
                _freeze_norms(net)
            loss = global_bce_dice_loss(padded_forward(net, images.to(device)), masks.to(device).float(), pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.detach().clone()
            if world > 1:  # the global batch's loss: local BCE averaged, Dice already global
                dist.all_reduce(value)
                value /= world
            history.append({"step": step + 1, "lr": scheduler.get_last_lr()[0], "loss": float(value)})
            step += 1
            bar.update()
            if step == steps:
                break
        epoch += 1
    bar.close()
    history = pd.DataFrame(history).assign(seconds=time.perf_counter() - start)
    return (net.module if world > 1 else net), history
