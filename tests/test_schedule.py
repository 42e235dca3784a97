"""gmlib.schedule: one-shot and iterative pruning loops, their end conditions, and resuming after a real SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import gmlib
from gmlib.schedule import iterative, one_shot

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 4, 1))


def params(model):
    return sum(p.numel() for p in model.parameters())


class Calls:
    """finetune / evaluate stand-ins that record their calls; the score is the share of parameters left."""

    def __init__(self, full):
        self.full, self.finetuned, self.evaluated = full, [], 0

    def finetune(self, model, seed):
        self.finetuned.append(seed)
        with torch.no_grad():
            model[0].bias.add_(0.01)  # a visible change, so "after" differs from "before"

    def evaluate(self, model):
        self.evaluated += 1
        return {"share": params(model) / self.full, "bias": model[0].bias.sum().item(), "per_class": [1.0, 2.0]}


def test_one_shot_prunes_a_copy_and_shares_deterministic_pruning_between_seeds():
    model = small_net()
    calls = Calls(params(model))
    rows = one_shot(model, X, 0.5, finetune=calls.finetune, evaluate=calls.evaluate, criterion="l1", seeds=[0, 1])
    assert params(model) == calls.full  # untouched
    assert rows["seed"].tolist() == [0, 1] and calls.finetuned == [0, 1]
    assert calls.evaluated == 3  # one evaluation before fine-tuning, shared, and one after per seed
    assert rows["params"].nunique() == 1 and rows["params"].iloc[0] < calls.full
    assert rows["share_before"].iloc[0] == pytest.approx(rows["params"].iloc[0] / calls.full)
    assert (rows["bias_after"] > rows["bias_before"]).all()
    assert "per_class_before" not in rows  # lists are not columns
    assert rows["params_reduction"].iloc[0] == pytest.approx(100 * (1 - rows["params"].iloc[0] / calls.full))


def test_one_shot_can_skip_the_evaluation_before_fine_tuning():
    model = small_net()
    calls = Calls(params(model))
    rows = one_shot(model, X, 0.5, finetune=calls.finetune, evaluate=calls.evaluate, criterion="l1", seeds=[0, 1],
                    evaluate_before=False)
    assert calls.evaluated == 2  # only after fine-tuning, once per seed
    assert "share_before" not in rows and rows["share_after"].iloc[0] < 1


def test_one_shot_random_criterion_draws_per_seed():
    model = small_net()
    calls = Calls(params(model))
    rows = one_shot(model, X, 0.5, finetune=calls.finetune, evaluate=calls.evaluate, criterion="random",
                    seeds=[0, 1, 0])
    assert calls.evaluated == 6
    kept = [r for r in rows["bias_before"]]
    assert kept[0] == kept[2] and kept[0] != kept[1]  # seed 0 twice: the same filters; seed 1: others


def run_iterative(**end_condition):
    """The small net pruned to 20, 40, 60, 80 % with the recording stand-ins; returns (model, calls, result)."""
    model = small_net()
    calls = Calls(params(model))
    result = iterative(model, X, [0.2, 0.4, 0.6, 0.8], finetune=calls.finetune, evaluate=calls.evaluate,
                       metric="share", progress=False, **end_condition)
    return model, calls, result


def test_iterative_stops_at_the_tolerance_and_returns_the_last_step_within_it():
    model, calls, result = run_iterative(tolerance=0.5)
    h = result.history
    last = len(h) - 1
    assert 1 < last < 4  # stopped before the last rate
    assert (h["within_tolerance"] == (h["share_after"] >= 1 - 0.5)).all()
    assert h["within_tolerance"].tolist() == [True] * last + [False]  # the first step below the tolerance ends it
    assert h["stop"].tolist() == [False] * last + [True]
    assert result.chosen_step == last - 1 and params(result.model) == h["params"].iloc[last - 1]
    assert h["params"].is_monotonic_decreasing and h["rate"].tolist() == [0.0, 0.2, 0.4, 0.6][:last + 1]
    # step k removes 1 - (1 - r_k) / (1 - r_{k-1}) of what is left
    assert h["step_rate"].tolist() == pytest.approx([0.0, 0.2, 0.25, 1 - 0.4 / 0.6][:last + 1])
    assert calls.finetuned == list(range(1, last + 1))
    assert params(model) == calls.full


def test_iterative_macs_target_ends_the_run_at_the_first_step_reaching_it():
    _, _, result = run_iterative(macs_target=50.0)
    h = result.history
    first = int((h["macs_reduction"] >= 50).idxmax())
    assert len(h) == first + 1 and result.chosen_step == first and h["stop"].iloc[-1]
    assert h["macs_reduction"].iloc[first - 1] < 50


def test_with_validate_the_end_condition_and_the_choice_read_it_and_evaluate_only_reports():
    """validate falls faster than evaluate (the share squared): the run must stop where validate says, although
    evaluate's scores are still within the tolerance there."""
    model = small_net()
    calls = Calls(params(model))
    validated = []

    def validate(m):
        validated.append(params(m))
        return {"share": (params(m) / calls.full) ** 2, "per_class": [0.0]}
    result = iterative(model, X, [0.2, 0.4, 0.6, 0.8], finetune=calls.finetune, evaluate=calls.evaluate,
                       validate=validate, metric="share", tolerance=0.5, progress=False)
    h = result.history
    last = len(h) - 1
    assert h["val_share"].tolist() == pytest.approx((h["share_after"] ** 2).tolist())
    assert (h["within_tolerance"] == (h["val_share"] >= 1 - 0.5)).all()
    assert h["within_tolerance"].tolist() == [True] * last + [False] and h["stop"].iloc[-1]
    assert h["share_after"].iloc[last] >= 1 - 0.5  # evaluate alone would have gone on
    assert result.chosen_step == last - 1 and len(validated) == len(h)  # step 0 and every step, once
    # the unpruned network's validation scores, when known, are not recomputed
    again = iterative(small_net(), X, [0.2, 0.4, 0.6, 0.8], finetune=calls.finetune, evaluate=calls.evaluate,
                      validate=validate, validation_reference={"share": 1.0}, metric="share", tolerance=0.5,
                      progress=False)
    assert len(validated) == 2 * len(h) - 1
    assert again.history.drop(columns="seconds").equals(h.drop(columns="seconds"))
    with pytest.raises(KeyError, match="validate"):
        iterative(small_net(), X, [0.2], finetune=calls.finetune, evaluate=calls.evaluate,
                  validate=lambda m: {"other": 1.0}, metric="share", progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"rates": [0.4, 0.2]}, "increasing"),
    ({"rates": [0.2, 1.0]}, "increasing"),
    ({"tolerance": -1}, "tolerance"),
    ({"macs_target": 120}, "macs_target"),
    ({"metric": "nope"}, "nope"),
])
def test_iterative_rejects_bad_settings(kwargs, message):
    model = small_net()
    calls = Calls(params(model))
    args = {"rates": [0.2, 0.4], "metric": "share", **kwargs}
    with pytest.raises((ValueError, KeyError), match=message):
        iterative(model, X, args.pop("rates"), finetune=calls.finetune, evaluate=calls.evaluate, progress=False,
                  **args)


def test_a_checkpoint_folder_of_other_settings_is_refused(tmp_path):
    model = gmlib.models.create("resnet50", seed=0)
    x = torch.zeros(1, 3, 32, 32)
    evaluate = lambda m: {"score": 1.0}
    iterative(model, x, [0.3], finetune=lambda m, s: None, evaluate=evaluate, metric="score",
              checkpoint_dir=tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["run.json", "step_01.pt"]
    with pytest.raises(ValueError, match="other settings"):
        iterative(model, x, [0.3], finetune=lambda m, s: None, evaluate=evaluate, metric="score",
                  criterion="l1", checkpoint_dir=tmp_path, progress=False)


WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch, gmlib
    from gmlib.schedule import iterative
    out, log, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    model = gmlib.models.create("fpn_resnest14d", seed=0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.9).float()

    def finetune(m, seed):
        step = seed % 1000
        with open(log, "a") as f:
            f.write(f"start {step}\\n")
        if step == pause_at:
            time.sleep(300)  # the test kills this process here, in the middle of the step
        torch.manual_seed(seed)
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        m.train()
        for _ in range(2):
            loss = gmlib.train.bce_dice_loss(m(x), y)
            opt.zero_grad(); loss.backward(); opt.step()

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return {"score": -gmlib.train.bce_dice_loss(m(x), y).item()}

    r = iterative(model, x[:1], [0.2, 0.4, 0.6], finetune=finetune, evaluate=evaluate, metric="score",
                  checkpoint_dir=out, progress=False)
    result = {"history": r.history.drop(columns="seconds").to_dict("list"), "chosen": r.chosen_step,
              "params": sum(p.numel() for p in r.model.parameters())}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
""")


def run_worker(tmp_path, name, pause_at=-1, wait=True):
    out, log = tmp_path / name, tmp_path / f"{name}.log"
    out.mkdir(exist_ok=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(out), str(log), str(pause_at)]
    if wait:
        subprocess.run(cmd, check=True, env=env, timeout=300)
        return out, log
    return subprocess.Popen(cmd, env=env), out, log


def test_a_run_killed_mid_step_resumes_without_losing_or_redoing_a_step(tmp_path):
    reference, _ = run_worker(tmp_path, "reference")
    proc, out, log = run_worker(tmp_path, "killed", pause_at=2, wait=False)
    deadline = time.monotonic() + 240
    while "start 2" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, "the worker ended before reaching step 2"
        assert time.monotonic() < deadline, "the worker never reached step 2"
        time.sleep(0.2)
    assert (out / "step_01.pt").is_file() and not (out / "step_02.pt").exists()
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    run_worker(tmp_path, "killed")  # the same command again
    assert log.read_text().split("\n")[:-1] == ["start 1", "start 2", "start 2", "start 3"]
    assert sorted(os.listdir(out)) == ["result.json", "run.json", "step_01.pt", "step_02.pt", "step_03.pt"]
    resumed, uninterrupted = (json.loads((d / "result.json").read_text()) for d in (out, reference))
    assert resumed == uninterrupted
    assert resumed["history"]["step"] == [0, 1, 2, 3] and resumed["chosen"] == 3


def test_rate_for_macs_finds_the_rate_of_a_macs_reduction():
    model = small_net()
    rate = gmlib.schedule.rate_for_macs(model, X, 50.0, criterion="l1", tol=2.0)
    reached = gmlib.prune(small_net(), X, rate, criterion="l1").macs_reduction
    assert abs(reached - 50.0) <= 2.0 and 0 < rate < 0.99
    assert params(model) == params(small_net())  # untouched
    with pytest.raises(ValueError, match="macs_reduction"):
        gmlib.schedule.rate_for_macs(model, X, 120)
