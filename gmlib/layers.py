"""What each op does to channels: the one table of functions and tensor methods that gmlib.normalize,
gmlib.rules.functions and gmlib.graph read (modules are their rules' business, gmlib.rules).

Pass-through ops (activations, resizing, pooling, dropout, dtype and layout methods) act on each channel alone, so
channel c out depends on channel c in only; elementwise ops read channel c of each operand; reductions over space
keep the channels; `found` looks up optional classes and functions (timm, torchvision) without requiring them.
"""
import importlib
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["OPS", "Op", "PASS_FUNCTIONS", "PASS_METHODS", "ELEMENTWISE", "REDUCTIONS", "SHIFTS",
           "NONZERO_AT_ZERO_FUNCTIONS", "NONZERO_AT_ZERO_METHODS", "found", "timm_types"]


def found(module, *names):
    """Attributes of `module`, by name (an empty tuple where the module or a name is missing)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:  # pragma: no cover - timm and torchvision are project dependencies
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


def timm_types(module, *names):
    """Classes of timm.layers.<module>, by name (found)."""
    return found(f"timm.layers.{module}", *names)


class Op(NamedTuple):
    """An op by gmlib.normalize's canonical name: its positional parameters; what it does to channels ("pass": channel
    c out reads channel c in only; "elementwise": channel c of each tensor parameter; "reduction": over the dims it
    is given; "": read by a rule of its own, gmlib.rules.functions); the torch functions that call it as such and
    whether a tensor method of that name does; `shifts`: a constant operand gives f(0) != 0; `nonzero`: f(0) != 0."""
    params: tuple = ("input",)
    kind: str = ""
    functions: tuple = ()
    method: bool = False
    shifts: bool = False
    nonzero: bool = False

    @property
    def tensors(self) -> tuple:
        """The parameters that take tensors (alpha is a number)."""
        return tuple(p for p in self.params if p != "alpha")


def _ops():
    pair, offset = ("input", "other"), dict(kind="elementwise", shifts=True)
    ops = {name: Op(pair, **offset) for name in ("maximum", "minimum", "fmax", "fmin")}
    ops.update(add=Op(("input", "other", "alpha"), **offset), sub=Op(("input", "other", "alpha"), **offset),
               where=Op(("condition", "input", "other"), **offset), clamp=Op(("input", "min", "max"), **offset),
               mul=Op(pair, "elementwise"), div=Op(pair, "elementwise"),
               lerp=Op(("input", "end", "weight"), "elementwise"),
               addcmul=Op(("input", "tensor1", "tensor2"), "elementwise"),
               addcdiv=Op(("input", "tensor1", "tensor2"), "elementwise"))
    ops.update({name: Op(("input", "dim", "keepdim"), "reduction") for name in ("mean", "sum", "amax", "amin")})
    ops.update(cat=Op(("tensors", "dim")), stack=Op(("tensors", "dim")), flatten=Op(("input", "start_dim", "end_dim")),
               getitem=Op(("input", "index")), size=Op(("input", "dim")), expand_as=Op(pair),
               reshape=Op(("input", "shape")), view=Op(("input", "shape")), getattr=Op(("input", "name")))
    # pass: activations (functions; relu, tanh, neg also as methods), resizing, pooling, dropout (identity in eval,
    # per-sample in training), dtype and memory-layout methods; relu_ is relu (gmlib.normalize)
    functions = {"relu": (F.relu, torch.relu), "relu6": (F.relu6,), "leaky_relu": (F.leaky_relu,),
                 "gelu": (F.gelu,), "silu": (F.silu,), "hardswish": (F.hardswish,), "mish": (F.mish,),
                 "elu": (F.elu,), "celu": (F.celu,), "selu": (F.selu,), "hardtanh": (F.hardtanh,),
                 "tanh": (torch.tanh,), "neg": (operator.neg, torch.neg), "dropout": (F.dropout,),
                 "dropout2d": (F.dropout2d,), "interpolate": (F.interpolate,), "max_pool2d": (F.max_pool2d,),
                 "avg_pool2d": (F.avg_pool2d,), "adaptive_avg_pool2d": (F.adaptive_avg_pool2d,),
                 "adaptive_max_pool2d": (F.adaptive_max_pool2d,),
                 "stochastic_depth": found("torchvision.ops", "stochastic_depth")}
    methods = ("relu", "contiguous", "clone", "detach", "neg", "tanh", "float", "double", "to", "type_as")
    for name in dict.fromkeys([*functions, *methods]):
        ops[name] = Op(kind="pass", functions=functions.get(name, ()), method=name in methods)
    ops.update(sigmoid=Op(kind="pass", functions=(torch.sigmoid, F.sigmoid), method=True, nonzero=True),
               hardsigmoid=Op(kind="pass", functions=(F.hardsigmoid,), nonzero=True),
               softplus=Op(kind="pass", functions=(F.softplus,), nonzero=True))
    return ops


OPS = _ops()  # the one table of ops: what gmlib.normalize, gmlib.rules.functions and gmlib.graph read
PASS_FUNCTIONS = {f for op in OPS.values() if op.kind == "pass" for f in op.functions}
PASS_METHODS = {name for name, op in OPS.items() if op.kind == "pass" and op.method}
ELEMENTWISE = {name: op.tensors for name, op in OPS.items() if op.kind == "elementwise"}  # -> tensor parameters
REDUCTIONS = {name for name, op in OPS.items() if op.kind == "reduction"}
SHIFTS = {name for name, op in OPS.items() if op.shifts}
NONZERO_AT_ZERO_FUNCTIONS = {f for op in OPS.values() if op.nonzero for f in op.functions}
NONZERO_AT_ZERO_METHODS = {name for name, op in OPS.items() if op.nonzero and op.method}
