"""gmlib.book.unstructured: magnitude pruning keeps the dense shapes and zeroes the share asked for, the MAC counts follow
the nonzeros, the filter rate matches a parameter count, the calls follow the interval over rounds, and the committed
record (chapter 03) is consistent with what it says it measured."""
import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gmlib
from gmlib.book import unstructured

STORE = Path(__file__).resolve().parents[1] / "data" / "store"


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_magnitude_prune_zeroes_the_smallest_share_and_keeps_the_shapes(sparsity):
    net = small_net()
    before = copy.deepcopy(net)
    unstructured.magnitude_prune(net, sparsity)
    original = dict(before.named_parameters())
    assert set(dict(net.named_parameters())) == set(original)  # no weight_orig left behind
    for name, w in net.named_parameters():
        w0 = original[name]
        assert w.shape == w0.shape, name
        if name.endswith("weight") and w.dim() > 1:
            zeros = int((w == 0).sum())
            assert zeros == round(sparsity * w.numel()), name
            if zeros:  # the zeroed entries are the smallest in magnitude
                assert w0[w == 0].abs().max() <= w0[w != 0].abs().min(), name
    assert all("mask" not in n for n, _ in net.named_buffers())


def test_magnitude_prune_refuses_a_share_out_of_range():
    with pytest.raises(ValueError, match="sparsity"):
        unstructured.magnitude_prune(small_net(), 1.0)


def test_nonzero_macs_count_the_nonzero_weights_at_each_output():
    net = small_net()
    _, dense = gmlib.count(net, (3, 8, 8))
    assert unstructured.nonzero_macs(net, (3, 8, 8)) == dense  # random init: no zero weights
    unstructured.magnitude_prune(net, 0.5)
    want = (int(torch.count_nonzero(net[0].weight)) * 64 + int(torch.count_nonzero(net[3].weight)) * 16
            + int(torch.count_nonzero(net[8].weight)))
    assert unstructured.nonzero_macs(net, (3, 8, 8)) == want
    assert gmlib.count(net, (3, 8, 8))[1] == dense  # a dense kernel still runs them all


def test_filter_rate_for_reaches_the_parameter_count():
    net = small_net()
    target = sum(p.numel() for p in net.parameters()) // 2
    rate = unstructured.filter_rate_for(net, target, trace_size=(3, 8, 8))
    pruned = copy.deepcopy(net)
    gmlib.prune(pruned, torch.zeros(1, 3, 8, 8), rate, policy="coupled")
    after = sum(p.numel() for p in pruned.parameters())
    assert abs(after - target) / target < 0.05, (rate, after, target)


def test_speed_call_follows_the_studys_decision_rule():
    assert unstructured.speed_call([1.5, 1.6, 1.55, 1.52])[2] == "faster"
    assert unstructured.speed_call([0.7, 0.72, 0.69, 0.71])[2] == "slower"
    assert unstructured.speed_call([0.9, 1.1, 1.0, 1.05])[2] == "not separated"
    assert unstructured.speed_call([1.0, 1.01, 0.99, 1.0, 1.005])[2] == "equivalent"  # inside 1 ± 0.05
    assert unstructured.speed_call([1.03, 1.04, 1.03, 1.04])[2] != "faster"  # separated, but within the margin
    assert unstructured.speed_call([1.5])[2] == "not separated"  # one round: no interval
    # Holm: a family of many comparisons asks more of each
    family = unstructured.speed_calls([[1.12, 1.08, 1.15, 1.10, 1.05]] + [[1.0, 1.0, 1.01, 0.99]] * 20)
    assert unstructured.speed_call([1.12, 1.08, 1.15, 1.10, 1.05])[2] == "faster" and family.call[0] == "not separated"


def timed(method, sparsity, rounds):
    return {"network": "net", "method": method, "sparsity": sparsity, "runtime": "eager", "ms": min(rounds),
            "rounds_ms": rounds}


def test_the_claim_holds_only_when_unstructured_is_never_faster_and_filters_always_are():
    dense = timed("dense", 0.0, [100, 101, 99, 100])
    table = pd.DataFrame([dense, timed("dense copy", 0.0, [100, 99, 101, 100]),
                          timed("unstructured", 0.5, [100, 102, 98, 99]), timed("filter", 0.5, [50, 51, 49, 50])])
    calls = unstructured.claim_verdict(table)
    assert list(calls.call) == ["equivalent", "equivalent", "faster"]
    text = unstructured.claim_markdown(calls)
    assert text.startswith("**The paper's claim holds on this machine.**") and "as it should" in text
    faster = pd.concat([table, pd.DataFrame([timed("unstructured", 0.9, [80, 81, 79, 80])])], ignore_index=True)
    text = unstructured.claim_markdown(unstructured.claim_verdict(faster))
    assert "holds in part" in text and "net at 90% in eager (1.25×)" in text


def test_csr_markdown_names_where_csr_starts_to_pay():
    view = pd.DataFrame({"layer": ["a"] * 3, "sparsity": [0.0, 0.5, 0.9], "CSR speedup": [0.2, 0.6, 1.8],
                         "± (95 %)": [0.1] * 3, "CSR is": ["slower", "slower", "faster"], "dense MB": [1.0] * 3,
                         "CSR MB": [3.0, 1.5, 0.3]}).set_index(["layer", "sparsity"])
    assert unstructured.csr_markdown(view) == ("`a`: CSR beats the dense product from 90% sparsity on (1.80× ± 0.10 "
                                               "at 90%), and stores fewer bytes from 90% on.")
    view["CSR is"] = ["slower", "slower", "not separated"]
    assert "slower than the dense product up to 50% sparsity and never faster" in unstructured.csr_markdown(view)


def test_the_committed_record_is_consistent():
    """Chapter 03's record: every unstructured network stores the dense size and executes the dense MACs, its
    nonzeros match the filter-pruned network's parameters within 3 % (a rate moves them in steps), and every variant
    was timed in every runtime for the rounds it says."""
    records = [r for r in gmlib.Store(STORE, readonly=True).records("unstructured") if r.config["table"] == "speed"]
    assert records, "no structured-against-unstructured record in the store"
    for record in records:
        t = pd.DataFrame(record.result["rows"])
        assert (t.rounds_ms.map(len) == record.config["rounds"]).all()
        assert set(t.runtime) == set(record.config["runtimes"])
        dense = t[t.method == "dense"].set_index("network")
        for row in t[t.method == "unstructured"].itertuples():
            assert row.params == dense.loc[row.network, "params"].iloc[0]
            assert row.GMACs == pytest.approx(dense.loc[row.network, "GMACs"].iloc[0])
            assert row.nonzero_GMACs < row.GMACs
            f = t[(t.method == "filter") & (t.network == row.network) & (t.sparsity == row.sparsity)].iloc[0]
            assert abs(f.params - row.nonzero_params) / row.nonzero_params < 0.03
            assert f.GMACs < row.GMACs
