"""Every way PyTorch lets one write an op gives the same pruning: exact, or refused with a reason, never wrong.

Random small CNNs built from the spellings below are pruned and judged by value (gmlib.verify.check_exact: survivors
located by value in a fingerprinted float64 original, not read from the report).
"""
import copy
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import gmlib
from gmlib.surgery import NotExactError
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL

pytestmark = pytest.mark.usefixtures("one_thread")


def _iadd(a, b):
    a = a.clone()
    a += b
    return a


ADD = [operator.add, torch.add, lambda a, b: torch.add(a, other=b), lambda a, b: a.add(b),
       lambda a, b: a.add(other=b), lambda a, b: torch.add(input=a, other=b), lambda a, b: a.clone().add_(b), _iadd,
       lambda a, b: torch.sub(a, other=-b), lambda a, b: a.sub(other=b, alpha=-1)]
MUL = [operator.mul, lambda x, g: torch.mul(x, other=g), lambda x, g: x.mul(other=g), torch.multiply,
       lambda x, g: x.clone().mul_(g), lambda x, g: torch.div(x, other=1 + g), lambda x, g: torch.mul(input=g, other=x)]
CAT = [lambda a, b: torch.cat([a, b], 1), lambda a, b: torch.cat([a, b], dim=1), lambda a, b: torch.cat([a, b], axis=1),
       lambda a, b: torch.concat((a, b), axis=1), lambda a, b: torch.concatenate([a, b], axis=1),
       lambda a, b: torch.cat(tensors=[a, b], dim=1), lambda a, b: torch.cat([a, b], -3)]
REDUCE = [lambda x: x.mean((2, 3), keepdim=True), lambda x: torch.mean(input=x, dim=(2, 3), keepdim=True),
          lambda x: x.mean(dim=[-1, -2], keepdim=True), lambda x: torch.amax(x, dim=(2, 3), keepdim=True),
          lambda x: F.adaptive_avg_pool2d(input=x, output_size=1), lambda x: x.sum(axis=(2, 3), keepdim=True)]
CLAMP = [lambda a, b: torch.clamp(a, min=b), lambda a, b: a.clamp(max=b), lambda a, b: torch.clip(a, b),
         lambda a, b: torch.maximum(a, b), lambda a, b: torch.minimum(input=a, other=b), torch.fmax,
         lambda a, b: torch.where(b > 0, a, b)]
SCALE = [lambda a: a * a.shape[1] ** -0.5, lambda a: a / a.size(1), lambda a: a * (a.size()[1] ** 0.5),
         lambda a: a.mul(len(a[0]))]
FLAT = [lambda x: torch.reshape(input=x, shape=(x.size(0), -1)), lambda x: x.view(x.size(0), -1),
        lambda x: x.reshape(x.shape[0], x.shape[1]), lambda x: x.flatten(1), lambda x: torch.flatten(input=x, start_dim=1),
        lambda x: x.view(len(x), x.size(1)), lambda x: x[:, :, 0, 0]]
LEAK = [torch.sigmoid, F.softplus, lambda a: a + 0.1, lambda a: 1 - a, lambda a: a.clamp(min=0.1),
        lambda a: F.hardsigmoid(input=a)]  # f(0) != 0: a removed channel would not be zero for its reader
KINDS = {"leak": LEAK, "res": ADD, "gate": MUL, "cat": CAT, "squeeze": REDUCE, "pair": CLAMP, "scale": SCALE, "half": [None],
         "act": [None], "check": [None]}


def conv(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())


class Block(nn.Module):
    def __init__(self, kind, spelling, c):
        super().__init__()
        self.kind, self.op = kind, KINDS[kind][spelling % len(KINDS[kind])]
        self.out = c
        if kind in ("res", "act", "check"):
            self.a, self.b = conv(c, c), nn.Conv2d(c, c, 1)
            self.act = nn.ReLU()
        elif kind in ("gate", "squeeze"):
            self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        elif kind in ("cat", "pair"):
            self.a, self.b = conv(c, 6), conv(c, 6, 1)
            self.out = 12 if kind == "cat" else 6
        elif kind in ("scale", "leak"):
            self.a = conv(c, c)
        else:  # half
            self.a = conv(c, 2 * c)

    def forward(self, x):
        k = self.kind
        if k == "res":
            return self.op(x, self.b(self.a(x)))
        if k == "act":
            return self.act(input=self.b(self.a(x)))
        if k == "check":
            if x.shape[-1] % 2 or x.size(-2) < 2:  # a shape check: evaluated on the example input's shape
                raise ValueError("odd input")
            return self.b(self.a(x))
        if k == "gate":
            return self.op(x, torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))))
        if k == "squeeze":
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.op(x)))))
        if k in ("cat", "pair"):
            return self.op(self.a(x), self.b(x))
        if k in ("scale", "leak"):
            return self.op(self.a(x))
        y = self.a(x)
        return y[:, :y.size(1) // 2]


class SpelledNet(nn.Module):
    def __init__(self, blocks, head):
        super().__init__()
        self.stem = conv(3, 8)
        layers, c = [], 8
        for kind, spelling in blocks:
            layers.append(Block(kind, spelling, c))
            c = layers[-1].out
        self.body = nn.Sequential(*layers)
        self.head_kind = head
        self.flat = FLAT[head % len(FLAT)] if head >= 0 else None
        self.head = nn.Linear(c, 3) if head >= 0 else nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x = self.body(self.stem(x))
        if self.flat is None:
            return self.head(x)
        return self.head(self.flat(F.adaptive_avg_pool2d(x, 1)))


def judge(model, x, rate, policy, verify):
    """'exact' (pruned, equal by value), 'refused' (nothing cut, or a clear refusal), 'wrong' (anything else)."""
    original = fingerprint(model.double().eval())
    pruned = copy.deepcopy(original)
    try:
        report = gmlib.prune(pruned, x, rate, policy=policy, verify=verify, count_macs=False)
    except NotExactError:
        return "refused", None
    try:
        error = check_exact(original, pruned, x)
    except Exception as e:  # noqa: BLE001 - a pruned network that breaks is wrong
        return "wrong", f"{type(e).__name__}: {e}"
    if error > EXACT_TOL:
        return "wrong", f"error {error:.1e}"
    return ("exact" if report.params_after < report.params_before else "refused"), None


block = st.tuples(st.sampled_from(sorted(KINDS)), st.integers(0, 9))
X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=4), head=st.integers(-1, 6), seed=st.integers(0, 2 ** 16),
       rate=st.sampled_from([0.3, 0.5]), policy=st.sampled_from(["or-merge", "coupled"]))
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
