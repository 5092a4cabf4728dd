"""Mini-batches from host arrays, delivered on the active backend.

Order is a pure function of ``(seed, epoch)``: epoch ``e`` uses the permutation drawn from
``numpy.random.default_rng([seed, e])``, so a run can be resumed at any batch by restoring
:meth:`DataLoader.state_dict` (epoch counter and position inside the epoch).
"""
from __future__ import annotations

import numpy as np

from .. import backend as B


class DataLoader:
    """Iterate over ``dataset = (x, y)`` (host NumPy arrays with equal first dimension) in
    batches ``(xb, yb)`` on the active backend, with ``transform(xb)`` applied to the images
    of each whole batch (on the backend, e.g. on the GPU).

    * ``shuffle``: a new permutation each epoch, determined by ``seed`` and the epoch counter.
    * ``drop_last``: skip the final short batch.
    * The epoch counter advances when an iteration runs to the end; :meth:`set_epoch` sets it
      explicitly.  ``position`` counts the batches already handed out in the current epoch,
      so that ``load_state_dict(state_dict())`` resumes in the middle of an epoch.
    * Batches are produced lazily (no prefetch), so random numbers a transform draws for
      batch ``k+1`` are drawn only when that batch is requested.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, transform=None):
        if not isinstance(dataset, (tuple, list)) or len(dataset) != 2:
            raise TypeError("DataLoader expects dataset=(x, y), a pair of arrays")
        x, y = (np.asarray(a) for a in dataset)
        if len(x) != len(y):
            raise ValueError(f"DataLoader: x has {len(x)} rows but y has {len(y)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        # Without a seed, draw one now and remember it, so state_dict still resumes exactly.
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        self.transform = transform
        self.epoch = 0
        self.position = 0

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    # ------------------------------------------------------------------ order and state
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch on the next iteration."""
        self.epoch = int(epoch)
        self.position = 0

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The sample indices of ``epoch`` (default: the current one) in visiting order."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, e]).permutation(len(self.x))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_samples": len(self.x)}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("num_samples", len(self.x))) != len(self.x) or int(
                state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ValueError(
                f"DataLoader.load_state_dict: the state is for {state.get('num_samples')} "
                f"samples in batches of {state.get('batch_size')}, this loader has "
                f"{len(self.x)} in batches of {self.batch_size}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        be = B.get()
        idx = self.order()
        n_batches = len(self)
        while self.position < n_batches:
            k = self.position
            sel = idx[k * self.batch_size:(k + 1) * self.batch_size]
            if self.shuffle:
                xb, yb = self.x[sel], self.y[sel]      # gather on the host: one transfer
            else:
                xb, yb = self.x[sel[0]:sel[-1] + 1], self.y[sel[0]:sel[-1] + 1]
            xb = be.asarray(np.ascontiguousarray(xb))
            yb = be.asarray(np.ascontiguousarray(yb))
            if self.transform is not None:
                xb = self.transform(xb)
            self.position = k + 1
            yield xb, yb
        self.epoch += 1
        self.position = 0

    def __repr__(self):
        return (f"DataLoader(samples={len(self.x)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})")


__all__ = ["DataLoader"]
