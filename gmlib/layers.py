"""What each module and op does to channels: the tables `gmlib.graph` reads, with the reason for every entry.

Pass-through: elementwise maps (activations, gates' sigmoids), pooling, resizing, dropout and padding act on each
channel alone, so channel c out depends on channel c in only. Norms with per-channel statistics (BatchNorm, and
timm's norm-act layers = norm then an elementwise act) shrink with the channels they read; norms whose statistics
mix channels (LayerNorm over C, RMSNorm) and weight-standardised convs (each filter normalised over its inputs)
change their other outputs when a channel goes, so what they touch is kept.
"""
import importlib
import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["is_pass", "zero_stays_zero", "NONZERO_AT_ZERO_FUNCTIONS", "NONZERO_AT_ZERO_METHODS", "is_batch_norm", "is_group_norm", "norm_act_problem", "mixes_channels", "conv_kind", "leaf_types",
           "PASS_FUNCTIONS", "PASS_METHODS", "ELEMENTWISE", "REDUCTIONS"]


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

PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish, F.mish, F.elu, F.celu,
                  F.selu, F.softplus, F.hardtanh, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.dropout,
                  F.dropout2d, F.interpolate, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, operator.neg, torch.neg,
                  *_found("torchvision.ops", "stochastic_depth")}  # identity in eval, per-sample in training
PASS_METHODS = {"relu", "contiguous", "clone", "detach", "neg", "tanh", "sigmoid", "float", "double", "to",
                "type_as"}  # canonical names (gmlib.normalize): relu_ is relu; clamp is elementwise (tensor bounds)
# elementwise ops (by gmlib.normalize's canonical name) -> their tensor parameters: channel c reads channel c of each
ELEMENTWISE = {"add": ("input", "other"), "sub": ("input", "other"), "mul": ("input", "other"),
               "div": ("input", "other"), "maximum": ("input", "other"), "minimum": ("input", "other"),
               "fmax": ("input", "other"), "fmin": ("input", "other"), "clamp": ("input", "min", "max"),
               "where": ("condition", "input", "other"), "lerp": ("input", "end", "weight"),
               "addcmul": ("input", "tensor1", "tensor2"), "addcdiv": ("input", "tensor1", "tensor2")}
REDUCTIONS = {"mean", "sum", "amax", "amin"}

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
NONZERO_AT_ZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus}
NONZERO_AT_ZERO_METHODS = {"sigmoid"}


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
