"""gmlib.allocate: per-set rates that meet a MACs / params / latency target (sensitivity, uniform, random), costed
without pruning, checked by pruning; a cached, resumable sensitivity table; clear refusals that leave the model."""
import copy
import json

import pandas as pd
import pytest
import torch
from torch import nn

import gmlib
from gmlib import allocation

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    """Four coupling sets of different widths and costs; the head (4 outputs) is kept."""

    def __init__(self):
        super().__init__()
        widths = [3, 16, 32, 32, 24]
        self.body = nn.Sequential(*[m for a, b in zip(widths, widths[1:])
                                    for m in (nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())])
        self.head = nn.Conv2d(widths[-1], 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 2.0)
    return net


def fidelity(reference):
    """evaluate: minus the mean squared change of the output (0 for the unpruned network); counts its calls."""
    with torch.no_grad():
        target = reference(X)

    def evaluate(m):
        evaluate.calls += 1
        with torch.no_grad():
            return -float((m.eval()(X) - target).pow(2).mean())
    evaluate.calls = 0
    return evaluate


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", allocation.METHODS)
def test_each_method_meets_a_macs_target_that_pruning_confirms(model, method):
    before = weights(model)
    result = gmlib.allocate(model, X, "macs", 0.4, method=method, evaluate=fidelity(model), progress=False)
    assert same(before, weights(model))  # only copies were pruned
    assert 0.4 - 0.005 <= result.reached <= 0.4 + 0.01
    pruned = copy.deepcopy(model)
    report = gmlib.apply(pruned, result.plan)
    macs = gmlib.count(model, (3, 32, 32))[1]
    assert report.macs_after == pytest.approx((1 - result.reached) * macs, rel=1e-9)
    open_rates = [result.rates[s.index] for s in result.plan.sets if not s.reason]
    if method == "uniform":
        assert len(set(open_rates)) == 1
    else:
        assert len(set(open_rates)) > 1
    frame = result.set_rates()
    assert list(frame.columns) == ["set", "member", "size", "kept", "rate"] and len(frame) == len(result.plan.sets)
    assert gmlib.plan(model, X, result.rate).kept == result.plan.kept  # the rates rebuild the plan


def test_the_sensitivity_table_is_monotone_and_the_less_sensitive_set_loses_more(model):
    result = gmlib.allocate(model, X, "macs", 0.3, evaluate=fidelity(model), rates=(0.25, 0.5, 0.75),
                            progress=False)
    table = result.sensitivity
    assert result.baseline_score == 0.0 and set(table["rate"]) == {0.25, 0.5, 0.75}
    for _, g in table.groupby("set"):
        assert g["monotone_drop"].is_monotonic_increasing and (g["monotone_drop"] >= g["drop"]).all()
    curves = {i: g.set_index("rate")["monotone_drop"] for i, g in table.groupby("set")}
    for i in curves:
        for j in curves:
            if (curves[i] > curves[j]).all():  # set i hurts more at every rate: it cannot be cut deeper
                assert result.rates[i] <= result.rates[j]
    assert result.threshold is not None and result.threshold >= 0


def test_random_allocation_follows_its_seed(model):
    a = gmlib.allocate(model, X, "macs", 0.3, method="random", seed=1, progress=False)
    b = gmlib.allocate(model, X, "macs", 0.3, method="random", seed=1, progress=False)
    c = gmlib.allocate(model, X, "macs", 0.3, method="random", seed=2, progress=False)
    assert a.rates == b.rates and a.rates != c.rates


def test_a_params_target_counts_the_pruned_parameters(model):
    result = gmlib.allocate(model, X, "params", 0.5, method="uniform", progress=False)
    pruned = copy.deepcopy(model)
    gmlib.apply(pruned, result.plan)
    total = sum(p.numel() for p in model.parameters())
    assert 1 - sum(p.numel() for p in pruned.parameters()) / total == pytest.approx(result.reached)
    assert 0.5 - 0.005 <= result.reached <= 0.53  # one channel less per set is a step of about 3 % here


def test_a_latency_target_times_each_candidate_beside_the_original(model, monkeypatch):
    def fake_measure(variants, x, runtimes, *, rounds, progress):  # time proportional to the MACs
        assert runtimes == ("eager",) and rounds == 2 and not progress
        return pd.DataFrame([{"variant": k, "runtime": "eager", "ms": gmlib.count(m, tuple(x.shape[1:]))[1] / 1e3}
                             for k, m in variants.items()])
    monkeypatch.setattr(gmlib.latency, "measure", fake_measure)
    result = gmlib.allocate(model, X, "latency", 0.3, method="uniform", latency_rounds=2, progress=False)
    by_macs = gmlib.allocate(model, X, "macs", 0.3, method="uniform", progress=False)
    assert result.reached == pytest.approx(by_macs.reached) and result.rates == by_macs.rates


def test_the_sensitivity_cache_resumes_and_refuses_another_model(model, tmp_path):
    path = tmp_path / "sens.json"
    evaluate = fidelity(model)

    def dies_after_three(m):
        if dies_after_three.calls == 3:
            raise KeyboardInterrupt
        dies_after_three.calls += 1
        return evaluate(m)
    dies_after_three.calls = 0
    with pytest.raises(KeyboardInterrupt):
        gmlib.allocate(model, X, "macs", 0.3, evaluate=dies_after_three, rates=(0.3, 0.6), cache=path,
                       progress=False)
    assert len(json.loads(path.read_text())["scores"]) == 3  # the baseline and two table entries
    fresh = fidelity(model)
    result = gmlib.allocate(model, X, "macs", 0.3, evaluate=fresh, rates=(0.3, 0.6), cache=path, progress=False)
    n_open = sum(not s.reason for s in result.plan.sets)
    assert fresh.calls == 2 * n_open - 2  # only what the killed run did not finish
    again = fidelity(model)
    repeat = gmlib.allocate(model, X, "macs", 0.3, evaluate=again, rates=(0.3, 0.6), cache=path, progress=False)
    assert again.calls == 0 and repeat.rates == result.rates
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight.add_(1)
    with pytest.raises(ValueError, match="sens.json.*another model"):
        gmlib.allocate(other, X, "macs", 0.3, evaluate=again, rates=(0.3, 0.6), cache=path, progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"target": "flops"}, ValueError, "unknown target 'flops'"),
    ({"cut": 1.2}, ValueError, "cut must be a number in"),
    ({"method": "greedy"}, ValueError, "unknown method 'greedy'"),
    ({"evaluate": None}, TypeError, "needs evaluate"),
    ({"rates": (0.5, 1.0)}, ValueError, "rates must be numbers in"),
    ({"rate": 0.3}, TypeError, "unknown option"),
    ({"cut": 0.9, "max_rate": 0.3}, ValueError, "out of reach"),
])
def test_bad_input_is_refused_by_name_and_the_model_is_untouched(model, kwargs, error, match):
    before = weights(model)
    args = {"target": "macs", "cut": 0.4, "evaluate": fidelity(model), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        gmlib.allocate(model, X, **args)
    assert same(before, weights(model))


def test_a_stored_table_replaces_measuring_and_must_match_the_network(model):
    table = gmlib.allocation.sensitivity(model, X, fidelity(model), rates=(0.3, 0.6), progress=False)
    assert table.attrs["baseline_score"] == 0.0 and len(table) == 2 * table["set"].nunique()
    measured = gmlib.allocate(model, X, "macs", 0.3, evaluate=fidelity(model), rates=(0.3, 0.6), progress=False)
    given = gmlib.allocate(model, X, "macs", 0.3, table=table, progress=False)
    assert given.rates == measured.rates and given.baseline_score == 0.0
    with pytest.raises(ValueError, match="measured on another network"):
        gmlib.allocate(model, X, "macs", 0.3, table=table[table["set"] != table["set"].iloc[0]], progress=False)
