"""The channel rules, one object per kind of module, and the registry `gmlib.graph.analyse` dispatches over.

Built-in rules, consulted in this order (the first that matches handles the module): plain Conv2d (and smp's
same-padding convs), convs whose maths is not plain (kept), ConvTranspose2d, BatchNorm / GroupNorm,
InstanceNorm, norms over channels (kept), Linear, timm's SplitAttn and SelectiveKernel, Flatten, pass-through
modules, PReLU(C), timm's LayerScale2d. `register_rule(module_type, rule)` puts a user's rule ahead of them all;
functions and tensor methods are handled by `gmlib.rules.functions`, tensors the graph reads itself (a layer scale
written as a bare parameter) by `gmlib.rules.params`.
"""
from torch import nn

from .base import ModuleRule, Producer, Use, scores_of
from .channelwise import FLATTEN, LAYER_SCALE, PASS, PRELU, Flatten, Pass, PerChannel
from .conv import CONV, CONV_TRANSPOSE, FROZEN_CONV, LINEAR, Conv, ConvTranspose, FrozenConv, Linear
from .norms import INSTANCE_NORM, MIXING_NORM, NORM, InstanceNorm, MixingNorm, Norm
from .registry import builtin, register_rule, registered_types, rule_for, unregister_rule
from .norms import CHANNEL_MIXING_NORMS, FROZEN_BN
from .channelwise import PASS_MODULES
from .selective_kernel import SELECTIVE_KERNEL, SelectiveKernel, selective_kernel_type
from .split_attn import SPLIT_ATTN, SplitAttn, split_attn_type

__all__ = ["ModuleRule", "Producer", "Use", "PerChannel", "register_rule", "unregister_rule", "rule_for",
           "registered_types", "leaf_types", "scores_of", "Conv", "FrozenConv", "ConvTranspose", "Linear", "Norm",
           "InstanceNorm", "MixingNorm", "SplitAttn", "SelectiveKernel", "Flatten", "Pass", "split_attn_type",
           "selective_kernel_type"]



def leaf_types() -> tuple:
    """Modules traced as one node (gmlib.trace): norms and convs of any flavour, Linear, pass-through modules."""
    return (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.Conv2d, nn.Linear) + FROZEN_BN + CHANNEL_MIXING_NORMS \
        + PASS_MODULES


for _rule in (CONV, FROZEN_CONV, CONV_TRANSPOSE, NORM, INSTANCE_NORM, MIXING_NORM, LINEAR, SPLIT_ATTN,
              SELECTIVE_KERNEL, FLATTEN, PASS, PRELU, LAYER_SCALE):
    builtin(_rule)
