"""Data-parallel fine-tuning: 2 gloo processes launched by torchrun end with identical weights, equal to one
process reading the same global batches; the command-line entry writes a loadable network from rank 0 only."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gmlib
from gmlib.data.synthetic import make_synthetic_severstal

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "helpers" / "ddp_worker.py"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data_dir = make_synthetic_severstal(tmp / "data", 8, seed=3, progress=False)
    model = gmlib.models.create("fpn_resnest14d", seed=0)
    gmlib.prune(model, torch.randn(1, 3, 64, 64), 0.5)
    gmlib.save_pruned(model, tmp / "pruned.pt", arch="fpn_resnest14d")
    return tmp, data_dir


def run(args, nproc=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc else [sys.executable]
    done = subprocess.run(launch + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_two_gloo_ranks_match_each_other_and_one_process(setup):
    tmp, data_dir = setup
    (tmp / "ddp").mkdir()
    (tmp / "one").mkdir()
    run([WORKER, data_dir, tmp / "pruned.pt", tmp / "ddp", 3, 4], nproc=2)
    run([WORKER, data_dir, tmp / "pruned.pt", tmp / "one", 3, 4])
    r0, r1, one = (torch.load(p, weights_only=True) for p in (tmp / "ddp/rank0.pt", tmp / "ddp/rank1.pt",
                                                            tmp / "one/rank0.pt"))
    start = gmlib.load_pruned(tmp / "pruned.pt").state_dict()
    moved = max(float((one["state_dict"][k] - start[k]).abs().max()) for k in start if start[k].is_floating_point())
    assert moved > 1e-3  # it did train
    for k, v in r0["state_dict"].items():
        assert torch.equal(v, r1["state_dict"][k]), f"ranks differ in {k}"  # DDP keeps replicas identical
        if v.is_floating_point():  # same global batches, same loss: the same update up to float rounding, which
            # Adam magnifies where a gradient is near zero, so the updates are compared, not the weights' last digits
            update, gap = one["state_dict"][k] - start[k], v - one["state_dict"][k]
            assert float(gap.norm()) <= 1e-2 * float(update.norm()) + 1e-7, k
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-4)


def test_command_line_entry_writes_from_rank_zero(setup):
    tmp, data_dir = setup
    out = tmp / "finetuned.pt"
    done = run(["-m", "gmlib.book.distributed", "--checkpoint", tmp / "pruned.pt", "--out", out, "--data-dir", data_dir,
                "--steps", 2, "--batch-size", 2, "--no-augment", "--freeze-bn"], nproc=2)
    assert done.stdout.count("wrote") == 1 and "2 process(es)" in done.stdout
    model, meta = gmlib.load_pruned(out, with_metadata=True)
    assert meta["finetune"]["world_size"] == 2 and meta["finetune"]["steps"] == 2
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_bad_inputs_are_named(setup, tmp_path):
    tmp, data_dir = setup
    model = gmlib.load_pruned(tmp / "pruned.pt")
    dataset = gmlib.data.SeverstalDataset(data_dir, scale=0.25)
    with pytest.raises(ValueError, match="fewer than one batch"):
        gmlib.distributed.finetune(model, dataset, steps=1, batch_size=64, lr=1e-3)
    torch.save({"weights": {}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="neither a save_pruned file"):
        gmlib.distributed.load_any(tmp_path / "odd.pt")


def test_weighted_draw_is_one_draw_shared_by_the_ranks():
    """W ranks' local batches of B / W together are the one-process batches of B, and one rank alone draws what
    the study's WeightedRandomSampler draws with the same seed."""
    from torch.utils.data import WeightedRandomSampler
    weights = [3.0 if i % 3 == 0 else 1.0 for i in range(24)]
    one = list(gmlib.data.DistributedWeightedSampler(weights, 24, seed=5))
    assert one == list(WeightedRandomSampler(weights, 24, replacement=True, generator=torch.Generator().manual_seed(5)))
    shares = [list(gmlib.data.DistributedWeightedSampler(weights, 24, rank=r, world=2, seed=5)) for r in range(2)]
    b = 4  # local batch of a global batch of 8
    for k in range(3):
        assert sorted(shares[0][k * b:(k + 1) * b] + shares[1][k * b:(k + 1) * b]) == sorted(one[k * 8:(k + 1) * 8])
    epoch1 = gmlib.data.DistributedWeightedSampler(weights, 24, seed=5)
    epoch1.set_epoch(1)
    assert list(epoch1) != one
    with pytest.raises(ValueError, match="multiple of the 5 processes"):
        gmlib.data.DistributedWeightedSampler(weights, 24, world=5)


def test_oversampling_weights_follow_the_defects(setup):
    _, data_dir = setup
    dataset = gmlib.data.SeverstalDataset(data_dir, scale=0.25)
    weights = gmlib.data.oversampling_weights(dataset, 3.0)
    assert weights == [3.0 if has else 1.0 for has in dataset.has_defect()] and 3.0 in weights and 1.0 in weights
    with pytest.raises(ValueError, match="positive"):
        gmlib.data.oversampling_weights(dataset, 0)
