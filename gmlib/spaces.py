"""Union-find over channel spaces: each space has a size, the producers whose filters are its channels, and
constraints that travel with it when spaces are unified at an add.

`groups` (prune the same number in each of `groups` equal blocks) and `unit` (remove whole blocks of `unit`) combine
by least common multiple: a space that is both a grouped conv's output (g) and a GroupNorm's input (u) needs both.
`frozen` collects the reasons a space is never pruned.
"""
import math

import torch

__all__ = ["Spaces"]


class Spaces:
    """Union-find over channel spaces, each with a size, producers and constraints."""

    def __init__(self):
        self.parent, self.size, self.producers, self.groups, self.unit, self.frozen = [], [], [], [], [], []

    def new(self, size, producer=None, frozen=None, groups=1):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.producers.append([producer] if producer else [])
        self.groups.append(int(groups))
        self.unit.append(1)
        self.frozen.append([frozen] if frozen else [])
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        a, b = min(a, b), max(a, b)  # the older space stays the root: producers listed in graph order
        self.parent[b] = a
        self.producers[a] += self.producers[b]
        self.groups[a] = math.lcm(self.groups[a], self.groups[b])
        self.unit[a] = math.lcm(self.unit[a], self.unit[b])
        self.frozen[a] += self.frozen[b]

    def freeze(self, layout, reason):
        for s in layout or ():
            self.frozen[self.find(s)].append(reason)

    def follow(self, layout):
        """Its convs become followers: they lose the channels the space loses but do not vote (gates)."""
        for s in layout:
            r = self.find(s)
            self.producers[r] = [p.as_follower() for p in self.producers[r]]

    def constrain(self, s, groups=1, unit=1):
        s = self.find(s)
        self.groups[s] = math.lcm(self.groups[s], int(groups))
        self.unit[s] = math.lcm(self.unit[s], int(unit))

    def roots(self):
        return sorted({self.find(i) for i in range(len(self.parent))})

    def layout_kept(self, layout, kept_space):
        """Kept indices along spaces laid side by side (None when none of them loses a channel)."""
        if not any(self.find(s) in kept_space for s in layout):
            return None
        parts, offset = [], 0
        for s in layout:
            k = kept_space.get(self.find(s))
            parts.append((k if k is not None else torch.arange(self.size[s])) + offset)
            offset += self.size[s]
        return torch.cat(parts)
