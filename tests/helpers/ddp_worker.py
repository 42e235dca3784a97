"""Run by test_distributed under torchrun (W ranks) or alone (one process): fine-tune, then every rank saves
its weights to OUT/rank<r>.pt so the test can compare the ranks with each other and with the one-process run."""
import sys

import torch
import torch.distributed as dist

from gmlib import data, distributed

data_dir, checkpoint, out, steps, batch = sys.argv[1:6]
if "RANK" in __import__("os").environ:
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0
torch.manual_seed(0)
torch.set_num_threads(1)
dataset = data.SeverstalDataset(data_dir, scale=0.25)
model = distributed.load_any(checkpoint)
for m in model.modules():  # dropout masks are drawn per process: the one thing W ranks cannot share with 1
    if isinstance(m, torch.nn.modules.dropout._DropoutNd):
        m.p = 0.0
model, history = distributed.finetune(model, dataset, steps=int(steps),
                                     batch_size=int(batch), lr=1e-3, seed=0, pos_weight=5.0, freeze_bn=True,
                                     weights=data.oversampling_weights(dataset, 3.0), progress=False)
torch.save({"state_dict": model.state_dict(), "loss": history.loss.tolist()}, f"{out}/rank{rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
