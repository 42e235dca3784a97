"""gmlib.prune on 31 timm / torchvision CNN families, each checked in float64 against a masked reference that finds
the surviving channels by value (gmlib.verify), not from gmlib's report; plus the channel rules one by one."""
import copy
import math

import pytest
import torch
from torch import nn

import gmlib
from gmlib.verify import check_exact, fingerprint, survivors
from gmlib.zoo import EXACT_TOL, FAMILIES, try_family

pytestmark = pytest.mark.usefixtures("one_thread")

# Families that must prune exactly with params cut >= half the rate; the others must say why they hold back.
PRUNES = ["ResNet", "SE-ResNet", "ECA-ResNet", "ResNeSt", "SKNet", "RegNetX", "RegNetY", "EfficientNet",
          "EfficientNetV2", "MobileNetV2", "MobileNetV3", "MNASNet", "FBNet", "GhostNet", "LCNet", "ReXNet",
          "DenseNet", "DLA", "DPN", "VoVNet", "ConvNeXt", "GENet", "ResNetV2", "MobileNetV3 (tv)",
          "EfficientNet (tv)", "ShuffleNetV2 (tv)", "SqueezeNet (tv)", "GoogLeNet (tv)"]
HOLDS_BACK = {"MixNet": "split", "NF-ResNet": "weight-standardised", "RepVGG": ""}
COUPLED_PRUNES = {"MixNet", "RepVGG"}  # hold back under or-merge only (MixNet: its torch.split mixed convs)


@pytest.mark.parametrize("family", PRUNES + list(HOLDS_BACK))
@pytest.mark.parametrize("rate, policy", [(0.3, "or-merge"), (0.6, "coupled")])
def test_family_prunes_exactly_or_says_why(family, rate, policy):
    r = try_family(family, rate, policy=policy, count_macs=False)
    assert r.error <= EXACT_TOL, f"{family}: {r.reason} (relative error {r.error:.2e})"
    if family in PRUNES or (family in COUPLED_PRUNES and policy == "coupled"):
        assert r.status == "prunes", f"{family} cut only {r.params_cut:.1f}% params at rate {rate}: {r.reason}"
    else:
        assert r.status in ("partial", "refused") and HOLDS_BACK[family] in r.reason, r


def test_zoo_list_spans_the_kinds_asked_for():
    assert len(PRUNES) + len(HOLDS_BACK) >= 25 and set(PRUNES) | set(HOLDS_BACK) <= set(FAMILIES)


# ------------------------------------------------------------------------------------------------ the checker

def small_resnet():
    return fingerprint(gmlib.zoo.create("resnet18"))


def test_checker_passes_an_exact_pruning_and_catches_wrong_ones():
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    original = small_resnet()
    pruned = copy.deepcopy(original)
    gmlib.prune(pruned, x, 0.5)
    assert check_exact(original, pruned, x) < EXACT_TOL
    assert set(survivors(original, pruned)["layer1.0.conv1.weight"].tolist()) < set(range(64))

    wrong = copy.deepcopy(pruned)  # a consumer that reads the kept channels in the wrong order
    with torch.no_grad():
        wrong.layer1[0].conv2.weight.copy_(wrong.layer1[0].conv2.weight.flip(1))
    assert check_exact(original, wrong, x) > 1e-3

    stale = copy.deepcopy(pruned)  # surviving rows copied right, but a norm forgot to follow
    stale.layer1[0].bn1 = copy.deepcopy(original.layer1[0].bn1)
    with pytest.raises(RuntimeError):
        check_exact(original, stale, x)


def test_checker_catches_a_pruning_that_is_not_the_masked_network():
    """A consumer that drops a different channel than its producer computes another function."""
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    original = fingerprint(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1)).double())

    def cut(out, in_):
        pruned = copy.deepcopy(original)
        gmlib.surgery.shrink_module(pruned[0], out=out)
        gmlib.surgery.shrink_module(pruned[2], in_=in_)
        return pruned

    assert check_exact(original, cut([0, 1, 2, 4], [0, 1, 2, 4]), x) < EXACT_TOL
    assert check_exact(original, cut([0, 1, 2, 4], [0, 1, 2, 3]), x) > 1e-3
    broken = cut([0, 1, 2, 4], [0, 1, 2, 4])
    with torch.no_grad():
        broken[0].bias[0] += 1.0
    with pytest.raises(ValueError, match="changed, not just pruned"):
        check_exact(original, broken, x)


def test_fingerprint_makes_entries_unique_and_refuses_repeats():
    m = fingerprint(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).double())
    assert m[1].weight.unique().numel() == 4 and m[0].weight.unique().numel() == 12
    twin = nn.Sequential(nn.Conv2d(3, 4, 1)).double()
    with torch.no_grad():
        twin[0].weight.zero_()
    pruned = copy.deepcopy(twin)
    gmlib.surgery.shrink_module(pruned[0], out=[0, 1])
    with pytest.raises(ValueError, match="repeated entries"):
        survivors(twin, pruned)


# ------------------------------------------------------------------------------------------------ channel rules

class SE(nn.Module):
    """conv -> BN -> ReLU -> squeeze-excite -> conv: the excite conv scales the channels it multiplies."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.reduce, self.expand, self.gate = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1), nn.Sigmoid()
        self.conv2 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.act(self.bn(self.conv1(x)))
        s = self.gate(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.conv2(x * s)


def exact(model, x, rate, **kw):
    original = fingerprint(model.double().eval())
    pruned = copy.deepcopy(original)
    report = gmlib.prune(pruned, x.double(), rate, **kw)
    assert check_exact(original, pruned, x.double()) < EXACT_TOL
    return pruned, report, original


def test_squeeze_excite_expand_conv_follows_and_reduce_conv_prunes_on_its_own():
    x = torch.randn(1, 3, 8, 8)
    pruned, report, original = exact(SE(), x, 0.5)
    assert pruned.conv1.out_channels == pruned.expand.out_channels == pruned.conv2.in_channels == 8
    assert pruned.reduce.out_channels == pruned.expand.in_channels == 4
    assert report.coverage == pytest.approx((16 + 8 + 16) / (16 + 8 + 16 + 4))  # conv2 reaches the output
    # the expand conv does not vote (or-merge would keep more than 8): conv1's own choice is what survives
    from gmlib.criteria import filter_scores, select_filters
    own = select_filters(filter_scores(original.conv1.weight, "fpgm", bn=original.bn), 0.5)
    assert survivors(original, pruned)["conv1.weight"].tolist() == own.tolist()


def test_norm_act_layers_prune_and_a_non_elementwise_act_is_kept():
    from timm.layers import BatchNormAct2d
    x = torch.randn(1, 3, 8, 8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.SiLU), nn.Conv2d(8, 2, 1))
    pruned, _, _ = exact(net, x, 0.5)
    assert pruned[1].num_features == 4 and not gmlib.prune(copy.deepcopy(net), x.double(), 0.5).warnings
    odd = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=lambda **k: nn.Softmax(dim=1)),
                        nn.Conv2d(8, 2, 1))
    pruned, report, _ = exact(odd, x, 0.5)
    assert pruned[0].out_channels == 8 and "norm-act layer with a Softmax act" in report.frozen_reason


def test_frozen_batch_norm_shrinks_with_its_channels():
    from torchvision.ops import FrozenBatchNorm2d
    x = torch.randn(1, 3, 8, 8)
    pruned, _, _ = exact(nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)), x, 0.5)
    assert pruned[1].weight.shape == pruned[1].running_var.shape == (4,)


def test_weight_standardised_conv_keeps_what_it_touches():
    from timm.layers import StdConv2d
    x = torch.randn(1, 3, 8, 8)
    pruned, report, _ = exact(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), StdConv2d(8, 6, 1), nn.ReLU(),
                                         nn.Conv2d(6, 2, 1)), x, 0.5)
    assert pruned[0].out_channels == 8 and pruned[2].out_channels == 6
    assert "weight-standardised" in report.frozen_reason


class Sliced(nn.Module):
    def __init__(self, stop):
        super().__init__()
        self.a, self.b, self.stop = nn.Conv2d(3, 8, 3), nn.Conv2d(stop, 2, 1), stop

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[:, :self.stop])


def test_a_channel_slice_with_a_constant_bound_is_kept_a_full_one_passes():
    x = torch.randn(1, 3, 8, 8)
    pruned, full, _ = exact(Sliced(8), x, 0.5)
    assert pruned.a.out_channels == 4 and full.coverage == pytest.approx(0.8)
    pruned, part, _ = exact(Sliced(6), x, 0.5)
    assert pruned.a.out_channels == 8 and "slice of the channels" in part.frozen_reason


def test_depthwise_conv_carries_the_space_and_linear_subclass_reads_it():
    from timm.layers import Linear
    x = torch.randn(1, 3, 8, 8)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), Linear(8, 2))
    pruned, report, _ = exact(net, x, 0.5)
    assert pruned[2].groups == pruned[2].out_channels == pruned[6].in_features == 4 and report.coverage == 1.0


# ------------------------------------------------------------------------------------------------ the tables

def test_unused_params_counts_the_stages_a_forward_never_reads():
    class Head(nn.Module):  # reads the stem; `late` is dead weight, `tied` is read functionally by forward
        def __init__(self):
            super().__init__()
            self.stem, self.late, self.tied = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return torch.nn.functional.conv2d(self.stem(x), self.tied.weight, self.tied.bias)
    model = Head()
    assert gmlib.zoo.unused_params(model, torch.randn(1, 3, 8, 8)) == sum(p.numel() for p in model.late.parameters())
    assert all(p.grad is None for p in model.parameters())  # counted on a copy


def test_run_cut_counts_each_network_s_own_dead_weight():
    class Net(nn.Module):  # `dead` runs but its output is thrown away, as smp's unused encoder stages are
        def __init__(self, live, dead):
            super().__init__()
            self.live, self.dead, self.head = nn.Conv2d(3, live, 1), nn.Conv2d(3, dead, 1), nn.Conv2d(live, 2, 1)

        def forward(self, x):
            self.dead(x)
            return self.head(self.live(x))
    x = torch.randn(1, 3, 4, 4)
    assert gmlib.zoo.run_cut(Net(8, 64), Net(8, 16), x) == 0.0  # shrinking dead weight is no cut
    live_and_head = (16 + 10, 32 + 18)  # weights and biases of `live` and `head` at 4 and at 8 channels
    assert gmlib.zoo.run_cut(Net(8, 64), Net(4, 8), x) == pytest.approx(100 * (1 - live_and_head[0] / live_and_head[1]))

    class Broken(Net):
        def forward(self, x):
            raise RuntimeError("does not run")
    assert math.isnan(gmlib.zoo.run_cut(Net(8, 8), Broken(4, 8), x))


def test_stored_zoo_table_is_computed_once_and_times_out_as_a_timeout(tmp_path):
    pytest.importorskip("torch_pruning")
    store = gmlib.Store(tmp_path)
    table = gmlib.zoo.stored_zoo_table(store, ["ResNet"], 0.3, ["coupled"], torch_pruning=True, timeout_s=1e-3)
    assert list(table.policy) == ["coupled", "torch-pruning"]
    assert list(table.status) == ["prunes", "timeout"] and "gave up after" in table.reason.iloc[1]
    assert table.params_unused.iloc[0] == 0 and table.params_cut_run.iloc[0] == table.params_cut.iloc[0]
    assert table.attrs["environment"]["torch"] and table.attrs["versions"]["torch-pruning"] != "not installed"
    store.readonly = True  # read back, not recomputed
    again = gmlib.zoo.stored_zoo_table(store, ["ResNet"], 0.3, ["coupled"], torch_pruning=True, timeout_s=1e-3)
    assert again.equals(table)
    with pytest.raises(ValueError, match="unknown families"):
        gmlib.zoo.zoo_table(["ResNett"], 0.3)
