"""prune checks itself and is all or nothing: on any failure the model is exactly as it was before the call."""
import copy
import warnings

import pytest
import torch
from torch import nn

import gmlib
from gmlib.surgery import NotExactError
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))


class Chain(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> conv: every channel prunable but the output's."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))


def state(model):
    """Everything that must survive a failed prune: tensors by value, Parameter identity, modes, hooks."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, [id(p) for p in model.parameters()],
            [m.training for m in model.modules()], [dict(m._forward_hooks) for m in model.modules()],
            {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)})


def assert_unchanged(model, before):
    after = state(model)
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert "_gmlib_kept" not in model.__dict__


def user_model(dtype):
    """A model in a user's state: mixed modes (a frozen BN in a training net), a hook, an optimizer on it."""
    model = fingerprint(Chain().to(dtype)).train()
    model.bn_a.eval()
    calls = []
    model.b.register_forward_hook(lambda m, a, o: calls.append(1))
    return model, calls


@pytest.fixture
def wrong_rule(monkeypatch):
    """A broken rule: one consumer reads its kept input channels in reverse order (wrong by value, runs fine)."""
    real = gmlib.planning._kept_indices

    def reversed_in(graph, kept_space):
        kept = real(graph, kept_space)
        kept["b"]["in"] = kept["b"]["in"].flip(0)
        return kept
    monkeypatch.setattr(gmlib.planning, "_kept_indices", reversed_in)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_wrong_pruning_is_refused_and_the_model_restored(wrong_rule, dtype):
    model, calls = user_model(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = state(model)
    with pytest.raises(NotExactError, match=r"eval mode .* first part at module 'b' \(Conv2d\)"):
        gmlib.prune(model, X.to(dtype), 0.5)
    assert_unchanged(model, before)
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == before[1]
    model(X.to(dtype))
    assert calls  # the hook is still there
    # without the check the same broken rule gives a network that runs and is silently wrong
    reference = copy.deepcopy(model).double().eval()
    gmlib.prune(model, X.to(dtype), 0.5, verify=False)
    assert check_exact(reference, model.double(), X.double()) > 1e-3


def test_the_check_judges_the_model_that_is_returned(monkeypatch):
    """A surgery that cuts the user's model other than by the plan (here it also scales one kept filter) is refused:
    the check runs the network prune returns, not a twin cut by the plan's indices."""
    model, _ = user_model(torch.float32)
    before = state(model)
    real = gmlib.surgery.apply_kept

    def cuts_then_scales(m, kept):
        real(m, kept)
        with torch.no_grad():
            m.b.weight[0] *= 2
    monkeypatch.setattr(gmlib.surgery, "apply_kept", cuts_then_scales)
    with pytest.raises(NotExactError, match=r"first part at module 'b' \(Conv2d\)"):
        gmlib.prune(model, X, 0.5)
    assert_unchanged(model, before)


def test_a_failure_half_way_through_the_surgery_restores_the_model(monkeypatch):
    model, _ = user_model(torch.float32)
    before = state(model)
    real, done = gmlib.shrink.shrink_module, []

    def fails_third(m, out=None, in_=None):
        if len(done) == 2:
            raise RuntimeError("a rule refuses here")
        done.append(m)
        real(m, out, in_)
    monkeypatch.setattr(gmlib.shrink, "shrink_module", fails_third)
    with pytest.raises(RuntimeError, match="refuses"):
        gmlib.prune(model, X, 0.5)
    assert len(done) == 2
    assert_unchanged(model, before)


def test_a_branch_taken_only_in_training_is_caught_by_the_train_mode_check():
    class TrainOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            return self.out(a + b if self.training else a)

    model = fingerprint(TrainOnly().double()).eval()
    before = state(model)
    with pytest.raises(NotExactError, match="in train mode"):
        gmlib.prune(model, X.double(), 0.5)
    assert_unchanged(model, before)


def test_train_mode_check_does_not_touch_running_stats_and_passes_a_batch_of_one():
    model = fingerprint(Chain().double()).train()
    stats = model.bn_a.running_mean.clone(), model.bn_a.num_batches_tracked.clone()
    report = gmlib.prune(model, X.double(), 0.5)
    kept = report.kept["bn_a"]["out"]
    assert torch.equal(model.bn_a.running_mean, stats[0][kept]) and model.bn_a.num_batches_tracked == stats[1]
    assert model.training and model.a.out_channels == 4


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "old weight_norm"])
def test_parametrized_convs_are_kept_with_a_reason_and_the_rest_prunes(wrap):
    from torch.nn.utils import parametrizations
    make = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm,
            "old weight_norm": nn.utils.weight_norm}[wrap]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), make(nn.Conv2d(8, 8, 3)), nn.ReLU(),
                              nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).double().eval()
    original = fingerprint(copy.deepcopy(model)) if wrap != "old weight_norm" else None
    with pytest.warns(UserWarning, match="weight is computed"):
        report = gmlib.prune(model, X.double(), 0.5)
    assert (model[0].out_channels, model[2].in_channels, model[2].out_channels, model[4].out_channels) == (8, 8, 8, 4)
    assert "weight is computed" in report.frozen_reason
    if original is not None:
        pruned = fingerprint(copy.deepcopy(original))
        reference = copy.deepcopy(pruned)
        gmlib.prune(pruned, X.double(), 0.5)
        assert check_exact(reference, pruned, X.double()) < EXACT_TOL


def test_a_prune_that_removes_little_warns_with_the_reason():
    from timm.layers import StdConv2d
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), StdConv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    with pytest.warns(UserWarning, match=r"cut 0.0% of the parameters at rate 0.5: .*weight-standardised"):
        gmlib.prune(model, X, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gmlib.prune(Chain(), X, 0.5)  # a normal prune is silent
        gmlib.prune(Chain(), X, 0.0)  # so is rate 0


def test_verify_must_be_a_bool():
    with pytest.raises(TypeError, match="verify"):
        gmlib.prune(Chain(), X, 0.5, verify="yes")
