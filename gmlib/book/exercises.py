"""Checks for the exercises in code of Part I (chapters 01-03): the student writes a function in a cell tagged
`exercise`, and the cell after it, tagged `check`, calls `check(name, function)`, which says right or wrong.

Each check compares the student's function with the library on inputs it makes itself (an oracle, never a stored
answer): L1 and distance-sum scores against `filter_scores`, a conv and its BatchNorm cut by hand against
`shrink_module` and `gmlib.prune`, MACs against `gmlib.count`, a magnitude mask against torch.nn.utils.prune. A
function that still raises NotImplementedError (the student copy's stub) is "not written yet", not an error, so the
student copy runs to its end.
"""
import copy

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .. import models
from ..complexity import count
from ..criteria import filter_scores, select_filters
from ..shrink import shrink_module
from ..surgery import prune

__all__ = ["EXERCISES", "check", "verdict", "Wrong"]


class Wrong(AssertionError):
    """The student's answer differs from the library's; the message says where."""


def _weights():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 8, 3, 3, generator=g), torch.randn(10, 27, generator=g),
            torch.randn(64, 32, 1, 1, generator=g)]


def _same_scores(candidate, criterion: str, what: str) -> str:
    for w in _weights():
        got = torch.as_tensor(candidate(w.clone()))
        want = filter_scores(w, criterion)
        if got.shape != want.shape:
            raise Wrong(f"for a weight of shape {tuple(w.shape)} it returns shape {tuple(got.shape)}, want "
                        f"{tuple(want.shape)}: one score per filter (output channel)")
        if not torch.allclose(got.float(), want, rtol=1e-4, atol=1e-5):
            raise Wrong(f"for a weight of shape {tuple(w.shape)} its scores differ from gmlib.filter_scores(w, "
                        f"{criterion!r}) by up to {float((got.float() - want).abs().max()):.3g}: {what}")
        if not torch.equal(select_filters(got.float(), 0.4), select_filters(want, 0.4)):
            raise Wrong("its scores keep other filters than the library's at rate 0.4")
    return f"matches gmlib.filter_scores(w, {criterion!r}) on {len(_weights())} weights, and keeps the same filters"


def _l1_scores(candidate):
    return _same_scores(candidate, "l1", "the sum of |w| over each filter's inputs and kernel")


def _distance_sums(candidate):
    return _same_scores(candidate, "fpgm-sum", "s_j, the sum of the Euclidean distances from filter j to all "
                        "filters, each filter flattened to one vector")


def _conv_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
    with torch.no_grad():  # statistics and an affine map that are not the defaults, so forgetting one shows
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    return conv.eval(), bn.eval()


def _prune_conv_bn(candidate):
    conv, bn = _conv_bn()
    keep = select_filters(filter_scores(conv.weight, "fpgm"), 0.5)
    got = candidate(copy.deepcopy(conv), copy.deepcopy(bn), keep.clone())
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Wrong("it must return the pair (conv, bn)")
    new_conv, new_bn = got
    want_conv, want_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    shrink_module(want_conv, out=keep)
    shrink_module(want_bn, out=keep)
    if new_conv.weight.shape != want_conv.weight.shape or new_conv.out_channels != len(keep):
        raise Wrong(f"the conv's weight has shape {tuple(new_conv.weight.shape)} (out_channels "
                    f"{new_conv.out_channels}), want {tuple(want_conv.weight.shape)} ({len(keep)})")
    if new_bn.num_features != len(keep):
        raise Wrong(f"the BatchNorm has num_features {new_bn.num_features}, want {len(keep)}")
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(new_bn, name).shape != getattr(want_bn, name).shape or \
                not torch.equal(getattr(new_bn, name), getattr(want_bn, name)):
            raise Wrong(f"the BatchNorm's {name} is not the kept channels' {name}")
    x = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, reference = new_bn.eval()(new_conv.eval()(x)), bn(conv(x))[:, keep]
    if not torch.allclose(out, reference, atol=1e-5):
        raise Wrong("bn(conv(x)) after the cut is not the kept channels of bn(conv(x)) before it")
    return "its conv and BatchNorm equal shrink_module's, and compute the kept channels of the original exactly"


def _chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    with torch.no_grad():
        for m in (net[1], net[4]):
            m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    return net.eval()


def _cut_inputs(candidate):
    net = _chain()
    keep = select_filters(filter_scores(net[0].weight, "fpgm"), 0.5)
    mine = copy.deepcopy(net)
    shrink_module(mine[0], out=keep)
    shrink_module(mine[1], out=keep)
    mine[3] = candidate(mine[3], keep.clone())
    if not isinstance(mine[3], nn.Conv2d):
        raise Wrong(f"it must return the conv (an nn.Conv2d), got {type(mine[3]).__name__}")
    library = copy.deepcopy(net)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    prune(library, x, 0.5, criterion="fpgm", count_macs=False)
    if mine[3].weight.shape != library[3].weight.shape or mine[3].in_channels != library[3].in_channels:
        raise Wrong(f"the next conv's weight has shape {tuple(mine[3].weight.shape)} (in_channels "
                    f"{mine[3].in_channels}), gmlib.prune's {tuple(library[3].weight.shape)}")
    with torch.no_grad():
        got, want, original = mine(x), library(x), net(x)
    if not (torch.allclose(got, want, atol=1e-5) and torch.equal(mine[3].weight, library[3].weight)):
        raise Wrong("the chain with your cut computes something else than gmlib.prune's: were the kept input "
                    "columns taken, in the order of keep?")
    return (f"the chain cut by hand equals gmlib.prune's at rate 0.5 (its output changed by "
            f"{float((got - original).abs().max() / original.abs().max()):.0%} of its largest value, as pruning "
            f"changes it, and matches the library's to 1e-5)")


def _convs():
    return [nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.Conv2d(32, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=8), nn.Conv2d(8, 8, 7, padding=0)]


def _conv_macs(candidate):
    for conv in _convs():
        for h, w in ((16, 16), (15, 24)):
            got = candidate(conv, h, w)
            _, want = count(nn.Sequential(conv), (conv.in_channels, h, w))
            if got != want:
                raise Wrong(f"for {conv} on a {h}x{w} input it gives {got} MACs, gmlib.count {want}")
    return f"matches gmlib.count on {len(_convs())} convs (strided, 1x1, grouped, unpadded) and two input sizes"


def _count_macs(candidate):
    torch.manual_seed(0)
    rows = []
    for rate in (0.0, 0.4):
        model = models.create("resnet50", num_classes=4, seed=0).eval()
        if rate:
            prune(model, torch.zeros(1, 3, 64, 64), rate, policy="coupled", count_macs=False)
        got = candidate(model, (3, 64, 64))
        _, want = count(model, (3, 64, 64))
        if got != want:
            raise Wrong(f"for ResNet50 pruned at {rate:.0%} it gives {got:,} MACs, gmlib.count {want:,} (off by "
                        f"{got - want:+,}): every conv and the Linear head count")
        rows.append(want)
    return f"matches gmlib.count on ResNet50 before and after pruning at 40 % ({1 - rows[1] / rows[0]:.1%} removed)"


def _magnitude_mask(candidate):
    g = torch.Generator().manual_seed(0)
    for shape, sparsity in (((32, 16, 3, 3), 0.5), ((64, 64, 1, 1), 0.9), ((10, 27), 0.3)):
        w = torch.randn(shape, generator=g)
        got = torch.as_tensor(candidate(w.clone(), sparsity))
        want = torch_prune.L1Unstructured(sparsity).compute_mask(w, torch.ones_like(w))
        if got.shape != w.shape:
            raise Wrong(f"the mask has shape {tuple(got.shape)}, want the weight's {tuple(w.shape)}")
        if not torch.equal(got.bool(), want.bool()):
            differ = int((got.bool() != want.bool()).sum())
            raise Wrong(f"at sparsity {sparsity} on a weight of shape {shape} it keeps {int(got.bool().sum())} "
                        f"entries, torch.nn.utils.prune {int(want.sum())}, and {differ} differ: keep the entries of "
                        f"largest |w|, round(sparsity * numel) of them zeroed")
    return "matches torch.nn.utils.prune.l1_unstructured's mask on three weights and sparsities"


# name -> the check: it returns what the answer got right, or raises Wrong
EXERCISES = {"l1_scores": _l1_scores, "distance_sums": _distance_sums, "prune_conv_bn": _prune_conv_bn,
             "cut_inputs": _cut_inputs, "conv_macs": _conv_macs, "count_macs": _count_macs,
             "magnitude_mask": _magnitude_mask}


def verdict(name: str, candidate) -> tuple[str, str]:
    """("right" | "wrong" | "not written yet", why) for the student's function `candidate` of exercise `name`."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; there are {', '.join(EXERCISES)}")
    try:
        return "right", EXERCISES[name](candidate)
    except NotImplementedError:
        return "not written yet", f"fill in {name} in the cell above, run it, then this cell"
    except Wrong as e:
        return "wrong", str(e)
    except Exception as e:  # the student's code broke: say how, do not stop the notebook
        return "wrong", f"it raised {type(e).__name__}: {e}"


def check(name: str, candidate) -> None:
    """Print one line: right, wrong or not written yet, and why."""
    status, why = verdict(name, candidate)
    print(f"{status}: {why}")
