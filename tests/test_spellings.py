"""Every way PyTorch lets one write an op gives the same pruning: exact, or refused with a reason, never wrong.

Random small CNNs built from the spellings of tests/helpers/spelled_nets.py are pruned and judged by value
(gmlib.verify.check_exact: survivors located by value in a fingerprinted float64 original, not read from the report).
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import gmlib
from helpers.spelled_nets import FLAT, HEADS, KINDS, MAX_BLOCKS, POLICIES, RATES, SPELLINGS, SpelledNet, judge

pytestmark = pytest.mark.usefixtures("one_thread")


block = st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, SPELLINGS - 1))
X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=MAX_BLOCKS), head=st.integers(*HEADS),
       seed=st.integers(0, 2 ** 16), rate=st.sampled_from(RATES), policy=st.sampled_from(POLICIES))
def test_random_spelled_nets_are_exact_by_the_rules_alone(blocks, head, seed, rate, policy):
    torch.manual_seed(seed)
    verdict, why = judge(SpelledNet(blocks, head), X, rate, policy, verify=False)
    assert verdict != "wrong", f"{blocks}, head {head}: {why}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_spelling_prunes_the_same(kind):
    """Each spelling of one op, in the same network: the same kept channels (and exact) as its first spelling."""
    kept = []
    for s in range(len(KINDS[kind])):
        torch.manual_seed(0)
        model = SpelledNet([(kind, s), ("res", 0)], -1)
        verdict, why = judge(model, X, 0.5, "coupled", verify=True)
        assert verdict != "wrong", f"{kind} spelling {s}: {why}"
        torch.manual_seed(0)
        model = SpelledNet([(kind, s), ("res", 0)], -1).double()
        kept.append(gmlib.prune(model, X, 0.5, policy="coupled", count_macs=False).kept)
    if kind not in ("pair", "scale", "leak"):  # where(b > 0, ...), len(a[0]) are conservative spellings: they keep more
        assert all(k == kept[0] for k in kept), kind


@pytest.mark.parametrize("head", range(len(FLAT)))
def test_every_flatten_spelling_reaches_the_linear_head(head):
    torch.manual_seed(0)
    model = SpelledNet([("res", 0)], head).double()
    report = gmlib.prune(model, X, 0.5, policy="coupled", count_macs=False)
    assert model.head.in_features == 4, (head, report.frozen_reason)


def test_shape_derived_constants_keep_their_channels_with_the_reason():
    torch.manual_seed(0)
    model = SpelledNet([("scale", 0)], -1).double()
    report = gmlib.prune(model, X, 0.5, count_macs=False)
    assert model.body[0].a[0].out_channels == 8 and "channel count read from the shape" in report.frozen_reason
    model = SpelledNet([("half", 0)], -1).double()
    report = gmlib.prune(model, X, 0.5, count_macs=False)
    assert model.body[0].a[0].out_channels == 16 and any(why in r for r in report.frozen for why in ("slice of the channels", "channel count read"))


class Between(nn.Module):
    """conv -> map -> conv: the map sits between the removed channels and the conv that reads them."""

    def __init__(self, f):
        super().__init__()
        self.a, self.b, self.out, self.f = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 2, 1), f

    def forward(self, x):
        return self.out(self.b(self.f(self.a(x))))


NONZERO_AT_ZERO = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "softplus": F.softplus,
                   "Sigmoid": nn.Sigmoid(), "x + 0.1": lambda y: y + 0.1, "1 - x": lambda y: 1 - y,
                   "x.add(tensor)": lambda y: y.add(torch.ones(1, dtype=y.dtype)), "clamp(min=0.1)":
                   lambda y: y.clamp(min=0.1), "ConstantPad2d(1, 0.5)": nn.ConstantPad2d(1, 0.5),
                   "BatchNorm2d(affine=False)": nn.BatchNorm2d(8, affine=False)}


@pytest.mark.parametrize("name", sorted(NONZERO_AT_ZERO))
def test_a_map_with_nonzero_f0_before_a_conv_keeps_those_channels(name):
    torch.manual_seed(0)
    verdict, why = judge(Between(NONZERO_AT_ZERO[name]), X, 0.5, "or-merge", verify=False)
    assert verdict == "exact", why  # the rest still prunes
    model = Between(NONZERO_AT_ZERO[name]).double()
    report = gmlib.prune(model, X, 0.5, count_macs=False)
    assert model.a.out_channels == 8 and "f(0) != 0" in report.frozen_reason
    model = Between(torch.relu).double()  # f(0) = 0: pruned
    gmlib.prune(model, X, 0.5, count_macs=False)
    assert model.a.out_channels == 4


def test_a_module_whose_parameters_are_read_outside_its_call_keeps_its_channels():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = torch.relu(self.b(torch.relu(self.a(x))))
            return self.out(F.conv2d(y, self.b.weight, self.b.bias, padding=1))  # b's weight used twice

    torch.manual_seed(0)
    verdict, why = judge(Tied(), X, 0.5, "or-merge", verify=False)
    assert verdict != "wrong", why
    model = Tied().double()
    report = gmlib.prune(model, X, 0.5, count_macs=False)
    assert model.b.in_channels == model.b.out_channels == 8 and "read outside its call" in report.frozen_reason
