"""Mini-batches from a data set, delivered on the active backend.

Every ``iter(loader)`` starts a fresh pass over the data, as in PyTorch: peeking at a batch
with ``next(iter(loader))`` or leaving a ``for`` loop with ``break`` does not make the next
pass shorter.  Each pass takes the next epoch number (the way PyTorch's sampler draws a new
permutation from its generator at every pass), and the order of epoch ``e`` is the
permutation drawn from ``numpy.random.default_rng([seed, e])``: a pure function of
``(seed, e)``.  :meth:`DataLoader.set_epoch` chooses the epoch of the next pass.

:meth:`DataLoader.state_dict` records the most recent pass (its epoch and the number of
batches handed out); after :meth:`DataLoader.load_state_dict` the next ``iter()`` continues
that pass from its next batch (as torchdata's ``StatefulDataLoader``), and later passes start
from the beginning again.  A finished pass records the next epoch at position 0.
"""
from __future__ import annotations

import collections
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend as B
from .collate import default_collate
from .dataset import TensorDataset


class DataLoader:
    """Batches of ``dataset`` on the active backend.

    ``dataset`` is a map-style data set (``__getitem__`` and ``__len__``, e.g. a
    :class:`~nnx.data.TensorDataset`) or a pair ``(x, y)`` of host arrays with equal first
    dimension (wrapped in a ``TensorDataset``; batches are ``(xb, yb)``).

    * ``batch_size``: samples per batch; ``drop_last`` skips the final short batch.
    * ``shuffle``: a new permutation every pass, determined by ``seed`` and the epoch.
      Without ``seed`` one is drawn at construction and kept (so ``state_dict`` resumes).
    * ``collate_fn(samples)`` merges a list of samples into a batch (default:
      :func:`~nnx.data.default_collate`, which stacks arrays and numbers into arrays and
      keeps tuples as tuples).  Every NumPy array in the batch is then moved to the active
      backend.
    * ``transform(xb)`` runs on the whole batch's images (the batch itself, or its first
      field when it is a tuple or list) on the backend, e.g. on the GPU, in the caller's
      thread when the batch is handed out.
    * ``num_workers > 0`` or ``prefetch=True``: background **threads** (not processes, unlike
      PyTorch's workers) fetch and collate the next batches while the caller computes:
      ``max(num_workers, 1)`` threads keep up to ``prefetch_factor`` (default 2) batches per
      thread ready.  Batches, their order and contents are identical with and without
      prefetching: only fetching and collating move to the threads; the device transfer and
      ``transform`` (which may draw random numbers from the backend's generator) stay in the
      caller's thread, in batch order.  A data set whose ``__getitem__`` draws from a
      generator the caller also uses sees another interleaving of draws.  An exception
      raised in a thread is re-raised by ``next()`` for the batch it concerns; the threads
      stop when the pass ends or its iterator is dropped.
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, *,
                 num_workers: int = 0, collate_fn=None, drop_last: bool = False,
                 prefetch_factor: int | None = None, prefetch: bool = False,
                 seed: int | None = None, transform=None):
        if isinstance(dataset, (tuple, list)):
            if len(dataset) != 2:
                raise TypeError("DataLoader expects a Dataset or dataset=(x, y), a pair of "
                                f"arrays; got a {type(dataset).__name__} of {len(dataset)}")
            x, y = (np.asarray(a) for a in dataset)
            if len(x) != len(y):
                raise ValueError(f"DataLoader: x has {len(x)} rows but y has {len(y)}")
            dataset = TensorDataset(x, y)
        elif not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"DataLoader expects a map-style Dataset (with __getitem__ and "
                            f"__len__) or a pair (x, y); got {type(dataset).__name__}")
        if batch_size is None:
            raise ValueError("DataLoader: batch_size=None (unbatched samples) is not "
                             "supported; use batch_size=1 or index the dataset")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_factor is not None and int(prefetch_factor) < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.num_workers = int(num_workers)
        self.prefetch = bool(prefetch) or self.num_workers > 0
        self.prefetch_factor = 2 if prefetch_factor is None else int(prefetch_factor)
        # Without a seed, draw one now and remember it, so state_dict still resumes exactly.
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        self.transform = transform
        self.epoch = 0             # the epoch of the next fresh pass
        self._resume_at = 0        # first batch of the next pass (set by load_state_dict)
        self._latest = None        # the most recent pass (a weak reference)

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    # ------------------------------------------------------------------ order and state
    def set_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch``, from its first batch."""
        self.epoch = int(epoch)
        self._resume_at = 0

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The sample indices of ``epoch`` (default: the next pass's) in visiting order."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(len(self.dataset))
        return np.random.default_rng([self.seed, e]).permutation(len(self.dataset))

    @property
    def position(self) -> int:
        """Batches handed out by the most recent pass (0 once it has finished)."""
        return self._where()[1]

    def _where(self) -> tuple[int, int]:
        it = self._latest() if self._latest is not None else None
        if it is not None and not it.finished:
            return it.epoch, it.position
        return self.epoch, self._resume_at

    def state_dict(self) -> dict:
        epoch, position = self._where()
        return {"epoch": epoch, "position": position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``iter()`` continue the pass recorded in ``state``."""
        n = len(self.dataset)
        if int(state.get("num_samples", n)) != n or int(
                state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ValueError(
                f"DataLoader.load_state_dict: the state is for {state.get('num_samples')} "
                f"samples in batches of {state.get('batch_size')}, this loader has "
                f"{n} in batches of {self.batch_size}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._resume_at = int(state["position"])
        self._latest = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> "_LoaderIter":
        it = _LoaderIter(self, self.epoch, self._resume_at)
        self.epoch += 1
        self._resume_at = 0
        self._latest = weakref.ref(it)
        return it

    def _batch_indices(self, epoch: int) -> list[np.ndarray]:
        idx, b = self.order(epoch), self.batch_size
        return [idx[k * b:(k + 1) * b] for k in range(len(self))]

    def __repr__(self):
        return (f"DataLoader(samples={len(self.dataset)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}"
                + (f", prefetch threads={max(self.num_workers, 1)}" if self.prefetch else "")
                + ")")


def _fetch(dataset, indices, collate_fn):
    """One collated host batch.  Runs in a loader thread: refers to no iterator, so a
    dropped iterator is collected (and stops its threads) while batches are in flight."""
    if collate_fn is default_collate:
        gathered = getattr(dataset, "_gather", None)
        batch = gathered(indices) if gathered is not None else None
        if batch is not None:
            return batch
    return collate_fn([dataset[int(i)] for i in indices])


class _LoaderIter:
    """One pass over a :class:`DataLoader`: epoch ``epoch`` from batch ``start``."""

    def __init__(self, loader: DataLoader, epoch: int, start: int):
        self.epoch, self.position = epoch, start
        self._batches = loader._batch_indices(epoch)
        self.finished = start >= len(self._batches)
        self._dataset, self._collate = loader.dataset, loader.collate_fn
        self._transform = loader.transform
        self._pool, self._pending = None, collections.deque()
        self._next_submit = start
        if loader.prefetch and not self.finished:
            workers = max(loader.num_workers, 1)
            self._depth = workers * loader.prefetch_factor
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nnx-DataLoader")
            self._fill()

    def __iter__(self):
        return self

    def __len__(self) -> int:
        """Batches left in this pass."""
        return 0 if self.finished else len(self._batches) - self.position

    def _fill(self):
        while len(self._pending) < self._depth and self._next_submit < len(self._batches):
            self._pending.append(self._pool.submit(
                _fetch, self._dataset, self._batches[self._next_submit], self._collate))
            self._next_submit += 1

    def __next__(self):
        if self.finished:
            raise StopIteration
        k = self.position
        try:
            if self._pool is not None:
                batch = self._pending.popleft().result()
                self._fill()
            else:
                batch = _fetch(self._dataset, self._batches[k], self._collate)
        except BaseException as exc:
            self.close()
            if hasattr(exc, "add_note"):
                exc.add_note(f"(while the DataLoader loaded batch {k} of epoch {self.epoch})")
            raise
        batch = _to_backend(batch, B.get())
        if self._transform is not None:
            batch = _apply_to_images(self._transform, batch)
        self.position = k + 1
        if self.position >= len(self._batches):
            self.close()
        return batch

    def close(self) -> None:
        """End the pass: cancel batches not yet started and let the threads exit."""
        self.finished = True
        pool, self._pool = self._pool, None
        if pool is not None:
            for f in self._pending:
                f.cancel()
            self._pending.clear()
            pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        try:
            self.close()
        except Exception:      # interpreter shutdown: the threads are going anyway
            pass


def _to_backend(batch, be):
    if isinstance(batch, np.ndarray):
        return be.asarray(np.ascontiguousarray(batch))
    if isinstance(batch, tuple):
        fields = [_to_backend(b, be) for b in batch]
        return type(batch)(*fields) if hasattr(batch, "_fields") else tuple(fields)
    if isinstance(batch, list):
        return [_to_backend(b, be) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_backend(v, be) for k, v in batch.items()}
    return batch


def _apply_to_images(transform, batch):
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):       # named tuple
        return type(batch)(transform(batch[0]), *batch[1:])
    if isinstance(batch, (tuple, list)):
        return type(batch)([transform(batch[0]), *batch[1:]])
    return transform(batch)


__all__ = ["DataLoader"]
