"""gmlib.train: the loss against a hand computation, training lowers the loss, best-by-validation selection,
atomic loadable checkpoints, evaluate against the metrics on the whole set, and the error paths."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gmlib
from gmlib import metrics, train


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))


def tiny_set(n=8, size=32, seed=0):
    """Images whose grey level inside a rectangle says the class: learnable by a 2-layer conv net."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 4, size, size)
    images = 0.1 * torch.randn(n, 3, size, size, generator=g)
    for i in range(n):
        c = i % 4
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        masks[i, c, y:y + size // 3, x:x + size // 3] = 1.0
        images[i] += (c + 1) / 4 * masks[i, c]
    return TensorDataset(images, masks)


def loaders(n=8, batch_size=4, seed=0):
    data = tiny_set(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(data, batch_size=batch_size, shuffle=True, generator=g),
            DataLoader(tiny_set(4, seed=seed + 1), batch_size=batch_size))


def test_loss_matches_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0]], [[-1.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    sig = lambda z: 1 / (1 + math.exp(-z))
    p = [[sig(0.0), sig(2.0)], [sig(-1.0), sig(1.0)]]
    y = [[1, 0], [0, 0]]
    bce = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi)
               for pc, yc in zip(p, y) for pi, yi in zip(pc, yc)) / 4
    dice = [(2 * sum(a * b for a, b in zip(pc, yc)) + 1) / (sum(pc) + sum(yc) + 1) for pc, yc in zip(p, y)]
    dice_term = ((1 - dice[0]) + 0.0) / 2  # class 2 is absent from the target: no Dice term, only BCE
    assert train.soft_dice(logits, target).tolist() == pytest.approx(dice, rel=1e-6)
    assert train.bce_dice_loss(logits, target).item() == pytest.approx(bce + dice_term, rel=1e-6)
    assert train.bce_dice_loss(logits, target, bce_weight=0.0).item() == pytest.approx(dice_term, rel=1e-6)
    assert train.bce_dice_loss(logits, target, dice_weight=0.5).item() == pytest.approx(bce + dice_term / 2, rel=1e-6)
    target[0, 1, 0, 1] = 1.0  # now both classes are present
    dice[1] = (2 * p[1][1] + 1) / (sum(p[1]) + 1 + 1)
    bce += (math.log(1 - p[1][1]) - math.log(p[1][1])) / 4  # that pixel now pays -log p instead of -log(1 - p)
    assert train.bce_dice_loss(logits, target).item() == pytest.approx(bce + 1 - sum(dice) / 2, rel=1e-6)


def test_soft_dice_empty_class_is_one_and_perfect_mask_is_near_one():
    target = torch.zeros(2, 4, 8, 8)
    target[:, 0, :4] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    assert train.soft_dice(logits, target).tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert train.bce_dice_loss(logits, target).item() < 1e-6
    assert train.bce_dice_loss(-logits, target).item() > 5


def test_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        train.bce_dice_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8))


def test_training_lowers_the_loss(tmp_path):
    train_loader, val_loader = loaders(batch_size=2)
    model = tiny_net()
    before = train.evaluate(model, train_loader, device="cpu")["loss"]
    history = train.fit(model, train_loader, val_loader, epochs=10, lr=5e-2, device="cpu", progress=False,
                        restore_best=False)
    after = train.evaluate(model, train_loader, device="cpu")["loss"]
    assert after < 0.75 * before
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert list(history.columns) == ["epoch", "lr", "train_loss", "seconds", "val_loss", "val_dice_kaggle",
                                     "val_dice_positive", "best"]
    assert history["epoch"].tolist() == list(range(1, 11))
    # per-step cosine: the lr at the start of each epoch falls from lr towards 0
    lrs = history["lr"].tolist()
    assert lrs[0] == pytest.approx(5e-2) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(5e-2 * (1 + math.cos(math.pi * 9 / 10)) / 2)


def test_fit_is_seeded():
    runs = []
    for _ in range(2):
        train_loader, val_loader = loaders()
        model = tiny_net()
        runs.append(train.fit(model, train_loader, val_loader, epochs=2, lr=1e-2, device="cpu", progress=False)
                    .drop(columns="seconds"))
    assert runs[0].equals(runs[1])


def test_best_epoch_is_checkpointed_and_restored(tmp_path, monkeypatch):
    """Scripted validation scores 0.2, 0.5, 0.3: epoch 2 must be written and restored, not the last one."""
    scores, states = iter([0.2, 0.5, 0.3]), []

    def scripted_evaluate(model, loader, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        s = next(scores)
        return {"loss": 1 - s, "dice_kaggle": s, "dice_positive": s / 2}

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    train_loader, val_loader = loaders()
    model = tiny_net()
    ckpt = tmp_path / "nested" / "best.pt"
    history = train.fit(model, train_loader, val_loader, epochs=3, lr=1e-2, device="cpu", progress=False,
                        checkpoint=ckpt, arch="tiny")
    assert history["best"].tolist() == [True, True, False]
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["epoch"], saved["arch"], saved["monitor"]) == (2, "tiny", "dice_kaggle")
    assert saved["val_dice_kaggle"] == 0.5 and saved["val_dice_positive"] == 0.25
    for k, v in states[1].items():
        assert torch.equal(saved["state_dict"][k], v)
        assert torch.equal(model.state_dict()[k], v)  # restore_best
    assert not torch.equal(states[1]["0.weight"], states[2]["0.weight"])  # epoch 3 did move the weights
    assert os.listdir(ckpt.parent) == ["best.pt"]  # no temp file left behind


def test_checkpoint_loads_into_a_fresh_model(tmp_path):
    train_loader, val_loader = loaders()
    model = tiny_net()
    ckpt = tmp_path / "ckpt.pt"
    history = train.fit(model, train_loader, val_loader, epochs=2, lr=1e-2, device="cpu", progress=False,
                        checkpoint=ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["arch"] == "Sequential"
    fresh = tiny_net(seed=1)
    fresh.load_state_dict(saved["state_dict"])
    best = history.loc[history["val_dice_kaggle"].idxmax()]
    assert saved["epoch"] == best["epoch"]
    assert train.evaluate(fresh, val_loader, device="cpu")["dice_kaggle"] == pytest.approx(best["val_dice_kaggle"])


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt.pt"
    train.save_checkpoint(ckpt, tiny_net(), epoch=1)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(ckpt, tiny_net(seed=1), epoch=2)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


class FixedLogits(nn.Module):
    """Returns stored logits for the images it is given (the image's first pixel holds its index)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_evaluate_matches_metrics_over_the_whole_set():
    """Batches of 3 over 7 images: batch-wise sums must give the same Dice as one call on all images."""
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(7, 4, 16, 16, generator=g) > 0.8).float()
    target[:, 3] = 0  # a class with no positive pair at all
    target[2] = 0
    logits = torch.randn(7, 4, 16, 16, generator=g) + 3 * (2 * target - 1)
    images = torch.arange(7.0).view(7, 1, 1, 1).expand(7, 3, 16, 16).contiguous()
    loader = DataLoader(TensorDataset(images, target), batch_size=3)
    result = train.evaluate(FixedLogits(logits), loader, device="cpu")
    pred = metrics.postprocess(torch.sigmoid(logits), threshold=0.5)
    pred = pred.to(target.dtype)
    assert result["dice_kaggle"] == pytest.approx(float(metrics.dice_kaggle(pred, target)))
    assert result["dice_positive"] == pytest.approx(float(metrics.dice_positive(pred, target)))
    kaggle_c = torch.as_tensor(metrics.dice_kaggle(pred, target, per_class=True)).tolist()
    assert result["dice_kaggle_per_class"] == pytest.approx(kaggle_c)
    positive_c = result["dice_positive_per_class"]
    expected_c = torch.as_tensor(metrics.dice_positive(pred, target, per_class=True)).tolist()
    assert positive_c[:3] == pytest.approx(expected_c[:3]) and math.isnan(positive_c[3])
    assert 0 < result["dice_positive"] < 1 and 0 < result["dice_kaggle"] < 1
    assert result["loss"] == pytest.approx(sum(
        train.bce_dice_loss(logits[i:i + 3], target[i:i + 3]).item() * len(target[i:i + 3]) for i in (0, 3, 6)) / 7)


def test_predict_returns_probabilities_for_a_batch_or_a_loader():
    train_loader, val_loader = loaders()
    model = tiny_net().train()
    images = next(iter(val_loader))[0]
    probs = train.predict(model, images, device="cpu")
    assert probs.shape == (4, 4, 32, 32) and 0 <= probs.min() and probs.max() <= 1
    assert torch.allclose(train.predict(model, val_loader, device="cpu"), probs)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"),
    ({"weight_decay": -1.0}, "weight_decay"), ({"monitor": "iou"}, "monitor"), ({"threshold": 1.0}, "threshold"),
])
def test_fit_rejects_bad_arguments(kwargs, name):
    train_loader, val_loader = loaders()
    args = {"epochs": 1, "lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        train.fit(tiny_net(), train_loader, val_loader, device="cpu", progress=False, **args)


def test_empty_loaders_are_rejected_by_name(tmp_path):
    train_loader, val_loader = loaders()
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, 4, 8, 8)), batch_size=2)
    with pytest.raises(ValueError, match="train_loader is empty"):
        train.fit(tiny_net(), empty, val_loader, epochs=1, lr=1e-3, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="val_loader is empty"):
        train.fit(tiny_net(), train_loader, empty, epochs=1, lr=1e-3, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="loader is empty"):
        train.evaluate(tiny_net(), empty)
    with pytest.raises(ValueError, match="loader_or_batch is empty"):
        train.predict(tiny_net(), empty)
    assert not (tmp_path / "c.pt").exists()


def test_fit_runs_on_fpn_resnest50_at_a_tiny_input(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(2, 3, 64, 64), (torch.rand(2, 4, 64, 64) > 0.9).float())
    loader = DataLoader(data, batch_size=2)
    model = gmlib.models.create("fpn_resnest50", seed=0)
    history = train.fit(model, loader, loader, epochs=1, lr=1e-3, device="cpu", progress=False,
                        checkpoint=tmp_path / "fpn.pt", arch="fpn_resnest50")
    assert len(history) == 1 and math.isfinite(history["train_loss"].iloc[0])
    saved = torch.load(tmp_path / "fpn.pt", weights_only=True)
    assert saved["arch"] == "fpn_resnest50"
    gmlib.models.create("fpn_resnest50").load_state_dict(saved["state_dict"])


def test_pos_weight_scales_the_bce_of_defect_pixels():
    logits = torch.zeros(1, 4, 2, 2)
    target = torch.ones(1, 4, 2, 2)
    plain = train.bce_dice_loss(logits, target, dice_weight=0.0)
    assert torch.isclose(plain, torch.log(torch.tensor(2.0)))
    assert torch.isclose(train.bce_dice_loss(logits, target, dice_weight=0.0, pos_weight=10.0), 10 * plain)
    per_class = train.bce_dice_loss(logits, target, dice_weight=0.0, pos_weight=[1.0, 2.0, 3.0, 4.0])
    assert torch.isclose(per_class, 2.5 * plain)
    # background pixels are not reweighted
    assert torch.isclose(train.bce_dice_loss(logits, torch.zeros_like(target), dice_weight=0.0, pos_weight=10.0), plain)


def test_padded_forward_crops_back_and_matches_an_unpadded_input():
    model = gmlib.models.create("fpn_resnest14d", seed=0).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(train.padded_forward(model, x), model(x))  # already a multiple of 32: no padding
        out = train.padded_forward(model, x[..., :80])  # 80 wide: padded to 96, then cropped
        assert out.shape == (1, 4, 64, 80)
        assert torch.equal(out, model(torch.cat([x[..., :80], x[..., 79:80].expand(-1, -1, -1, 16)], -1))[..., :80])
    with pytest.raises(ValueError, match="multiples of 32"):
        model(x[..., :80])


def test_fit_without_validation_keeps_the_last_epoch(tmp_path):
    train_loader, _ = loaders()
    model = tiny_net()
    history = train.fit(model, train_loader, None, epochs=3, lr=1e-2, device="cpu", progress=False,
                        checkpoint=tmp_path / "last.pt")
    assert list(history.columns) == ["epoch", "lr", "train_loss", "seconds"]
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 3
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in model.state_dict().items())


def test_evaluate_takes_one_threshold_per_class():
    _, val_loader = loaders()
    model = tiny_net()
    low, high = (train.evaluate(model, val_loader, device="cpu", threshold=[t] * 4) for t in (0.01, 0.99))
    mixed = train.evaluate(model, val_loader, device="cpu", threshold=[0.01, 0.99, 0.01, 0.99])
    for c in range(4):
        expect = (low if c % 2 == 0 else high)["dice_kaggle_per_class"][c]
        assert mixed["dice_kaggle_per_class"][c] == pytest.approx(expect)
    with pytest.raises(ValueError, match="threshold"):
        train.evaluate(model, val_loader, device="cpu", threshold=[0.5, 1.5, 0.5, 0.5])


# a training run in a real process, killed with SIGKILL in the middle of an epoch and run again: it resumes at that
# epoch and ends bitwise where a run that was never stopped ends. The loader draws from three random streams
# (torch's global one, its sampler's, its dataset's), as the study's loaders do.
RESUME_WORKER = textwrap.dedent("""
    import json, sys, time
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
    from gmlib import train

    out, log, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)

    class Crops(Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.images, self.masks = torch.randn(n, 3, 24, 24, generator=g), torch.rand(n, 4, 24, 24, generator=g) > 0.7
            self.generator = torch.Generator().manual_seed(seed + 1)
        def __len__(self):
            return len(self.images)
        def __getitem__(self, i):
            top, left = torch.randint(0, 9, (2,), generator=self.generator).tolist()
            return self.images[i, :, top:top + 16, left:left + 16], self.masks[i, :, top:top + 16, left:left + 16].float()

    data = Crops(12, 0)
    sampler = WeightedRandomSampler(torch.linspace(1, 2, 12), 12, generator=torch.Generator().manual_seed(3))
    train_loader = DataLoader(data, batch_size=4, sampler=sampler)
    val_loader = DataLoader(Crops(4, 5), batch_size=4)
    calls = [0]

    def loss(logits, target):
        calls[0] += 1
        if calls[0] == pause_at:  # the test kills the process here, mid-epoch (epoch 3's second batch)
            open(log, "a").write("paused\\n")
            time.sleep(300)
        return train.bce_dice_loss(logits, target)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2),
                          nn.Conv2d(8, 4, 1))
    history = train.fit(model, train_loader, val_loader, epochs=4, lr=1e-2, device="cpu", seed=7, monitor="dice_kaggle",
                        loss_fn=loss, resume=out + "/state.pt", progress=False)
    torch.save(model.state_dict(), out + "/weights.pt")
    json.dump(history.drop(columns="seconds").to_dict("list"), open(out + "/history.json", "w"))
""")


def _resume_worker(tmp_path, name, pause_at=-1, wait=True):
    out, log = tmp_path / name, tmp_path / f"{name}.log"
    out.mkdir(exist_ok=True)
    script = tmp_path / "resume_worker.py"
    script.write_text(RESUME_WORKER)
    cmd = [sys.executable, str(script), str(out), str(log), str(pause_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        subprocess.run(cmd, check=True, env=env, timeout=300)
        return out
    return subprocess.Popen(cmd, env=env), out, log


def test_training_killed_mid_epoch_resumes_and_ends_with_the_same_weights(tmp_path):
    reference = _resume_worker(tmp_path, "reference")
    batches, val_batches = 3, 1  # loss calls an epoch: 12 crops in batches of 4, then 4 validation crops
    pause_at = 2 * (batches + val_batches) + 2  # epoch 3, second training batch
    proc, out, log = _resume_worker(tmp_path, "killed", pause_at=pause_at, wait=False)
    deadline = time.monotonic() + 240
    while "paused" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, "the worker ended before the pause"
        assert time.monotonic() < deadline, "the worker never reached the pause"
        time.sleep(0.2)
    saved = torch.load(out / "state.pt", weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    _resume_worker(tmp_path, "killed")  # the same command again: resumes at epoch 3
    resumed, unbroken = (torch.load(d / "weights.pt", weights_only=True) for d in (out, reference))
    assert resumed.keys() == unbroken.keys()
    assert all(torch.equal(resumed[k], unbroken[k]) for k in resumed)
    assert (out / "history.json").read_text() == (reference / "history.json").read_text()
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2, 3, 4]


def test_resume_from_another_recipe_or_a_broken_file_names_the_file(tmp_path):
    train_loader, val_loader = loaders()
    state = tmp_path / "state.pt"
    train.fit(tiny_net(), train_loader, val_loader, epochs=1, lr=1e-2, device="cpu", resume=state, progress=False)
    with pytest.raises(ValueError, match=r"state\.pt: it was written by another recipe"):
        train.fit(tiny_net(), train_loader, val_loader, epochs=2, lr=1e-2, device="cpu", resume=state, progress=False)
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot resume from .*state\.pt: not a training state"):
        train.fit(tiny_net(), train_loader, val_loader, epochs=1, lr=1e-2, device="cpu", resume=state, progress=False)


def test_a_loss_that_becomes_nan_stops_training_naming_the_epoch():
    train_loader, val_loader = loaders()
    calls = [0]

    def loss(logits, target):
        calls[0] += 1
        value = train.bce_dice_loss(logits, target)
        return value * float("nan") if calls[0] > 3 else value  # from epoch 2 on (2 batches an epoch)
    with pytest.raises(FloatingPointError, match="in epoch 2; lower lr=0.01"):
        train.fit(tiny_net(), train_loader, None, epochs=3, lr=1e-2, device="cpu", loss_fn=loss, progress=False)
