"""Layer surgery: the physically pruned network computes exactly what the masked original computes."""
import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import gmlib
from gmlib import models
from gmlib.graph import channel_groups
from gmlib.surgery import mask_pruned


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ helpers

@torch.no_grad()
def randomize_norms(model, seed=0):
    """timm zero-inits the last BN of each block; random affine/statistics make every channel matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def prune_and_compare(model, x, rate, **kw):
    """Prune `model` in place; return (report, pruned output, masked-original output)."""
    model.eval()
    reference = copy.deepcopy(model)
    report = gmlib.prune(model, x, rate, **kw)
    mask_pruned(reference, report)
    with torch.no_grad():
        return report, model(x), reference(x)


def assert_equivalent(out, ref):
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0
    assert (out - ref).abs().max().item() <= 1e-4 * scale


def assert_report_matches_model(report, model):
    modules = dict(model.named_modules())
    for row in report.layers:
        m = modules[row.name]
        if isinstance(m, nn.Conv2d):
            assert (m.in_channels, m.out_channels) == (row.in_after, row.out_after), row.name
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups), row.name
        else:
            assert m.in_features == row.in_after
    assert report.params_after == sum(p.numel() for p in model.parameters())


NETS = {}


def big(name):
    """A seeded paper network with randomized norms (built once per test session, copied per test)."""
    if name not in NETS:
        NETS[name] = randomize_norms(models.create(name, seed=0)).eval()
    return copy.deepcopy(NETS[name])


X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ paper networks

@pytest.mark.parametrize("name,rate,policy", [
    ("resnet50", 0.5, "or-merge"), ("resnet50", 0.3, "coupled"),
    ("resnext50_32x4d", 0.3, "or-merge"), ("resnext50_32x4d", 0.5, "coupled"),
    ("resnest50d", 0.5, "or-merge"), ("resnest50d", 0.3, "coupled"),
    ("fpn_resnest50", 0.3, "or-merge"), ("fpn_resnest50", 0.5, "coupled"),
    ("fpn_resnest14d", 0.4, "or-merge"),
])
def test_pruned_equals_masked(name, rate, policy):
    model = big(name)
    report, out, ref = prune_and_compare(model, X64, rate, policy=policy)
    assert_equivalent(out, ref)
    assert_report_matches_model(report, model)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert not report.warnings
    for row in report.layers:  # never more than asked (except nothing at all), group rounding only keeps more
        assert row.sparsity <= rate + 1e-9
    # the heads keep their outputs
    head = model.head if name.startswith("fpn") else model.fc
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 4


def test_random_criterion_draws_with_the_seed():
    kept = {}
    for seed in (0, 1, 0):
        model = models.create("resnet50", seed=0)
        kept.setdefault(seed, []).append(gmlib.prune(model, X64[:1], 0.3, criterion="random", seed=seed,
                                                     count_macs=False).kept)
    assert kept[0][0] == kept[0][1] and kept[0][0] != kept[1][0]
    with pytest.raises(ValueError, match="seed"):
        gmlib.prune(models.create("resnet50"), X64[:1], 0.3, criterion="random", seed=-1)


def test_equivalence_check_can_fail():
    # mask one channel that was kept: the masked reference must then differ from the pruned network
    model = big("resnet50")
    reference = copy.deepcopy(model)
    report = gmlib.prune(model, X64, 0.4)
    report.kept["layer1.0.conv1"]["out"] = report.kept["layer1.0.conv1"]["out"][1:]
    report.kept["layer1.0.bn1"]["out"] = report.kept["layer1.0.bn1"]["out"][1:]
    mask_pruned(reference, report)
    with torch.no_grad():
        diff = (model(X64) - reference(X64)).abs().max().item()
    assert diff > 1e-3 * reference(X64).abs().max().item()


def test_rate_zero_is_identity():
    model = big("resnest50d")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(X64)
    report = gmlib.prune(model, X64, 0.0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(X64), expected)
    assert report.kept == {} and report.params_after == report.params_before
    assert all(row.sparsity == 0 for row in report.layers)


@pytest.mark.parametrize("name", ["resnext50_32x4d", "fpn_resnest50"])
def test_pruned_network_trains(name):
    model = big(name)
    gmlib.prune(model, X64, 0.4)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = model(X64)
    assert out.shape == ((2, 4) if name != "fpn_resnest50" else (2, 4, 64, 64))
    loss = out.square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert torch.isfinite(model(X64)).all()


def test_resnext_groups_stay_valid_and_small_rates_plateau():
    model = big("resnext50_32x4d")
    gmlib.prune(model, X64, 0.2)  # 128 channels / 32 groups = 4 per group: floor(0.8) = 0 pruned per group
    assert model.layer1[0].conv2.out_channels == 128 and model.layer1[0].conv1.out_channels == 128
    assert model.layer3[0].conv2.out_channels == 512 - 3 * 32  # 16 per group: floor(3.2) = 3 pruned per group
    model = big("resnext50_32x4d")
    gmlib.prune(model, X64, 0.3)
    for block in (model.layer1[0], model.layer4[2]):
        conv2 = block.conv2
        assert conv2.groups == 32 and conv2.out_channels % 32 == 0 and conv2.in_channels % 32 == 0
        assert block.conv1.out_channels == conv2.in_channels


def test_groupnorm_loses_whole_groups():
    model = big("fpn_resnest50")
    gmlib.prune(model, X64, 0.5, policy="coupled")
    for m in model.decoder.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels // m.num_groups == 4 and m.num_groups < 32
    # the pyramid levels are coupled by the top-down adds: every lateral conv keeps the same width
    widths = {model.decoder.p5.out_channels} | {getattr(model.decoder, p).skip_conv.out_channels
                                                for p in ("p4", "p3", "p2")}
    assert len(widths) == 1 and widths.pop() < 256


def test_split_attention_stays_consistent():
    model = big("resnest50d")
    gmlib.prune(model, X64, 0.4)
    sa = model.layer2[1].conv2
    c = sa.conv.out_channels // sa.radix
    assert sa.conv.out_channels == sa.bn0.num_features == sa.fc2.out_channels
    assert sa.fc1.in_channels == c == model.layer2[1].conv3.in_channels < 128  # timm's bn2 is inside SplitAttn
    assert sa.fc1.out_channels == sa.bn1.num_features == sa.fc2.in_channels < 64


def test_or_merge_keeps_union_coupled_cuts_more():
    merged, coupled = big("resnet50"), big("resnet50")
    r1 = gmlib.prune(merged, X64, 0.4, policy="or-merge")
    r2 = gmlib.prune(coupled, X64, 0.4, policy="coupled")
    assert r2.params_after < r1.params_after and r2.macs_after < r1.macs_after
    # the residual stream of stage 4: every member keeps the same channels, coupled cuts exactly 40%
    assert coupled.layer4[0].conv3.out_channels == coupled.layer4[2].conv3.out_channels == 2048 - 819
    assert merged.layer4[0].conv3.out_channels > coupled.layer4[0].conv3.out_channels
    # or-merge: a channel survives if any member keeps it, so the set keeps at least what one member wanted
    kept = set(r1.kept["layer4.0.conv3"]["out"])
    assert len(kept) >= 2048 - 819


def test_ignored_layers_and_round_to():
    model = big("resnet50")
    report = gmlib.prune(model, X64, 0.4, ignored_layers=["layer1.0.conv1", model.layer2[0].conv2], round_to=8)
    assert model.layer1[0].conv1.out_channels == 64 and model.layer2[0].conv2.out_channels == 128
    assert model.layer1[0].conv2.out_channels < 64
    rows = {r.name: r for r in report.layers}
    assert rows["layer1.0.conv1"].note and rows["layer1.0.conv1"].rate == 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels > 8:
            assert m.out_channels % 8 == 0


def test_bn_criterion_and_report_table():
    model = big("resnet50")
    report = gmlib.prune(model, X64, 0.4, criterion="bn")
    frame = report.to_frame()
    assert len(frame) == 54 and set(frame.columns) >= {"name", "rate", "out_before", "out_after", "sparsity"}
    text = str(report)
    assert "layer4.2.conv3" in text and "params" in text and "MACs" in text
    assert 40 < report.macs_reduction < 60 and 40 < report.params_reduction < 60


def test_bn_criterion_reaches_split_attention_and_names_a_conv_without_norm():
    # ResNeSt's attention fc1 is followed by bn1: its |gamma| scores the hidden channels
    report, out, ref = prune_and_compare(big("resnest50d"), X64, 0.3, criterion="bn")
    assert_equivalent(out, ref)
    assert len(report.kept["layer1.0.conv2.fc1"]["out"]) < 32
    with pytest.raises(ValueError, match="decoder.p5.*'bn'"):  # FPN lateral convs have no norm after them
        gmlib.prune(big("fpn_resnest50"), X64, 0.3, criterion="bn")


def test_count_macs_off_skips_only_the_macs():
    full = gmlib.prune(big("resnet50"), X64[:1], 0.3)
    lean = gmlib.prune(big("resnet50"), X64[:1], 0.3, count_macs=False)
    assert lean.macs_before is None and lean.macs_after is None and "MACs" not in lean.summary()
    assert (lean.params_before, lean.params_after) == (full.params_before, full.params_after)
    assert lean.kept == full.kept
    with pytest.raises(TypeError, match="count_macs"):
        gmlib.prune(models.create("resnet50"), X64[:1], 0.3, count_macs="no")


def test_channel_groups_lists_coupling_sets():
    groups = channel_groups(models.create("resnet50"), X64[:1])
    assert len(groups) == 53 - 20 + 4  # 16 conv3 + 4 downsample convs fall into 4 residual sets
    stage1 = [g for g in groups if "layer1.0.conv3" in g.producers][0]
    assert set(stage1.producers) == {"layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3", "layer1.0.downsample.0"}
    assert "layer2.0.conv1" in stage1.consumers and stage1.size == 256
    resnext = channel_groups(models.create("resnext50_32x4d"), X64[:1])
    assert [g for g in resnext if g.producers == ["layer1.0.conv1"]][0].groups == 32
    fpn = channel_groups(models.create("fpn_resnest50"), X64[:1])
    pyramid = [g for g in fpn if "decoder.p5" in g.producers][0]
    assert set(pyramid.producers) == {"decoder.p5", "decoder.p4.skip_conv", "decoder.p3.skip_conv",
                                      "decoder.p2.skip_conv"}
    assert [g for g in fpn if "head" in g.producers][0].frozen == "reaches the model output"


# ------------------------------------------------------------------------------------------------ small random nets

class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, groups=1, k=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=True)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ConvGNReLU(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c, mid, project):
        super().__init__()
        self.a, self.b = ConvBNReLU(c, mid), nn.Conv2d(mid, c, 1)
        self.project = nn.Conv2d(c, c, 1) if project else nn.Identity()

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + self.project(x))


class Concat(nn.Module):
    def __init__(self, cin, ca, cb):
        super().__init__()
        self.a, self.b = ConvBNReLU(cin, ca), ConvBNReLU(cin, cb, k=1)

    def forward(self, x):
        return torch.cat([self.a(x), nn.functional.max_pool2d(self.b(x), 3, 1, 1)], dim=1)


class RandomNet(nn.Module):
    """Stem, then a random list of blocks (plain, grouped, depthwise, GroupNorm, residual, concat), then a head."""

    def __init__(self, blocks, conv_head):
        super().__init__()
        c = 8
        layers = [ConvBNReLU(3, c)]
        for kind, w, g in blocks:
            if kind == "plain":
                layers.append(ConvBNReLU(c, w))
                c = w
            elif kind == "grouped":
                layers.append(ConvBNReLU(c, w * g, groups=g) if c % g == 0 else ConvBNReLU(c, w))
                c = layers[-1].conv.out_channels
            elif kind == "depthwise":
                layers.append(ConvBNReLU(c, c, groups=c))
            elif kind == "groupnorm":
                layers.append(ConvGNReLU(c, 4 * w, w))
                c = 4 * w
            elif kind == "residual":
                layers.append(Residual(c, w, project=g > 1))
            else:
                layers.append(Concat(c, w, 8))
                c = w + 8
        self.body = nn.Sequential(*layers)
        self.conv_head = conv_head
        self.head = nn.Conv2d(c, 3, 1) if conv_head else nn.Linear(c, 3)

    def forward(self, x):
        x = self.body(x)
        if self.conv_head:
            return nn.functional.interpolate(self.head(x), scale_factor=2.0, mode="nearest")
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


block = st.tuples(st.sampled_from(["plain", "grouped", "depthwise", "groupnorm", "residual", "concat"]),
                  st.sampled_from([4, 6, 8, 12, 16]), st.sampled_from([1, 2, 4]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=5), conv_head=st.booleans(),
       rate=st.sampled_from([0.2, 0.35, 0.5, 0.7]), policy=st.sampled_from(["or-merge", "coupled"]),
       criterion=st.sampled_from(["fpgm", "fpgm-sum", "l1", "random"]), seed=st.integers(0, 2 ** 16))
def test_random_nets_pruned_equals_masked(blocks, conv_head, rate, policy, criterion, seed):
    torch.manual_seed(seed)
    model = randomize_norms(RandomNet(blocks, conv_head), seed)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        original = model.eval()(x)
    report, out, ref = prune_and_compare(model, x, rate, policy=policy, criterion=criterion)
    assert_equivalent(out, ref)
    assert out.shape == original.shape
    assert_report_matches_model(report, model)
    assert report.params_after <= report.params_before
    if rate >= 0.5:  # the stem (8 channels, at most 4 groups of 2) always loses a filter: the check is not vacuous
        assert report.params_after < report.params_before
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels == 4 * m.num_groups


def test_residual_over_concats_with_different_boundaries_is_left_unpruned_with_a_warning():
    # a residual add whose two sides are concatenations with different boundaries: not a whole-space coupling
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)
            self.out = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), self.b(x)], 1) + torch.cat([self.c(x), self.d(x)], 1))

    model = Net()
    report, out, ref = prune_and_compare(model, torch.randn(1, 3, 8, 8), 0.5)
    assert_equivalent(out, ref)
    assert model.c.out_channels == 8 and model.a.out_channels == 4 and model.b.out_channels == 8
    assert "misaligned" in " ".join(r.note for r in report.layers)


def test_a_conv_added_to_a_concat_splits_along_its_boundaries():
    # conv rows are independent filters: c's 12 rows are a 4-row and an 8-row piece, each coupled with its part
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 12, 1)
            self.out = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))

    model = Net()
    report, out, ref = prune_and_compare(model, torch.randn(1, 3, 8, 8), 0.5, policy="coupled")
    assert_equivalent(out, ref)
    assert (model.a.out_channels, model.b.out_channels, model.c.out_channels) == (2, 4, 6)
    assert report.kept["c"]["out"] == report.kept["a"]["out"] + [4 + k for k in report.kept["b"]["out"]]


def test_unsupported_op_keeps_its_channels_and_warns():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(self.c2(torch.softmax(self.c1(self.c0(x)), dim=1)))

    model = Net()
    report, out, ref = prune_and_compare(model, torch.randn(1, 3, 12, 12), 0.5)
    assert_equivalent(out, ref)
    assert model.c1.out_channels == 8 and model.c0.out_channels == 4 and model.c2.out_channels == 4
    assert any("softmax" in w for w in report.warnings)


# ------------------------------------------------------------------------------------------------ bad input

def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 2, 1))


X = torch.randn(1, 3, 10, 10)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_rate_out_of_range(rate):
    with pytest.raises(ValueError, match="rate"):
        gmlib.prune(small(), X, rate)


@pytest.mark.parametrize("rate", ["0.3", None, True])
def test_rate_not_a_number(rate):
    with pytest.raises(TypeError, match="rate"):
        gmlib.prune(small(), X, rate)


def test_bad_example_inputs():
    with pytest.raises(ValueError, match="example_inputs"):
        gmlib.prune(small(), torch.randn(1, 5, 10, 10), 0.3)
    with pytest.raises(TypeError, match="example_inputs"):
        gmlib.prune(small(), "an image", 0.3)


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_submodule_becomes_opaque_and_its_channels_are_kept():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1), DataDependent(), nn.Conv2d(4, 2, 1))
    report = gmlib.prune(model, X, 0.5)
    assert model[0].out_channels == 4 and model[2].out_channels == 4  # the rest still prunes
    assert any("untraceable module '3' (DataDependent)" in w for w in report.warnings)
    assert "feeds untraceable module (DataDependent)" in report.frozen


def test_untraceable_root_names_the_module():
    class Root(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(TypeError, match=r"module \(root\) \(Root\)"):
        gmlib.prune(Root(), X, 0.3)


def test_unknown_ignored_layer_policy_criterion_round_to():
    with pytest.raises(ValueError, match="'nope'"):
        gmlib.prune(small(), X, 0.3, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="not a sub-module"):
        gmlib.prune(small(), X, 0.3, ignored_layers=[nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="policy"):
        gmlib.prune(small(), X, 0.3, policy="and-merge")
    with pytest.raises(ValueError, match="criterion"):
        gmlib.prune(small(), X, 0.3, criterion="taylor")
    with pytest.raises(ValueError, match="round_to"):
        gmlib.prune(small(), X, 0.3, round_to=0)
    with pytest.raises(TypeError, match="model"):
        gmlib.prune("resnet50", X, 0.3)


def test_rate_that_would_empty_a_layer(monkeypatch):
    # select_filters never empties a layer for rate < 1; prune still refuses an empty selection, naming the layer
    monkeypatch.setattr(gmlib.planning, "select_filters", lambda s, *a, **k: torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="every channel of 0"):
        gmlib.prune(small(), X, 0.3)


def test_bn_criterion_without_a_norm_names_the_conv():
    with pytest.raises(ValueError, match="'3'"):
        gmlib.prune(small(), X, 0.3, criterion="bn")


def test_keeps_mode_statistics_dtype_and_requires_grad():
    model = small().double().train()
    model[0].weight.requires_grad_(False)
    stats = model[1].running_mean.clone()
    report = gmlib.prune(model, X.double(), 0.5)
    assert model.training and torch.equal(model[1].running_mean, stats[report.kept["1"]["out"]])
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model[0].out_channels == model[1].num_features == model[3].in_channels == 4
    assert model(X.double()).shape == (1, 2, 6, 6)
