"""A plan counts, it never cuts: the params and MACs after that `gmlib.plan` counts from each module's rule (kept
shapes, MACs shares) are the ones measured on the network `gmlib.apply` returns, on every network the tests and the
store prune: the zoo's families and segmentation networks (smp, torchvision), the study's models, random networks of
every block kind, a hooked U-Net; and a user's rule that cannot count is measured on a cut copy instead."""
import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import gmlib
from gmlib import zoo
from helpers.spelled_nets import HEADS, KINDS, MAX_BLOCKS, SPELLINGS, SpelledNet
from test_leaks import HookedUnet
from test_surgery import RandomNet, block

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_cut_copy(monkeypatch):
    """A plan that cut a copy to learn its sizes would fail here: the counts must come from the rules."""
    def refuse(*args, **kwargs):
        raise AssertionError("plan cut a copy to count")
    monkeypatch.setattr(gmlib.planning, "copy_as", refuse)


def counted_equals_measured(model, x, rate, policy="coupled", **options):
    """Plan, apply to a copy, and compare the plan's counts with the pruned copy's params and MACs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = gmlib.plan(model, x, rate, policy=policy, **options)
        pruned = copy.deepcopy(model)
        gmlib.apply(pruned, p, verify=False)
    params = sum(t.numel() for t in pruned.parameters())
    macs = gmlib.count(pruned, p.input_size)[1] if p.macs_before is not None else None
    assert (p.params_after, p.macs_after) == (params, macs), \
        f"counted {p.params_after:,} params, {p.macs_after} MACs; measured {params:,}, {macs}"
    assert p.macs_after is None or p.macs_scale is None or gmlib.planning.estimate_macs(p) == p.macs_after
    return p


def input_of(family):
    side = (zoo.FAMILIES.get(family) or zoo.SEGMENTATION.get(family))[2]
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", list(zoo.FAMILIES) + list(zoo.SEGMENTATION))
def test_counted_sizes_are_the_measured_ones_on_the_zoo(family, no_cut_copy):
    model = zoo.create(family, dtype=torch.float32)
    p = counted_equals_measured(model, input_of(family), 0.5)
    cut = any(s.kept < s.size for s in p.sets)
    assert cut == (p.params_after < p.params_before) == (p.macs_after < p.macs_before)
    assert cut or family == "NF-ResNet"  # weight-standardised convs everywhere: nothing to count


@pytest.mark.parametrize("name", ["fpn_resnest14d", "fpn_mobilenet_v2", "resnet50", "resnext50_32x4d",
                                  "resnest50d", "fpn_resnest50"])
@pytest.mark.parametrize("policy", ["or-merge", "coupled"])
def test_counted_sizes_are_the_measured_ones_on_the_study_models(name, policy, no_cut_copy):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    p = counted_equals_measured(gmlib.models.create(name, seed=0).eval(), x, 0.4, policy)
    assert p.params_after < p.params_before and p.macs_after < p.macs_before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=5), conv_head=st.booleans(),
       rate=st.sampled_from([0.2, 0.5, 0.7]), policy=st.sampled_from(["or-merge", "coupled"]),
       keep_head=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_counted_sizes_are_the_measured_ones_on_random_nets(blocks, conv_head, rate, policy, keep_head, seed):
    torch.manual_seed(seed)
    counted_equals_measured(RandomNet(blocks, conv_head).eval(), torch.randn(1, 3, 12, 12), rate, policy,
                            keep_head=keep_head)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, SPELLINGS - 1)), min_size=1,
                       max_size=MAX_BLOCKS), head=st.integers(*HEADS), seed=st.integers(0, 2 ** 16))
def test_counted_sizes_are_the_measured_ones_on_every_spelling(blocks, head, seed):
    torch.manual_seed(seed)
    counted_equals_measured(SpelledNet(blocks, head).eval(), torch.randn(1, 3, 8, 8), 0.5)


def test_counted_sizes_are_the_measured_ones_on_a_hooked_unet_and_without_macs(no_cut_copy):
    model = HookedUnet().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)  # the hooks hold the encoder's outputs, as after any forward
    counted_equals_measured(model, x, 0.5)
    p = counted_equals_measured(model, x, 0.5, count_macs=False)
    assert p.macs_after is None and p.params_after < p.params_before


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class CutOnly(gmlib.rules.PerChannel):
    """A user's rule that cuts its own way and says nothing of what the cut leaves."""

    def shrink(self, m, out=None, in_=None):
        m.gamma = nn.Parameter(m.gamma.detach()[out])


def scaled_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Scale(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()


def test_a_users_rule_counts_or_the_plan_measures_a_cut_copy(monkeypatch):
    x = torch.randn(1, 3, 8, 8)
    try:
        gmlib.register_rule(Scale, gmlib.rules.PerChannel("gamma"))
        with monkeypatch.context() as patch:
            patch.setattr(gmlib.planning, "copy_as", lambda *a, **k: pytest.fail("plan cut a copy"))
            p = counted_equals_measured(scaled_net(), x, 0.5)
        assert p.params_after < p.params_before and p.macs_scale
        gmlib.register_rule(Scale, CutOnly("gamma"))
        p = counted_equals_measured(scaled_net(), x, 0.5)  # measured on a cut copy: still right
        assert p.macs_scale is None
        with pytest.raises(ValueError, match="macs_share"):
            gmlib.planning.estimate_macs(p)
    finally:
        gmlib.rules.unregister_rule(Scale)


def macs_without_groups(self, m, out=None, in_=None):
    rows, cols = (m.out_channels if out is None else len(out)), (m.in_channels if in_ is None else len(in_))
    return rows * cols, m.out_channels * m.in_channels


@pytest.mark.parametrize("wrong", ["MACs: a depthwise conv's groups not followed", "params: a conv's bias forgotten"])
def test_a_wrong_count_is_caught(wrong, monkeypatch):
    """The comparison can fail: a conv rule that counts wrong is caught on a small network with a depthwise conv."""
    right = gmlib.rules.Conv.shapes_after
    if wrong.startswith("MACs"):
        monkeypatch.setattr(gmlib.rules.Conv, "macs_share", macs_without_groups)
    else:
        monkeypatch.setattr(gmlib.rules.Conv, "shapes_after", lambda self, m, out=None, in_=None:
                            {"weight": right(self, m, out, in_)["weight"]})
    torch.manual_seed(0)
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with pytest.raises(AssertionError, match="counted"):
        counted_equals_measured(depthwise, torch.randn(1, 3, 8, 8), 0.5)
