"""Map-style data sets (PyTorch's ``torch.utils.data`` names): ``Dataset``,
``TensorDataset``, ``Subset`` and ``random_split``.

A map-style data set is anything with ``__getitem__(i)`` for ``0 <= i < len(ds)`` and
``__len__``; :class:`~nnx.data.DataLoader` batches it.  Samples are host NumPy arrays
(or numbers); the loader moves each collated batch to the active backend.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


class Dataset:
    """Base class of map-style data sets: subclasses implement ``__getitem__(index)``
    (one sample) and ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def _gather(self, indices):
        """A whole batch at once, already collated, or ``None`` (fetch sample by sample).
        Used by the loader only with the default collate, and only where the result equals
        ``default_collate([self[i] for i in indices])`` exactly."""
        return None


class TensorDataset(Dataset):
    """Samples ``(a[i] for a in arrays)`` of arrays that share their first dimension."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one array")
        self.tensors = tuple(np.asarray(t) for t in tensors)
        sizes = [len(t) if t.ndim else None for t in self.tensors]
        if None in sizes:
            raise ValueError("TensorDataset: every array needs a first (sample) dimension; "
                             f"array {sizes.index(None)} is 0-d")
        if len(set(sizes)) > 1:
            raise ValueError(f"TensorDataset: size mismatch between arrays: first dimensions "
                             f"{sizes}")

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return len(self.tensors[0])

    def _gather(self, indices):
        # a[idx] equals stack([a[i] for i in idx]) element for element (both copy)
        idx = np.asarray(indices)
        if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            return tuple(np.ascontiguousarray(t[idx[0]:idx[0] + len(idx)])
                         for t in self.tensors)
        return tuple(t[idx] for t in self.tensors)


class Subset(Dataset):
    """The samples ``dataset[indices[i]]``."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __getitem__(self, index):
        if isinstance(index, (list, np.ndarray)):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __len__(self):
        return len(self.indices)

    def _gather(self, indices):
        inner = getattr(self.dataset, "_gather", None)
        return None if inner is None else inner([self.indices[int(i)] for i in indices])


def _split_lengths(n: int, lengths) -> list[int]:
    """Counts from counts or fractions, as PyTorch 2.x: fractions that sum to 1 become
    ``floor(n · f)`` each, and the remainder goes one by one to the splits in order."""
    lengths = list(lengths)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        if any(not 0 <= f <= 1 for f in lengths):
            raise ValueError(f"random_split: fractions must lie in [0, 1], got {lengths}")
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        return counts
    if any(not isinstance(c, numbers.Integral) or c < 0 for c in lengths):
        raise ValueError(f"random_split: lengths must be non-negative integers or fractions "
                         f"that sum to 1, got {lengths}")
    if sum(lengths) != n:
        raise ValueError(f"random_split: sum of input lengths ({sum(lengths)}) does not equal "
                         f"the length of the input dataset ({n})")
    return [int(c) for c in lengths]


def random_split(dataset, lengths, generator=None, *, seed=None) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random :class:`Subset` s of the given
    ``lengths`` (counts that sum to ``len(dataset)``, or fractions that sum to 1).

    The permutation comes from ``generator`` (a ``numpy.random.Generator``), else from
    ``numpy.random.default_rng(seed)`` when ``seed`` is given, else from nnx's host
    generator (seeded by :func:`nnx.manual_seed`, as PyTorch's global generator is by
    ``torch.manual_seed``).  nnx draws other numbers than PyTorch: the same seed gives
    another split."""
    if generator is not None and seed is not None:
        raise ValueError("random_split: pass generator or seed, not both")
    n = len(dataset)
    counts = _split_lengths(n, lengths)
    if generator is None:
        if seed is not None:
            generator = np.random.default_rng(seed)
        else:
            from ..random import host_rng
            generator = host_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"random_split: generator must be a numpy.random.Generator, got "
                        f"{type(generator).__name__}")
    perm = generator.permutation(n)
    ends = np.cumsum(counts)
    return [Subset(dataset, perm[end - c:end]) for c, end in zip(counts, ends)]


__all__ = ["Dataset", "TensorDataset", "Subset", "random_split"]
