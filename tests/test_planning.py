"""gmlib.plan says what prune would do without touching the model; gmlib.apply does it; prune is the two together.
A plan prints as a table, round-trips through JSON, and refuses a model it was not made for."""
import copy

import pytest
import torch

import gmlib

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.zeros(1, 3, 64, 128)


@pytest.fixture(scope="module")
def network():
    return gmlib.models.create("fpn_resnest14d", seed=0).eval()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [id(p) for p in model.parameters()]


def test_plan_leaves_the_model_alone_and_foretells_prune(network):
    model = copy.deepcopy(network).train()
    before = state(model)
    p = gmlib.plan(model, X, 0.4, policy="coupled")
    after = state(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert model.training and all(m.training for m in model.modules())
    report = gmlib.prune(copy.deepcopy(network), X, 0.4, policy="coupled")
    assert (p.params_after, p.macs_after) == (report.params_after, report.macs_after)
    assert p.kept == report.kept and p.params_before == report.params_before
    assert [l.out_after for l in p.layers] == [l.out_after for l in report.layers]
    pruned_sets = [s for s in p.sets if s.kept < s.size]
    assert pruned_sets and all(s.members and set(s.voters) <= set(s.members) and not s.reason for s in pruned_sets)
    assert any(s.reason for s in p.sets)  # the head's set is kept, and says why


def test_apply_performs_the_plan_exactly_as_prune_would(network):
    model, twin = copy.deepcopy(network), copy.deepcopy(network)
    report = gmlib.apply(model, gmlib.plan(model, X, 0.3, criterion="l1"))
    direct = gmlib.prune(twin, X, 0.3, criterion="l1")
    assert report.kept == direct.kept and report.params_after == direct.params_after
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_a_plan_prints_round_trips_through_json_and_fits_only_its_model(network, tmp_path):
    model = copy.deepcopy(network)
    p = gmlib.plan(model, X, 0.3)
    text = str(p)
    assert "coupling sets lose channels" in text and "reason" in text and "params" in p.summary()
    assert len(p.sets_frame()) == len(p.sets) and len(p.layers_frame()) == len(p.layers)
    p.save(tmp_path / "plan.json")
    back = gmlib.Plan.load(tmp_path / "plan.json")
    assert back.kept == p.kept and back.sets == p.sets and back.layers == p.layers and back.input_size == p.input_size
    with pytest.raises(ValueError, match="without its example inputs"):
        gmlib.apply(model, back)
    report = gmlib.apply(model, back, example_inputs=X)
    assert report.params_after == p.params_after
    with pytest.raises(ValueError, match=r"does not fit this model: its parameter '.*' is of shape"):
        gmlib.apply(model, p)  # the model has changed since: a plan applies once
    other = gmlib.models.create("resnet50")
    with pytest.raises(ValueError, match="does not fit this model"):
        gmlib.apply(other, p)
    with pytest.raises(TypeError, match="gmlib.Plan"):
        gmlib.apply(model, p.to_dict())


def test_plan_names_bad_input(network):
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        gmlib.plan(network, X, 1.0)
    with pytest.raises(ValueError, match="unknown policy"):
        gmlib.plan(network, X, 0.3, policy="union")


def test_rates_per_set_by_name_glob_or_callable_with_a_cap(network):
    uniform = gmlib.plan(network, X, 0.5, sizes_after=False)
    encoder_only = gmlib.plan(network, X, {"encoder.*": 0.5}, sizes_after=False)
    by_set = {s.index: s for s in encoder_only.sets}
    assert all(s.rate == (0.5 if any(m.startswith("encoder.") for m in s.members) else 0.0) for s in by_set.values())
    assert any(s.kept < s.size for s in by_set.values())
    assert all(s.kept == s.size for s in by_set.values() if s.rate == 0)
    assert sum(s.kept for s in encoder_only.sets) > sum(s.kept for s in uniform.sets)
    called = []
    by_size = gmlib.plan(network, X, lambda s: called.append(s) or (0.6 if s.size >= 128 else 0.2),
                         max_rate=0.4, sizes_after=False)
    assert called and all(s.rate == (0.4 if s.size >= 128 else 0.2) for s in by_size.sets)
    assert isinstance(by_size.rate, str)  # a callable is kept as its description
    first_glob = gmlib.plan(network, X, {"decoder.p5": 0.3, "decoder.*": 0.1}, sizes_after=False)
    assert next(s for s in first_glob.sets if "decoder.p5" in s.members).rate == 0.3  # first matching entry wins


def test_bad_per_set_rates_are_named_and_the_model_untouched(network):
    model = copy.deepcopy(network)
    before = state(model)
    with pytest.raises(ValueError, match="'encodr.*' names no module"):
        gmlib.prune(model, X, {"encodr.*": 0.3})
    with pytest.raises(ValueError, match=r"rate of 'encoder.\*' must be in \[0, 1\)"):
        gmlib.prune(model, X, {"encoder.*": 1.5})
    with pytest.raises(ValueError, match=r"rate\('.*', \.\.\.\) must be in \[0, 1\)"):
        gmlib.prune(model, X, lambda s: -0.1)
    with pytest.raises(ValueError, match="max_rate"):
        gmlib.prune(model, X, 0.3, max_rate=2)
    assert all(torch.equal(before[0][k], v) for k, v in model.state_dict().items())
    report = gmlib.prune(model, X, {"encoder.layer4.*": 0.5})
    assert report.params_reduction > 5 and report.rate == {"encoder.layer4.*": 0.5}


def test_a_criterion_can_be_a_callable_and_the_built_ins_are_callables(network):
    by_name = gmlib.plan(network, X, 0.4, criterion="l1", sizes_after=False)
    by_callable = gmlib.plan(network, X, 0.4, criterion=gmlib.criteria.l1, sizes_after=False)
    assert by_callable.kept == by_name.kept and by_callable.criterion == "l1"
    seen = []

    def negative_l1(weight, module, name):
        seen.append(name)
        return -weight.abs().flatten(1).sum(1)
    opposite = gmlib.plan(network, X, 0.4, criterion=negative_l1, sizes_after=False)
    assert seen and opposite.kept != by_name.kept and opposite.criterion == "negative_l1"
    with pytest.raises(ValueError, match=r"cannot score 'encoder.conv1.0' with criterion 'short': it must return 32"):
        def short(weight, module, name):
            return torch.ones(1)
        gmlib.plan(network, X, 0.4, criterion=short, sizes_after=False)
    with pytest.raises(ValueError, match="or pass a callable"):
        gmlib.plan(network, X, 0.4, criterion="taylr")


def test_taylor_criterion_from_one_batch_prunes_exactly_and_leaves_the_gradients(network):
    model = copy.deepcopy(network)
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(2, 3, 64, 128, generator=g), (torch.rand(2, 4, 64, 128, generator=g) > 0.9).float()
    marker = torch.full_like(model.head.weight, 7.0)
    model.head.weight.grad = marker.clone()
    criterion = gmlib.criteria.taylor(model, images, masks, gmlib.train.bce_dice_loss)
    assert torch.equal(model.head.weight.grad, marker)  # the model's own gradients are back
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    reference = gmlib.verify.fingerprint(copy.deepcopy(model).double().eval())
    pruned = copy.deepcopy(reference)
    report = gmlib.prune(pruned, X.double(), 0.3, criterion=gmlib.criteria.taylor(reference, images.double(),
                                                                               masks.double(),
                                                                               gmlib.train.bce_dice_loss))
    assert report.criterion == "taylor" and report.params_reduction > 15
    assert gmlib.verify.check_exact(reference, pruned, X.double()) < 1e-9
    scores = criterion(model.decoder.p5.weight, model.decoder.p5, "decoder.p5")
    assert scores.shape == (model.decoder.p5.out_channels,) and (scores >= 0).all() and scores.sum() > 0


def test_global_ranking_spends_one_threshold_over_the_network(network):
    local = gmlib.plan(network, X, 0.4, criterion="l1", sizes_after=False)
    ranked = gmlib.plan(network, X, 0.4, criterion="l1", global_ranking=True)
    open_sets = [s for s in ranked.sets if not s.reason]
    rates = {round(s.rate, 3) for s in open_sets}
    assert len(rates) > 2 and max(rates) <= 0.9  # the sets get different rates, capped
    units = {s.index: s.size for s in open_sets}
    pruned = sum(s.size - s.kept for s in open_sets) / sum(units.values())
    assert 0.3 < pruned <= 0.42  # about the asked share of all prunable channels (floors per set, group balance)
    assert ranked.kept != local.kept
    model = copy.deepcopy(network)
    report = gmlib.prune(model, X, 0.4, criterion="l1", global_ranking=True)  # verified
    assert report.params_after == ranked.params_after
    with pytest.raises(ValueError, match="global_ranking needs scores that compare across layers"):
        gmlib.plan(network, X, 0.4, criterion="fpgm", global_ranking=True)
    with pytest.raises(TypeError, match="one rate"):
        gmlib.plan(network, X, {"encoder.*": 0.4}, criterion="l1", global_ranking=True)


@pytest.mark.parametrize("policy", ["or-merge", "coupled"])
def test_macs_estimated_from_per_module_counts_equal_the_pruned_count(network, policy):
    import timm
    for model in (network, timm.create_model("mobilenetv2_050").eval()):  # grouped split attention; depthwise
        p = gmlib.plan(model, X, 0.4, policy=policy)
        assert gmlib.planning.estimate_macs(p) == p.macs_after < p.macs_before
    assert gmlib.planning.estimate_macs(gmlib.plan(network, X, 0.4, count_macs=False)) is None
    assert gmlib.Plan.from_dict(p.to_dict()).module_macs == p.module_macs


def test_the_head_is_kept_by_default_and_pruned_and_checked_on_request(network):
    from torch import nn
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    kept_head = gmlib.plan(small, x, 0.5)
    assert kept_head.output_kept == [None] and next(s for s in kept_head.sets if "3" in s.members).reason
    p = gmlib.plan(small, x, 0.5, keep_head=False)
    assert len(p.output_kept[0]) == 3 and all(s.kept < s.size for s in p.sets)
    reference = copy.deepcopy(small)
    gmlib.apply(small, p)  # verified against the kept output channels of the masked original
    assert small(x).shape == (2, 3, 8, 8)
    masked = gmlib.surgery.mask_kept(copy.deepcopy(reference), {n: {d: torch.tensor(v) for d, v in k.items()}
                                                                 for n, k in p.kept.items()})
    assert torch.allclose(small(x), masked(x)[:, p.output_kept[0]], atol=1e-6)
    fpn = copy.deepcopy(network)
    report = gmlib.prune(fpn, X, 0.5, keep_head=False)
    assert fpn(X).shape[1] == 2 and report.params_reduction > 0  # two of the four classes are gone
    with pytest.raises(TypeError, match="keep_head"):
        gmlib.plan(network, X, 0.3, keep_head="no")


def test_a_wrong_pruned_head_is_caught_by_the_check(monkeypatch):
    from torch import nn
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    real = gmlib.planning._kept_indices

    def head_rows_reversed(graph, kept_space):  # the head keeps the right channels, in the wrong order
        kept = real(graph, kept_space)
        kept["2"]["out"] = kept["2"]["out"].flip(0)
        return kept
    monkeypatch.setattr(gmlib.planning, "_kept_indices", head_rows_reversed)
    with pytest.raises(gmlib.surgery.NotExactError):
        gmlib.prune(small, torch.randn(2, 3, 8, 8), 0.5, keep_head=False)
    assert small[2].out_channels == 6  # left as it was
