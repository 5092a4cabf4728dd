"""Per-rank shards of a data set, a new split every epoch from a shared seed (PyTorch's
``DistributedSampler``), and a :class:`~nnx.data.DataLoader` over a shard.

Epoch ``e``'s order is the permutation of :class:`~nnx.data.DataLoader`
(``numpy.random.default_rng([seed, e])``), so every rank draws the same one without
communicating.  Without ``drop_last`` it is padded with its own first indices up to a
multiple of the ``N`` ranks (each rank gets ``⌈n/N⌉`` samples); with ``drop_last`` the tail
is cut (``⌊n/N⌋``).  Rank ``r`` takes positions ``r, r+N, r+2N, ...``.  Consequence used by
the trainer: with per-rank batches of ``b = B/N``, batch ``k`` of the ranks together holds
exactly the samples of batch ``k`` of one process at batch ``B`` (positions ``kB ... kB+B-1``
of the order), and there are as many steps, ``⌈⌈n/N⌉/b⌉ = ⌈n/B⌉``.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.loader import DataLoader


class DistributedSampler:
    """Indices of rank ``rank``'s share of ``dataset`` (a data set or its length)."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        n = dataset if isinstance(dataset, int) else len(dataset)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} is not in [0, {num_replicas})")
        self.n, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        e = self.epoch if epoch is None else int(epoch)
        order = (np.random.default_rng([self.seed, e]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.total_size > self.n:
            pad = self.total_size - self.n
            order = np.concatenate([order, np.resize(order, pad)])
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardedDataLoader(DataLoader):
    """A :class:`~nnx.data.DataLoader` over one rank's shard, in per-rank batches of
    ``global_batch / num_replicas``.  Its ``state_dict`` speaks of the whole run (global
    batch size, data set size, epoch and step), so a checkpoint from a run on any number of
    processes resumes on any other number, a single process included."""

    def __init__(self, dataset, global_batch: int, num_replicas: int, rank: int, *,
                 seed: int, shuffle: bool = True, transform=None):
        if global_batch % num_replicas:
            raise ValueError(f"the batch size {global_batch} is not divisible by the "
                             f"{num_replicas} processes: each must take an equal share")
        super().__init__(dataset, global_batch // num_replicas, shuffle, seed=seed,
                         transform=transform)
        self.sampler = DistributedSampler(len(self.dataset), num_replicas, rank,
                                          shuffle=shuffle, seed=seed)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        return self.sampler.indices(self.epoch if epoch is None else epoch)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["batch_size"] = self.batch_size * self.sampler.num_replicas
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        global_batch = int(state.get("batch_size", self.batch_size * self.sampler.num_replicas))
        state["batch_size"] = global_batch // self.sampler.num_replicas
        if global_batch % self.sampler.num_replicas:
            state["batch_size"] = -1     # the base class then reports the mismatch
        super().load_state_dict(state)
        self.sampler.seed = self.seed
