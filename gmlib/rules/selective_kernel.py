"""timm's SelectiveKernel (SKNet): paths (conv -> norm-act) -> stack -> attn (sum, pool, fc_reduce, bn, act,
fc_select, softmax over paths) -> weighted sum over paths.

The P paths are summed: channel j is row j of every path conv, one space of C channels produced by the block
(scored, like SplitAttn's radix, by the paths' scores summed; kept k expands to rows k of each path conv).
fc_select row p*C + j gates channel j of path p: a follower whose rows are {p*C + k}, P rows per channel of the
block in the plan's coverage (`ctx.copies`). fc_reduce's hidden channels are their own space.
"""
import torch
from torch import nn

from .channelwise import is_pass
from .norms import is_batch_norm, norm_act_problem
from .base import Producer, TimmBlock, scores_of

__all__ = ["SelectiveKernel", "selective_kernel_type"]


def selective_kernel_type():
    """timm's SelectiveKernel."""
    return SelectiveKernel().types[0]


def _understood(m):
    return all(type(p.conv) is nn.Conv2d and is_batch_norm(p.bn) and not norm_act_problem(p.bn)
               and isinstance(getattr(p, "aa", None), (nn.Identity, type(None))) for p in m.paths) \
        and type(m.attn.fc_reduce) is nn.Conv2d and type(m.attn.fc_select) is nn.Conv2d and is_pass(m.attn.act) \
        and is_batch_norm(m.attn.bn) and not norm_act_problem(m.attn.bn)


class SelectiveKernel(TimmBlock):
    timm_class = ("timm.layers.selective_kernel", "SelectiveKernel")

    def analyse(self, ctx, name, m, lin):
        from .conv import CONV
        paths, attn = list(m.paths), m.attn
        why = "" if _understood(m) else f"SelectiveKernel with unexpected sub-modules ({name})"
        if not why and m.split_input:
            ctx.freeze(lin, f"SelectiveKernel splits its input into fixed sizes ({name})")
        elif not why:
            for i, p in enumerate(paths):
                if p.conv.groups > 1:
                    s = ctx.single(lin, ctx.node, f"grouped conv {name}.paths.{i}.conv")
                    if s is not None:
                        ctx.constrain(s, groups=p.conv.groups)
                ctx.read(f"{name}.paths.{i}.conv", "conv_in", lin)
        out = ctx.new_space(paths[0].conv.out_channels, producer=Producer("block", name, self, "paths"),
                            frozen=why or None, groups=paths[0].conv.groups)
        for i, p in enumerate(paths):
            conv = f"{name}.paths.{i}.conv"
            ctx.read(f"{name}.paths.{i}.bn", "norm", (out,))
            ctx.norm_after[conv] = f"{name}.paths.{i}.bn"
            ctx.conv_out[conv] = (out,)
        ctx.read(f"{name}.attn.fc_reduce", "conv_in", (out,))
        hidden = ctx.new_space(attn.fc_reduce.out_channels, producer=Producer("conv", f"{name}.attn.fc_reduce", CONV),
                               frozen=why or None)
        ctx.read(f"{name}.attn.bn", "norm", (hidden,))
        ctx.norm_after[f"{name}.attn.fc_reduce"] = f"{name}.attn.bn"
        ctx.read(f"{name}.attn.fc_select", "conv_in", (hidden,))
        ctx.sp.producers[out].append(Producer("follower", f"{name}.attn.fc_select", self, "select"))
        ctx.conv_out[f"{name}.attn.fc_reduce"], ctx.conv_out[f"{name}.attn.fc_select"] = (hidden,), (out,)
        ctx.copies[f"{name}.attn.fc_select"] = attn.fc_select.out_channels // paths[0].conv.out_channels
        return (out,)

    def scores(self, graph, producer, criterion, generator):
        m = graph.modules[producer.name]
        return sum(scores_of(p.conv, criterion, p.bn, f"{producer.name}.paths.{i}.conv", generator)
                   for i, p in enumerate(m.paths))

    def expand(self, graph, producer, k, size):
        if producer.part == "select":  # rows p*C + j for each of its out_channels // C copies
            copies = graph.modules[producer.name].out_channels // size
            return {producer.name: (torch.arange(copies)[:, None] * size + k[None]).flatten()}
        return {f"{producer.name}.paths.{i}.conv": k for i in range(len(graph.modules[producer.name].paths))}


SELECTIVE_KERNEL = SelectiveKernel()
