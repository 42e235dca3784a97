"""timm's SplitAttn (ResNeSt): conv (groups*radix) -> bn0 -> act -> radix sum -> fc1 -> bn1 -> act -> fc2 ->
r-softmax -> sum over radix of x_r * a_r.

With C output channels, channel j of the block is conv rows r*C + j for every radix branch r (r < R), so one space
of C channels is produced by the block, scored by the R branches' filter scores summed, and kept indices k expand to
conv rows {r*C + k}. The attention fc2 (cardinality `card` groups of R*C/card rows each) writes, for group q and
branch r, rows q*R*cg + r*cg + i for channel q*cg + i (cg = C/card). fc1's hidden channels are their own space.
The conv's R rows per channel count R times in the plan's coverage (`ctx.copies`).
"""
import torch
from torch import nn

from .base import Producer, TimmBlock, scores_of

__all__ = ["SplitAttn", "split_attn_type"]


def split_attn_type():
    """timm's SplitAttn."""
    return SplitAttn().types[0]


class SplitAttn(TimmBlock):
    timm_class = ("timm.layers.split_attn", "SplitAttn")
    label = "split-attn"

    def analyse(self, ctx, name, m, lin):
        radix, card = m.radix, m.fc1.groups
        ctx.copies[f"{name}.conv"] = radix  # channel j is conv rows r*C + j
        if not (type(m.conv) is nn.Conv2d and type(m.fc1) is nn.Conv2d and type(m.fc2) is nn.Conv2d
                and isinstance(m.bn0, (nn.BatchNorm2d, nn.Identity))
                and isinstance(m.bn1, (nn.BatchNorm2d, nn.Identity))):
            ctx.warnings.append(f"SplitAttn {name!r} has unexpected sub-modules: its channels are left unpruned")
            ctx.freeze(lin, f"SplitAttn {name!r} not understood")
            result = (ctx.new_space(m.conv.out_channels // radix, frozen=f"SplitAttn {name!r} not understood"),)
            ctx.conv_out[f"{name}.conv"] = result
            return result
        s = ctx.single(lin, ctx.node, f"SplitAttn {name!r} (grouped conv)")
        if s is not None:
            ctx.constrain(s, groups=m.conv.groups)
        ctx.read(f"{name}.conv", "conv_in", lin)
        out = ctx.new_space(m.conv.out_channels // radix, producer=Producer("block", name, self), groups=card)
        ctx.read(f"{name}.fc1", "conv_in", (out,))
        from .conv import CONV
        hidden = ctx.new_space(m.fc1.out_channels, producer=Producer("conv", f"{name}.fc1", CONV), groups=card)
        if isinstance(m.bn1, nn.BatchNorm2d):
            ctx.read(f"{name}.bn1", "norm", (hidden,))
            ctx.norm_after[f"{name}.fc1"] = f"{name}.bn1"  # for the "bn" criterion
        ctx.read(f"{name}.fc2", "conv_in", (hidden,))
        ctx.conv_out[f"{name}.conv"] = (out,)
        return (out,)

    def scores(self, graph, producer, criterion, generator):
        name = producer.name
        m = graph.modules[name]
        bn = m.bn0 if isinstance(m.bn0, nn.BatchNorm2d) else None
        return scores_of(m.conv, criterion, bn, f"{name}.conv", generator).view(m.radix, -1).sum(0)

    def expand(self, graph, producer, k, size):
        name = producer.name
        m = graph.modules[name]
        c = m.conv.out_channels // m.radix
        rows = (torch.arange(m.radix)[:, None] * c + k[None]).flatten()
        out = {f"{name}.conv": rows}
        if isinstance(m.bn0, nn.BatchNorm2d):
            out[f"{name}.bn0"] = rows
        card, cg = m.fc1.groups, c // m.fc1.groups
        kv = k.view(card, -1) - torch.arange(card)[:, None] * cg
        out[f"{name}.fc2"] = (torch.arange(card)[:, None, None] * m.radix * cg
                              + torch.arange(m.radix)[None, :, None] * cg + kv[:, None, :]).flatten()
        return out


SPLIT_ATTN = SplitAttn()
