"""What each module and op does to channels: the tables `gmlib.graph` reads, with the reason for every entry.

Pass-through: elementwise maps (activations, gates' sigmoids), pooling, resizing, dropout and padding act on each
channel alone, so channel c out depends on channel c in only. Norms with per-channel statistics (BatchNorm, and
timm's norm-act layers = norm then an elementwise act) shrink with the channels they read; norms whose statistics
mix channels (LayerNorm over C, RMSNorm) and weight-standardised convs (each filter normalised over its inputs)
change their other outputs when a channel goes, so what they touch is kept.
"""
import importlib
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["is_pass", "zero_stays_zero", "NONZERO_AT_ZERO_FUNCTIONS", "NONZERO_AT_ZERO_METHODS", "is_batch_norm", "is_group_norm", "norm_act_problem", "mixes_channels", "conv_kind", "leaf_types",
           "PASS_FUNCTIONS", "PASS_METHODS", "ELEMENTWISE", "REDUCTIONS", "SHIFTS", "OPS", "Op"]


def _found(module, *names):
    """Attributes of `module`, by name (an empty tuple where the module or a name is missing)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:  # pragma: no cover - timm and torchvision are project dependencies
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


def _timm(module, *names):
    return _found(f"timm.layers.{module}", *names)


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish, nn.Hardtanh, nn.Mish,
                 nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout,
                 nn.Dropout2d, nn.AlphaDropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.ZeroPad2d,
                 nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d) \
    + _timm("activations", "Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU",
            "GELUTanh", "QuickGELU") \
    + _timm("drop", "DropPath", "DropBlock2d")  # identity in eval; per-sample or per-position masks in training

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
                 "stochastic_depth": _found("torchvision.ops", "stochastic_depth")}
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

_NORM_ACT = _timm("norm_act", "BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "GroupNormAct",
                  "GroupNorm1Act")
_FROZEN_BN = _timm("norm", "FrozenBatchNorm2d") + _timm("norm_act", "FrozenBatchNormAct2d") \
    + _found("torchvision.ops", "FrozenBatchNorm2d")
_CHANNEL_MIXING_NORMS = (nn.LayerNorm,) + _timm("norm", "RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d") \
    + _timm("norm_act", "RmsNormAct", "RmsNormAct2d")
_SAFE_CONVS = (nn.Conv2d,) + _timm("conv2d_same", "Conv2dSame")          # same maths, padding computed per call
# segmentation_models_pytorch's efficientnet convs: zero padding (static module or F.pad), then F.conv2d with their
# own weight, bias, stride, dilation, groups: a plain conv. Looked up only where smp is already imported.
_SMP_SAME_CONVS = ("segmentation_models_pytorch.encoders._efficientnet",
                   ("Conv2dStaticSamePadding", "Conv2dDynamicSamePadding"))
_STD_CONVS = _timm("std_conv", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def is_pass(m: nn.Module) -> bool:
    """An elementwise / per-channel module; PReLU only with one shared slope."""
    return isinstance(m, _PASS_MODULES) or (isinstance(m, nn.PReLU) and m.num_parameters == 1)


_NONZERO_AT_ZERO = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus) + _timm("activations", "Sigmoid", "HardSigmoid")


def zero_stays_zero(m: nn.Module) -> bool:
    """f(0) = 0 for a pass-through module: a removed (zeroed) channel stays zero, so its readers see nothing.

    Sigmoid-like maps, ConstantPad with a non-zero value, a Hardtanh whose range excludes 0 and a norm without
    affine (it maps 0 to -mean / std) give a removed channel a value that a conv reading it would add up."""
    if isinstance(m, _NONZERO_AT_ZERO):
        return False
    if isinstance(m, nn.ConstantPad2d) and m.value != 0:
        return False
    if isinstance(m, nn.Hardtanh) and not (m.min_val <= 0 <= m.max_val):
        return False
    if (is_batch_norm(m) or is_group_norm(m)) and getattr(m, "weight", None) is None:
        return False
    return True


def is_batch_norm(m: nn.Module) -> bool:
    """Per-channel statistics and affine (BatchNorm, frozen and sync variants, timm's BatchNormAct)."""
    return isinstance(m, (nn.modules.batchnorm._BatchNorm,) + _FROZEN_BN)


def is_group_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.GroupNorm)


def norm_act_problem(m: nn.Module) -> str:
    """'' when a norm-act layer's activation and dropout are elementwise, else why its channels are kept."""
    if not isinstance(m, _NORM_ACT):
        return ""
    for part in ("act", "drop"):
        sub = getattr(m, part, None)
        if sub is not None and not is_pass(sub):
            return f"norm-act layer with a {type(sub).__name__} {part}"
    return ""


def mixes_channels(m: nn.Module) -> str:
    """Why a norm's statistics mix channels ('' if they do not): removing one channel changes the others."""
    if isinstance(m, _CHANNEL_MIXING_NORMS):
        return f"{type(m).__name__} normalises over channels"
    return ""


def conv_kind(m: nn.Module) -> str:
    """'conv' (plain maths), 'std' (weight-standardised: each filter normalised over its inputs), 'computed' (weight
    made by a parametrization or weight_norm's hook: its norms mix rows or columns), 'custom' (own forward), ''."""
    if isinstance(m, _STD_CONVS):
        return "std"
    if isinstance(m, nn.Conv2d) and (parametrize.is_parametrized(m) or "weight" not in m._parameters):
        return "computed"
    if type(m) in _SAFE_CONVS or _smp_same_conv(m):
        return "conv"
    if isinstance(m, nn.Conv2d):
        plain = type(m).forward is nn.Conv2d.forward and type(m)._conv_forward is nn.Conv2d._conv_forward
        return "conv" if plain else "custom"
    return ""


def _smp_same_conv(m) -> bool:
    module, names = _SMP_SAME_CONVS
    if type(m).__module__ != module or type(m).__name__ not in names:
        return False
    pad = getattr(m, "static_padding", None)
    return pad is None or type(pad) in (nn.ZeroPad2d, nn.Identity)


def leaf_types() -> tuple:
    """Modules traced as one node: norms and convs of any flavour, timm activations (rules above)."""
    return (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.Conv2d, nn.Linear) + _FROZEN_BN + _CHANNEL_MIXING_NORMS \
        + _PASS_MODULES
