"""Run a C kernel over chunks of its items on nnx's C thread pool (``kernels/cpu/parallel.c``).

Every C kernel has a *task* entry point ``<name>_task(args, a, b)`` that handles the items
``[a, b)`` (images, channels or weight-gradient groups), with its arguments packed as 64-bit
integers.  :func:`run` makes one ctypes call: the pool runs chunk 0 on the calling thread (the
GIL is released) and the others on C threads that spin briefly between calls, so a parallel
call costs microseconds instead of the ~65 us of a round trip through Python's thread pool
(measured in bench/NOTES.md).  The chunks are those of
:func:`nnx.backend.cpu_parallel.chunk_bounds` for ``k = chunks_for(n, min_items)``: fixed by
``(n, NNX_NUM_THREADS)``, exactly as before, so results do not change.

Without the pool library (it failed to build) the same chunks run on Python's thread pool.
"""
from __future__ import annotations

import numpy as np

from . import native
from .cpu_parallel import chunks_for, parallel_chunks


def pack(*values) -> np.ndarray:
    """The task's argument block: ints, and arrays / None as their address / 0."""
    return np.array([0 if v is None else v.ctypes.data if isinstance(v, np.ndarray) else int(v)
                     for v in values], dtype=np.int64)


def run(task, args: np.ndarray, n: int, min_items: int = 1) -> int:
    """Run ``task`` (from :func:`nnx.backend.native.task`) over ``range(n)`` in
    ``chunks_for(n, min_items)`` chunks; returns the first nonzero code (chunk order) or 0.
    ``args`` must stay alive during the call (it does: the caller holds it)."""
    fn, addr = task
    ptr = args.ctypes.data
    if n <= 0:
        return 0
    k = chunks_for(n, min_items)
    if k <= 1:
        return fn(ptr, 0, n)
    pool = native.pool()
    if pool is not None:
        return pool.nnx_parallel_run(addr, ptr, n, k)
    codes = parallel_chunks(n, lambda a, b: fn(ptr, a, b), min_items)
    return next((c for c in codes if c), 0)
