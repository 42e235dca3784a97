"""Small random CNNs that spell the same ops in the ways PyTorch allows (tests/test_spellings.py and
benchmarks/bench_spellings.py): a stem conv, blocks of one kind each written with one of its spellings, a head.

`random_spec(rng)` draws (blocks, head, seed, rate, policy) from the same ranges as the property test's strategy;
`verdict` prunes a fingerprinted float64 copy and judges it by value (gmlib.verify.check_exact).
"""
import copy
import operator

import torch
import torch.nn.functional as F
from torch import nn

import gmlib
from gmlib.surgery import NotExactError
from gmlib.verify import check_exact, fingerprint
from gmlib.zoo import EXACT_TOL

__all__ = ["ADD", "MUL", "CAT", "REDUCE", "CLAMP", "SCALE", "FLAT", "LEAK", "KINDS", "conv", "Block", "SpelledNet",
           "verdict", "judge", "random_spec", "MAX_BLOCKS", "SPELLINGS", "HEADS", "RATES", "POLICIES"]

MAX_BLOCKS, SPELLINGS, HEADS = 4, 10, (-1, 6)   # blocks per net, spelling index range, head index range
RATES, POLICIES = (0.3, 0.5), ("or-merge", "coupled")


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


def verdict(model, x, rate, policy, verify, strict=True):
    """('exact' | 'partial' | 'refused' | 'wrong', why): exact and partial are equal by value to the masked original
    (partial: under half of `rate` of the parameters cut); refused: nothing cut, or a clear refusal (NotExactError;
    with `strict=False` also a TypeError / ValueError from prune that left the model as it was, which `strict`
    raises); wrong: anything else."""
    original = fingerprint(model.double().eval())
    pruned = copy.deepcopy(original)
    try:
        report = gmlib.prune(pruned, x, rate, policy=policy, verify=verify, count_macs=False)
    except NotExactError as e:
        return "refused", str(e)
    except (TypeError, ValueError) as e:
        if strict:
            raise
        untouched = all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), pruned.state_dict().values()))
        return ("refused" if untouched else "wrong"), f"{type(e).__name__}: {e}"
    try:
        error = check_exact(original, pruned, x)
    except Exception as e:  # noqa: BLE001 - a pruned network that breaks is wrong
        return "wrong", f"{type(e).__name__}: {e}"
    if error > EXACT_TOL:
        return "wrong", f"error {error:.1e}"
    if report.params_after >= report.params_before:
        return "refused", report.frozen_reason
    return ("exact" if report.params_reduction >= 50 * rate else "partial"), report.frozen_reason


def judge(model, x, rate, policy, verify):
    """verdict with partial counted as exact: 'exact', 'refused' or 'wrong'."""
    kind, why = verdict(model, x, rate, policy, verify)
    return ("exact" if kind == "partial" else kind), why


def random_spec(rng):
    """(blocks, head, seed, rate, policy) drawn by a random.Random, as the property test's strategy draws them."""
    blocks = [(rng.choice(sorted(KINDS)), rng.randint(0, SPELLINGS - 1)) for _ in range(rng.randint(1, MAX_BLOCKS))]
    return blocks, rng.randint(*HEADS), rng.randint(0, 2 ** 16), rng.choice(RATES), rng.choice(POLICIES)
