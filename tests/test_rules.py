"""The channel rules one by one (gmlib.rules), each judged by value: the pruned float64 network against the original
with the removed channels zeroed, where gmlib.verify finds the survivors in the weights themselves."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmlib
from gmlib.graph import channel_groups
from gmlib.rules import ModuleRule, PerChannel, Producer, register_rule, unregister_rule
from gmlib.verify import _rows, check_exact, fingerprint, masked_reference
from gmlib.zoo import EXACT_TOL

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def prune_exactly(net, rate=0.5, policy="or-merge", x=X):
    """Prune a fingerprinted float64 copy of `net`; assert it is exact by value; return (original, pruned, report)."""
    original = fingerprint(net.double().eval())
    pruned = copy.deepcopy(original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gmlib.prune(pruned, x, rate, policy=policy, count_macs=False)
    assert check_exact(original, pruned, x) < EXACT_TOL
    return original, pruned, report


def conv_bn(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())


# ------------------------------------------------------------------------------------------- a user's own rules

class Scale(nn.Module):
    """y[:, c] = gamma[c] * x[:, c]: traced into, its gamma would be a parameter read outside any rule."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class PointConv(nn.Module):
    """A 1x1 conv written by hand: y = W x, W of shape (out, in) (not an nn.Conv2d)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin))

    def forward(self, x):
        return torch.einsum("oi,nihw->nohw", self.w, x)


class PointConvRule(ModuleRule):
    """Reads its input spaces (columns of w) and opens a space of its outputs (rows of w), scored by w's rows."""

    def analyse(self, ctx, name, m, layout):
        ctx.read(name, "conv_in", layout)
        return (ctx.new_space(m.w.shape[0], producer=Producer("conv", name, self)),)

    def scores(self, graph, producer, criterion, generator):
        w = graph.modules[producer.name].w
        return gmlib.filter_scores(w[:, :, None, None], criterion, generator=generator).float()

    def shrink(self, m, out=None, in_=None):
        w = m.w.detach()
        w = w if out is None else w[out]
        w = w if in_ is None else w[:, in_]
        m.w = nn.Parameter(w.contiguous())

    def mask(self, m, out):
        drop = torch.ones(m.w.shape[0], dtype=torch.bool)
        drop[out] = False
        with torch.no_grad():
            m.w[drop] = 0

    def layer(self, m):
        return "point conv", m.w.shape[1], m.w.shape[0], "follows its input"


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.scale, self.p, self.out = conv_bn(3, 8), Scale(8), PointConv(8, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.p(self.scale(self.a(x)))))


def test_registered_rules_make_a_users_modules_prune_exactly():
    _, pruned, _ = prune_exactly(Custom())
    assert pruned.p.w.shape == (6, 8) and pruned.a[0].out_channels == 8  # without rules: kept, with the reason
    try:
        register_rule(Scale, PerChannel("gamma"))
        register_rule(PointConv, PointConvRule())
        original, pruned, report = prune_exactly(Custom())
        assert pruned.a[0].out_channels == 4 and pruned.scale.gamma.shape == (4,) and pruned.p.w.shape == (3, 4)
        kept = report.kept["scale"]["out"]
        assert torch.equal(pruned.scale.gamma.detach(), original.scale.gamma.detach()[kept])
        row = next(layer for layer in report.layers if layer.name == "p")  # the rule's own row in the report
        assert (row.kind, row.in_before, row.in_after, row.out_before, row.out_after) == ("point conv", 8, 4, 6, 3)
    finally:
        unregister_rule(Scale)
        unregister_rule(PointConv)
    assert gmlib.rules.rule_for(Scale(2)) is None


class TaggedConv(nn.Conv2d):
    """A conv subclass a user registers a rule for that only says how it is analysed."""


class TaggedConvRule(ModuleRule):
    is_conv = True

    def analyse(self, ctx, name, m, layout):
        ctx.read(name, "conv_in", layout)
        return (ctx.new_space(m.out_channels, producer=Producer("conv", name, self)),)


def test_a_users_rule_without_cut_mask_or_row_gets_the_built_in_ones_of_its_type():
    net = nn.Sequential(TaggedConv(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    try:
        register_rule(TaggedConv, TaggedConvRule())
        _, pruned, report = prune_exactly(net)
    finally:
        unregister_rule(TaggedConv)
    assert type(pruned[0]) is TaggedConv and pruned[0].out_channels == 4 == pruned[3].in_channels
    assert next(layer for layer in report.layers if layer.name == "0").kind == "conv"


def test_register_rule_checks_its_arguments():
    with pytest.raises(TypeError, match="subclass of torch.nn.Module"):
        register_rule(int, PerChannel("gamma"))
    with pytest.raises(TypeError, match="ModuleRule"):
        register_rule(Scale, object())
    with pytest.raises(TypeError, match="names of its per-channel"):
        PerChannel()


# ------------------------------------------------------------------------------------------- ConvTranspose2d

class Up(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 8)
        self.up, self.bn = nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.up(self.a(x)))))


def test_conv_transpose_prunes_as_reader_and_as_producer():
    original, pruned, report = prune_exactly(Up())
    assert report.kept["up"].keys() == {"in", "out"} and pruned.up.weight.shape[:2] == (4, 3)
    # by value, with ConvTranspose2d's filters along weight dim 1 (gmlib.verify masks dim 0 only)
    ref = masked_reference(original, pruned)
    cols = _rows("up.weight", original.up.weight.transpose(0, 1), pruned.up.weight.transpose(0, 1))
    drop = torch.ones(6, dtype=torch.bool)
    drop[cols] = False
    with torch.no_grad():
        ref.up.weight[:, drop] = 0
    assert (pruned(X) - ref(X)).abs().max() / ref(X).abs().max() < EXACT_TOL


# ------------------------------------------------------------------------------------------- spellings and gates

class StackSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = conv_bn(3, 8), conv_bn(3, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(torch.stack([self.a(x), self.b(x)]).sum(dim=0))


def test_stack_then_sum_is_an_add():
    _, pruned, report = prune_exactly(StackSum())
    assert pruned.a[0].out_channels == pruned.b[0].out_channels < 8 and not report.warnings


class ExpandGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc1, self.fc2, self.out = conv_bn(3, 8), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.out(y * g.expand_as(y))


def test_an_expand_as_gate_follows_the_channels_it_scales():
    _, pruned, report = prune_exactly(ExpandGate())
    assert pruned.a[0].out_channels == pruned.fc2.out_channels == 4 and not report.warnings
    group = [g for g in channel_groups(ExpandGate(), X.float()) if "a.0" in g.producers][0]
    assert group.producers == ["a.0", "fc2"] and not group.frozen


class ScseOverCat(nn.Module):
    """smp's scSE attention over a decoder concatenation: x * cSE(x) + x * sSE(x), x = cat(a, b)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 6), conv_bn(3, 4)
        self.c1, self.c2, self.s = nn.Conv2d(10, 4, 1), nn.Conv2d(4, 10, 1), nn.Conv2d(10, 1, 1)
        self.out = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        z = torch.cat([self.a(x), self.b(x)], dim=1)
        cse = torch.sigmoid(self.c2(torch.relu(self.c1(F.adaptive_avg_pool2d(z, 1)))))
        return self.out(z * cse + z * torch.sigmoid(self.s(z)))


def test_a_gate_over_a_concatenation_splits_into_the_parts_it_scales():
    original, pruned, report = prune_exactly(ScseOverCat())
    assert pruned.a[0].out_channels == 3 and pruned.b[0].out_channels == 2 and pruned.c2.out_channels == 5
    assert report.coverage > 0.8, report.frozen
    kept = report.kept["c2"]["out"]  # rows of the a-part, then of the b-part (offset 6)
    assert kept == report.kept["a.0"]["out"] + [6 + k for k in report.kept["b.0"]["out"]]


class ResidualOverCat(nn.Module):
    """GhostNet's residual stream: a conv's output added to a concatenation, x + cat(b(x), c(x))."""

    def __init__(self):
        super().__init__()
        self.stem, self.b, self.c, self.out = conv_bn(3, 10), conv_bn(10, 6), conv_bn(10, 4, 1), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.out(x + torch.cat([self.b(x), self.c(x)], dim=1))


@pytest.mark.parametrize("policy", ["or-merge", "coupled"])
def test_a_conv_added_to_a_concatenation_splits_into_the_parts_it_meets(policy):
    original, pruned, report = prune_exactly(ResidualOverCat(), policy=policy)
    kept = report.kept["stem.0"]["out"]  # rows of the b-part (0..5), then of the c-part (6..9)
    assert pruned.stem[0].out_channels == len(kept) < 10 and set(report.frozen) == {"reaches the model output"}
    assert kept == report.kept["b.0"]["out"] + [6 + k for k in report.kept["c.0"]["out"]]
    assert pruned.out.in_channels == len(kept)


# ------------------------------------------------------------------------------------------- per-channel modules

@pytest.mark.parametrize("affine, stats", [(True, False), (False, False), (True, True)])
def test_instance_norm_shrinks_with_its_channels(affine, stats):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, affine=affine, track_running_stats=stats),
                        nn.ReLU(), nn.Conv2d(8, 2, 1))
    _, pruned, report = prune_exactly(net)
    assert pruned[0].out_channels == 4 and pruned[1].num_features == 4 and report.coverage > 0.7


def test_prelu_with_a_slope_per_channel_keeps_the_slopes_of_its_channels():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 2, 1))
    original, pruned, report = prune_exactly(net)
    assert pruned[2].weight.shape == (4,) and pruned[2].num_parameters == 4
    assert torch.equal(pruned[2].weight.detach(), original[2].weight.detach()[report.kept["0"]["out"]])


def test_a_layer_scale_keeps_the_scales_of_its_channels():
    from timm.layers import LayerScale2d

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.a, self.ls, self.out = conv_bn(3, 8), conv_bn(8, 8), LayerScale2d(8, 0.5), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            return self.out(x + self.ls(self.a(x)))

    _, pruned, report = prune_exactly(Block())
    assert pruned.ls.gamma.shape[0] == pruned.stem[0].out_channels < 8


def test_smp_same_padding_conv_is_a_plain_conv():
    smp_eff = pytest.importorskip("segmentation_models_pytorch.encoders._efficientnet")
    same = smp_eff.Conv2dStaticSamePadding(3, 8, 3, stride=2, image_size=16)
    net = nn.Sequential(same, nn.BatchNorm2d(8), nn.ReLU(), smp_eff.Conv2dStaticSamePadding(8, 2, 3, image_size=8))
    _, pruned, report = prune_exactly(net)
    assert pruned[0].out_channels == 4 and report.coverage > 0.7


class BareScale(nn.Module):
    """torchvision ConvNeXt's spelling of a layer scale: a (C, 1, 1) Parameter multiplied in forward (get_attr)."""

    def __init__(self, shape=(8, 1, 1), read_twice=False):
        super().__init__()
        self.stem, self.a, self.out = conv_bn(3, 8), conv_bn(8, 8), nn.Conv2d(8, 2, 1)
        self.layer_scale = nn.Parameter(torch.rand(shape) + 0.5)
        self.read_twice = read_twice

    def forward(self, x):
        x = self.stem(x)
        y = self.a(x) * self.layer_scale if not self.read_twice else self.a(x) + self.layer_scale
        return self.out(x + y)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)])
def test_a_bare_parameter_layer_scale_keeps_the_scales_of_its_channels(shape):
    original, pruned, report = prune_exactly(BareScale(shape))
    d = shape.index(8)
    kept = report.kept["stem.0"]["out"]
    assert pruned.layer_scale.shape[d] == len(kept) < 8 and report.coverage > 0.85, report.frozen
    assert torch.equal(pruned.layer_scale.detach(), original.layer_scale.detach().index_select(d, torch.tensor(kept)))
    assert report.kept["layer_scale"]["out"] == kept
    again = fingerprint(BareScale(shape).double().eval())  # the recorded indices re-apply to a fresh copy
    gmlib.surgery.apply_kept(again, report.kept)
    assert again.layer_scale.shape == pruned.layer_scale.shape


def test_a_bare_parameter_added_rather_than_multiplied_is_kept():
    _, pruned, report = prune_exactly(BareScale(read_twice=True))
    assert pruned.layer_scale.shape == (8, 1, 1) and pruned.stem[0].out_channels == 8


def test_a_wrong_cut_of_a_bare_parameter_is_caught_and_put_back(monkeypatch):
    from gmlib import shrink
    from gmlib.surgery import NotExactError
    real = shrink.shrink_parameter

    def wrong(m, attr, out):  # keeps as many entries as asked, but the last ones rather than the kept ones
        real(m, attr, list(range(getattr(m, attr).shape[0]))[-len(out):])

    monkeypatch.setattr(shrink, "shrink_parameter", wrong)
    net = fingerprint(BareScale().double().eval())
    before = net.layer_scale
    with pytest.raises(NotExactError):
        gmlib.prune(net, X, 0.5, count_macs=False)
    assert net.layer_scale is before and net.stem[0].out_channels == 8
