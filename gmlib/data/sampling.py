"""Which strips a training epoch draws: defect images `factor` times as often as clean ones, with replacement.

One draw, many loader workers: `WeightedDraws` pairs every drawn index with a seed of its own, which the dataset's
random crop and flips then use, so a sample does not depend on which worker makes it (or how many there are).
One draw, many processes: `DistributedWeightedSampler` makes the draw of `WeightedRandomSampler` (seed + epoch) on
every rank and gives rank r of W every W-th index, so the k-th batches of B / W on the W ranks together are the k-th
batch of B of one process: the same samples, whatever W.
"""
import torch
from torch.utils.data import Sampler

__all__ = ["oversampling_weights", "WeightedDraws", "DistributedWeightedSampler"]


def oversampling_weights(dataset, factor: float) -> list:
    """A sampling weight per image of `dataset` (a SeverstalDataset): `factor` if it carries a defect, else 1."""
    if not factor > 0:
        raise ValueError(f"defect oversampling factor must be positive, got {factor!r}")
    return [float(factor) if has else 1.0 for has in dataset.has_defect()]


class WeightedDraws(Sampler):
    """`num_samples` (index, seed) pairs per pass: indices drawn with replacement by `weights`, each with a seed for
    that sample's augmentation (`SeverstalDataset` takes the pair). One generator, seeded with `seed`, makes both,
    pass after pass, in the loader's main process: the batches are the same for 0, 1 or 8 workers."""

    def __init__(self, weights, num_samples: int, *, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = int(num_samples)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        index = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=self.generator)
        seeds = torch.randint(0, 2 ** 62, (self.num_samples,), generator=self.generator)
        return iter(zip(index.tolist(), seeds.tolist()))

    def __len__(self):
        return self.num_samples


class DistributedWeightedSampler(Sampler):
    """`num_samples` indices drawn with replacement by `weights` from a generator seeded with seed + epoch (as
    `WeightedRandomSampler` draws them); this rank keeps positions rank, rank + W, ... of that one draw."""

    def __init__(self, weights, num_samples: int, *, rank: int = 0, world: int = 1, seed: int = 0):
        if num_samples % world:
            raise ValueError(f"num_samples {num_samples} must be a multiple of the {world} processes")
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples, self.rank, self.world, self.seed, self.epoch = num_samples, rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return iter(draw[self.rank::self.world].tolist())

    def __len__(self):
        return self.num_samples // self.world
