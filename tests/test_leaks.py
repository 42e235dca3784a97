"""Nothing of a prune stays in the user's model: after plan, apply, prune or allocate, whether it succeeds, refuses or
crashes, the model deep-copies, runs, holds what its hooks and forward had stored, and computes what it did.

The networks are written here: a U-Net whose skips come from forward hooks that store each encoder block's output
(as fastai's DynamicUnet does, one hook on a ReLU that fx traces as one node), a forward that keeps its last input
on a module and a hook writing into a closure's dict, and a CoordConv U-Net (coordinate maps shifted by a constant,
concatenated to the channels being pruned).
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmlib
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


class Hook:
    """fastai's Hook, in short: keeps the output of the module it is registered on."""

    def __init__(self, m):
        self.stored = None
        self.handle = m.register_forward_hook(self.hook_fn)

    def hook_fn(self, m, args, output):
        self.stored = output


def cbr(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UpBlock(nn.Module):
    """Upsample, then concatenate the hooked encoder output (normalised), as fastai's UnetBlock."""

    def __init__(self, up_in, x_in, out, hook):
        super().__init__()
        self.hook = hook
        self.up = nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(up_in, up_in // 2, 1))
        self.bn = nn.BatchNorm2d(x_in)
        self.conv = nn.Sequential(cbr(up_in // 2 + x_in, out), cbr(out, out))

    def forward(self, up_in):
        s = self.hook.stored
        up = self.up(up_in)
        if s.shape[-2:] != up.shape[-2:]:
            up = F.interpolate(up, s.shape[-2:], mode="nearest")
        return self.conv(torch.relu(torch.cat([up, self.bn(s)], dim=1)))


class HookedUnet(nn.Module):
    """Skips from hooks on the encoder: a ReLU (one fx node) and two blocks (fx traces into them); a forward that
    keeps its input on the model (`last_input`) and a hook that writes into a dict it closes over."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                     cbr(16, 24), cbr(24, 32, 2), cbr(32, 48, 2))
        self.sfs = [Hook(self.encoder[i]) for i in (2, 4, 5)]
        self.middle = cbr(48, 48)
        self.blocks = nn.ModuleList([UpBlock(48, 32, 32, self.sfs[2]), UpBlock(32, 24, 24, self.sfs[1]),
                                     UpBlock(24, 16, 16, self.sfs[0])])
        self.head = nn.Conv2d(16, 2, 1)
        self.seen = {}
        self.encoder[6].register_forward_hook(lambda m, args, out, seen=self.seen: seen.__setitem__("deepest", out))
        self.calls = []
        self.middle.register_forward_pre_hook(lambda m, args, calls=self.calls: calls.append(len(calls)))

    def forward(self, x):
        self.last_input = x
        size = x.shape[-2:]
        x = self.middle(self.encoder(x))
        for block in self.blocks:
            x = block(x)
        return F.interpolate(self.head(x), size, mode="bilinear")


class AddCoords(nn.Module):
    """CoordConv's coordinate maps in [-1, 1] (scaled, then shifted by a constant), after the features."""

    def forward(self, x):
        n, _, h, w = x.shape
        xx = torch.arange(w).repeat(1, h, 1).float() / (w - 1) * 2 - 1
        yy = torch.arange(h).repeat(1, w, 1).transpose(1, 2).float() / (h - 1) * 2 - 1
        xx, yy = xx.repeat(n, 1, 1, 1), yy.repeat(n, 1, 1, 1)
        return torch.cat([x, xx.type_as(x), yy.type_as(x)], dim=1)


class CoordUnet(nn.Module):
    """A small U-Net whose head reads the decoder's channels with coordinate maps; `shift_features` shifts the
    decoder's channels themselves by a constant too (then a removed channel would be -1, not 0, in the original)."""

    def __init__(self, shift_features=False):
        super().__init__()
        self.enc1, self.enc2 = cbr(3, 16), cbr(16, 32)
        self.dec = cbr(32 + 16, 16)
        self.coords = AddCoords()
        self.head = nn.Conv2d(16 + 2, 2, 1)
        self.shift_features = shift_features

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        d = self.dec(torch.cat([F.interpolate(e2, scale_factor=2.0), e1], 1))
        return self.head(self.coords(d - 1 if self.shift_features else d))


def hooked():
    return fingerprint(HookedUnet().double()).eval()


def held(model):
    """What the model's hooks and forward keep, by identity: the hooks' stored outputs, the closure's dict, the
    pre-hook's call log and the forward's own attribute."""
    return ([id(h.stored) for h in model.sfs], {k: id(v) for k, v in model.seen.items()}, list(model.calls),
            id(model.__dict__.get("last_input")))


def sound(model, before, x=X):
    """The model keeps what it held, deep-copies and runs (its hooks then hold this forward's); returns its output."""
    assert held(model) == before
    copy.deepcopy(model)
    with torch.no_grad():
        return model(x)


def user_state(model, x=X):
    """A model in use: one forward done (no gradients), so its hooks hold tensors."""
    with torch.no_grad():
        out = model(x)
    return held(model), out


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------- hooked U-Net

@pytest.mark.parametrize("policy", ["or-merge", "coupled"])
def test_a_unet_whose_skips_come_from_hooks_prunes_exactly(policy):
    original = hooked()
    before, _ = user_state(original)
    pruned = copy.deepcopy(original)
    report = quiet(gmlib.prune, pruned, X, 0.4, policy=policy)
    assert check_exact(original, pruned, X) < EXACT_TOL
    assert report.params_reduction > 0
    # the skip read from the ReLU's hook is traced: its conv loses filters and the decoder reads the kept ones
    assert pruned.encoder[0].out_channels == pruned.blocks[2].bn.num_features < 16
    block = pruned.blocks[2]
    assert block.conv[0][0].in_channels == block.up[1].out_channels + pruned.encoder[0].out_channels
    assert [type(h.stored) for h in pruned.sfs] == [torch.Tensor] * 3
    sound(pruned, held(pruned))


def test_a_fresh_hooked_unet_plans_before_its_first_forward():
    model = hooked()
    before = held(model)  # the hooks hold None
    p = gmlib.plan(model, X, 0.4)
    assert held(model) == before and all(h.stored is None for h in model.sfs)
    copy.deepcopy(model)
    quiet(gmlib.apply, model, p)
    assert all(h.stored is None for h in model.sfs)


def test_plan_leaves_the_hooks_and_attributes_as_they_were():
    model = hooked()
    before, out = user_state(model)
    gmlib.plan(model, X, 0.4)
    assert torch.equal(sound(model, before), out)


def test_a_refused_apply_leaves_the_hooked_model_as_it_was():
    model = hooked()
    before, out = user_state(model)
    p = gmlib.plan(model, X, 0.4)
    conv = "blocks.0.conv.0.0"
    p.kept[conv]["in"] = p.kept[conv]["in"][::-1]  # a consumer that reads its kept channels in the wrong order
    with pytest.raises(gmlib.NotExactError, match="first part at module"):
        gmlib.apply(model, p)
    assert torch.equal(sound(model, before), out)


def test_a_crash_after_the_surgery_leaves_the_hooked_model_as_it_was(monkeypatch):
    model = hooked()
    before, out = user_state(model)

    def fails(*args, **kwargs):
        raise RuntimeError("counting fails")
    monkeypatch.setattr(gmlib.surgery, "tally", fails)
    with pytest.raises(RuntimeError, match="counting fails"):
        gmlib.prune(model, X, 0.4)
    assert torch.equal(sound(model, before), out)


def test_a_crash_in_planning_leaves_the_hooked_model_as_it_was():
    model = hooked()
    before, out = user_state(model)

    def criterion(weight, module, name):
        if name.startswith("blocks"):  # after the trace: scoring the decoder
            raise RuntimeError("scores fail")
        return weight.flatten(1).abs().sum(1)
    with pytest.raises(RuntimeError, match="scores fail"):
        gmlib.prune(model, X, 0.4, criterion=criterion)
    assert torch.equal(sound(model, before), out)


def test_a_prune_keeps_what_the_hooks_held():
    model = hooked()
    before, _ = user_state(model)
    quiet(gmlib.prune, model, X, 0.4)
    sound(model, before)  # the pruned model's hooks hold the tensors of the user's forward, not the check's


def test_allocate_leaves_the_hooked_model_as_it_was():
    model = hooked()
    before, out = user_state(model)

    def evaluate(m):
        with torch.no_grad():
            return -float(m(X).abs().mean())
    alloc = quiet(gmlib.allocate, model, X, "params", 0.3, evaluate=evaluate, rates=(0.5,), progress=False)
    assert alloc.reached >= 0.3 - 0.005
    assert torch.equal(sound(model, before), out)

    def fails(m):
        raise RuntimeError("evaluate fails")
    before = held(model)  # sound() ran a forward
    with pytest.raises(RuntimeError, match="evaluate fails"):
        gmlib.allocate(model, X, "params", 0.3, evaluate=fails, rates=(0.5,), progress=False)
    assert torch.equal(sound(model, before), out)


def test_a_model_holding_a_forward_with_gradients_is_checked():
    """A forward with autograd leaves non-leaf tensors in the hooks, which deepcopy refuses: the check copies
    them detached, and the model keeps its own."""
    model = hooked()
    model(X)  # with gradients
    before = held(model)
    quiet(gmlib.prune, model, X, 0.4)
    assert held(model) == before


def test_a_hook_that_logs_a_statistic_of_its_output_does_not_freeze_its_channels():
    model = fingerprint(nn.Sequential(cbr(3, 8), cbr(8, 8), nn.Conv2d(8, 2, 1)).double()).eval()
    means = []
    model[0][2].register_forward_hook(lambda m, args, out: means.append(out.mean(dim=(0, 2, 3))))
    original, pruned = copy.deepcopy(model), model
    report = gmlib.prune(pruned, X, 0.5)
    assert pruned[0][0].out_channels == 4 and not report.frozen_reason.startswith("feeds")
    assert means == [] and check_exact(original, pruned, X) < EXACT_TOL


# ------------------------------------------------------------------------------------------- CoordConv

@pytest.mark.parametrize("policy", ["or-merge", "coupled"])
def test_coordinate_maps_shifted_by_a_constant_do_not_freeze_the_channels_beside_them(policy):
    original = fingerprint(CoordUnet().double()).eval()
    pruned = copy.deepcopy(original)
    report = quiet(gmlib.prune, pruned, X, 0.5, policy=policy)
    assert check_exact(original, pruned, X) < EXACT_TOL
    assert pruned.dec[0].out_channels < 16 and pruned.head.in_channels == pruned.dec[0].out_channels + 2
    assert not any("f(0) != 0" in reason for reason in report.frozen)


def test_a_constant_shift_of_the_pruned_channels_still_freezes_them():
    model = fingerprint(CoordUnet(shift_features=True).double()).eval()
    p = gmlib.plan(model, X, 0.5)
    dec = next(s for s in p.sets if "dec.0" in s.members)
    assert dec.kept == dec.size and "sub of a constant" in dec.reason
    # and rightly: cutting them anyway changes what the network computes
    original, pruned = copy.deepcopy(model), copy.deepcopy(model)
    forced = gmlib.plan(CoordUnet().double(), X, 0.5)  # the same network without the shift: dec.0 prunable
    quiet(gmlib.apply, pruned, forced, verify=False)
    assert check_exact(original, pruned, X) > 1e-3


def test_not_exact_error_is_exported():
    assert gmlib.NotExactError is gmlib.surgery.NotExactError
    assert "NotExactError" in gmlib.__all__
