"""Filter criteria and the selection of filters to keep."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import gmlib
from gmlib import CRITERIA, distance_sums, filter_scores, geometric_median, select_filters


def test_fpgm_is_distance_to_the_exact_median():
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    flat = w.flatten(1)
    expected = torch.linalg.vector_norm(flat - geometric_median(flat), dim=1)
    assert torch.allclose(filter_scores(w, "fpgm"), expected)


def test_fpgm_marks_the_central_filter_first():
    # the filter sitting at the median of the others is the most replaceable one
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])[:, :, None, None]
    assert int(filter_scores(w, "fpgm").argmin()) == 0
    assert int(filter_scores(w, "fpgm-sum").argmin()) == 0
    # ...while a norm criterion would prune it for a different reason; shift everything far from the origin
    shifted = w + 100.0
    assert int(filter_scores(shifted, "fpgm").argmin()) == 0  # translation does not change FPGM's choice
    assert not torch.allclose(filter_scores(shifted, "l2"), filter_scores(w, "l2"))


def test_fpgm_sum_is_distance_sums():
    w = torch.randn(10, 4, 3, 3)
    assert torch.allclose(filter_scores(w, "fpgm-sum"), distance_sums(w.flatten(1)))


def test_norm_criteria():
    w = torch.randn(6, 3, 3, 3)
    assert torch.allclose(filter_scores(w, "l1"), w.abs().flatten(1).sum(1))
    assert torch.allclose(filter_scores(w, "l2"), w.flatten(1).norm(dim=1))


def test_linear_weights_are_accepted():
    w = torch.randn(5, 7)
    assert filter_scores(w, "fpgm").shape == (5,)


def test_grouped_fpgm_uses_one_median_per_group():
    w = torch.randn(12, 2, 3, 3, dtype=torch.float64)
    scores = filter_scores(w, "fpgm", groups=3)
    for g in range(3):
        part = w[4 * g: 4 * g + 4].flatten(1)
        expected = torch.linalg.vector_norm(part - geometric_median(part), dim=1)
        assert torch.allclose(scores[4 * g: 4 * g + 4], expected)
    assert not torch.allclose(scores, filter_scores(w, "fpgm"))  # groups really change the answer
    sums = filter_scores(w, "fpgm-sum", groups=3)
    assert torch.allclose(sums[4:8], distance_sums(w[4:8].flatten(1)))


def test_random_is_seeded_and_reproducible():
    w = torch.randn(32, 3, 1, 1)
    assert torch.equal(filter_scores(w, "random"), filter_scores(w, "random"))
    a = filter_scores(w, "random", generator=torch.Generator().manual_seed(1))
    b = filter_scores(w, "random", generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_bn_uses_gamma_magnitude():
    w = torch.randn(4, 3, 3, 3)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 0.1, 1.0]))
    assert torch.equal(filter_scores(w, "bn", bn=bn), torch.tensor([0.5, 2.0, 0.1, 1.0]))
    assert int(select_filters(filter_scores(w, "bn", bn=bn), 0.25)[0]) == 0  # filter 2 (|gamma| 0.1) goes


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(criterion="l3"), ValueError, "unknown criterion 'l3'"),
    (dict(criterion="bn"), ValueError, "needs bn="),
    (dict(criterion="bn", bn=nn.BatchNorm2d(5)), ValueError, "one per filter"),
    (dict(criterion="fpgm", groups=5), ValueError, "groups=5 does not divide"),
    (dict(criterion="fpgm", groups=0), ValueError, "groups must be a positive int"),
])
def test_bad_score_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        filter_scores(torch.randn(8, 3, 3, 3), **kwargs)


def test_bad_weights():
    with pytest.raises(TypeError, match="weight"):
        filter_scores([[1.0]], "l1")
    with pytest.raises(ValueError, match="NaN"):
        filter_scores(torch.tensor([[1.0, float("nan")]]), "l1")
    with pytest.raises(ValueError, match="shape"):
        filter_scores(torch.randn(8), "l1")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.floats(0, 0.999), st.integers(0, 1000))
def test_select_prunes_floor_rate_n(n, rate, seed):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    keep = select_filters(scores, rate)
    assert len(keep) == n - min(math.floor(rate * n + 1e-9), n - 1)
    assert torch.equal(keep, keep.sort().values) and len(set(keep.tolist())) == len(keep)
    dropped = sorted(set(range(n)) - set(keep.tolist()))
    if dropped:  # the kept ones are the best
        assert scores[dropped].max() <= scores[keep].min()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 16), st.floats(0, 0.999), st.integers(0, 1000))
def test_select_is_balanced_across_groups_and_never_empties_one(groups, per_group, rate, seed):
    scores = torch.rand(groups * per_group, generator=torch.Generator().manual_seed(seed))
    keep = select_filters(scores, rate, groups=groups)
    counts = torch.bincount(keep // per_group, minlength=groups)
    assert (counts == counts[0]).all() and counts[0] >= 1
    assert counts[0] == per_group - min(math.floor(rate * per_group + 1e-9), per_group - 1)


def test_small_rate_prunes_nothing_in_small_groups():
    # ResNeXt's first stage has 4 filters per group: rates below 25 % round to zero there (the paper's plateau)
    scores = torch.rand(128)
    assert len(select_filters(scores, 0.2, groups=32)) == 128
    assert len(select_filters(scores, 0.25, groups=32)) == 96


def test_round_to_makes_the_kept_count_a_multiple():
    scores = torch.rand(64)
    keep = select_filters(scores, 0.3, round_to=8)  # 64 - 19 = 45 -> 48
    assert len(keep) == 48
    assert len(select_filters(torch.rand(10), 0.5, round_to=4)) == 8
    assert len(select_filters(torch.rand(6), 0.5, round_to=4)) == 4
    assert len(select_filters(torch.rand(6), 0.2, round_to=4)) == 6  # 5 -> 8 is impossible: keep all, never more
    keep = select_filters(torch.rand(32), 0.5, groups=4, round_to=8)
    assert len(keep) % 8 == 0


def test_ties_go_to_the_lower_index():
    assert select_filters(torch.zeros(6), 0.5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), True, "0.3"])
def test_rate_outside_range(rate):
    with pytest.raises(ValueError, match="rate"):
        select_filters(torch.rand(8), rate)


def test_bad_selection_arguments():
    with pytest.raises(ValueError, match="empty"):
        select_filters(torch.empty(0), 0.5)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        select_filters(torch.rand(8), 0.5, groups=3)
    with pytest.raises(ValueError, match="round_to"):
        select_filters(torch.rand(8), 0.5, round_to=0)
    with pytest.raises(ValueError, match="NaN"):
        select_filters(torch.tensor([0.1, float("nan")]), 0.5)


def test_every_criterion_gives_one_score_per_filter():
    w = torch.randn(12, 4, 3, 3)
    bn = nn.BatchNorm2d(12)
    for criterion in CRITERIA:
        s = filter_scores(w, criterion, groups=2, bn=bn)
        assert s.shape == (12,) and torch.isfinite(s).all()


def test_norm_conditions_against_a_hand_made_layer():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]]).view(3, 2, 1, 1))  # norms 5, 1, 2
    table = gmlib.criteria.norm_conditions(nn.Sequential(conv, nn.ReLU()))
    norms = torch.tensor([5.0, 1.0, 2.0])
    assert table["layer"].tolist() == ["0"] and table["filters"].tolist() == [3]
    assert table["spread"].iloc[0] == pytest.approx(float(norms.std() / norms.mean()))
    assert table["smallest"].iloc[0] == pytest.approx(1 / norms.mean().item())
    with pytest.raises(ValueError, match="no Conv2d"):
        gmlib.criteria.norm_conditions(nn.Linear(2, 2))


def test_pruned_sets_are_the_complement_of_select_filters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=2))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(8.0))
    sets = gmlib.criteria.pruned_sets(model, 0.5, ["l1", "bn", "fpgm"], norm_after={"0": model[1]})
    assert sets["0"]["bn"] == {0, 1, 2, 3}  # the smallest gammas
    l1 = model[0].weight.abs().flatten(1).sum(1)
    assert sets["0"]["l1"] == set(l1.argsort()[:4].tolist())
    assert "bn" not in sets["2"] and sets["2"]["n"] == 8  # no norm after it: skipped for "bn" only
    assert len([i for i in sets["2"]["fpgm"] if i < 4]) == 2  # grouped: half of each group
    with pytest.raises(ValueError, match="unknown criterion 'norm'"):
        gmlib.criteria.pruned_sets(model, 0.5, ["norm"])
