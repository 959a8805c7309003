"""The order of a training epoch: shuffled, or in batches balanced over classes.

A sampler is called with the epoch's CPU generator and returns the sample indices of the
epoch in batch order; :class:`~annotlib.data.DeviceBatches` cuts them into batches. Every
draw comes from that generator, so an epoch replays exactly when a killed run resumes
(the reason these are not pytorch-metric-learning's samplers, which draw from numpy's
global state).
"""

from __future__ import annotations

import torch


class Shuffled:
    """Every sample once per epoch, in a random order."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator)


class MPerClass:
    """Batches of ``batch_size`` that hold every class with at least ``m`` images each.

    Each batch is ``batch_size // m`` groups of ``m`` images of one class: one group of
    every class, then groups of classes drawn at random to fill it (so ``batch_size`` must
    be a multiple of ``m`` and at least ``m`` times the number of classes). Within a class,
    images come in a fresh random order each time the class's images run out, so every
    image is seen about equally often. An epoch has ``len(category_ids) // batch_size`` batches.
    """

    def __init__(self, category_ids: torch.Tensor, m: int, batch_size: int):
        category_ids = torch.as_tensor(category_ids, dtype=torch.long)
        self.members = [torch.nonzero(category_ids == k).flatten() for k in range(int(category_ids.max()) + 1)]
        k = len(self.members)
        if m < 1 or batch_size % m or batch_size < m * k:
            raise ValueError(f"batch_size {batch_size} must be a multiple of m={m} and at least "
                             f"m x {k} classes = {m * k}")
        empty = [c for c, idx in enumerate(self.members) if len(idx) == 0]
        if empty:
            raise ValueError(f"classes {empty} have no sample; every class needs {m}")
        self.m, self.batch_size = m, batch_size
        self.num_batches = max(1, len(category_ids) // batch_size)

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        k, groups = len(self.members), self.batch_size // self.m
        extra = torch.randint(k, (self.num_batches, groups - k), generator=generator)
        classes = torch.cat([torch.arange(k).expand(self.num_batches, k), extra], 1).flatten()
        need = torch.bincount(classes, minlength=k) * self.m
        streams = []
        for c, idx in enumerate(self.members):
            rounds = -(-int(need[c]) // len(idx))  # whole fresh permutations, so none repeats early
            streams.append(torch.cat([idx[torch.randperm(len(idx), generator=generator)]
                                      for _ in range(rounds)])[:need[c]])
        taken = [0] * k
        order = []
        for c in classes.tolist():
            order.append(streams[c][taken[c]:taken[c] + self.m])
            taken[c] += self.m
        return torch.cat(order)
