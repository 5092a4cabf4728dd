"""Batch-parallel helper for the NumPy backend: split work along the batch over a few threads.

NumPy releases the GIL inside copies, ufuncs and BLAS calls, so contiguous batch chunks run
truly in parallel on a persistent thread pool.  Rules that keep results deterministic:

* chunk boundaries depend only on ``(n, num_threads())`` (:func:`chunk_bounds`);
* every chunk writes a disjoint slice of preallocated outputs;
* reductions (weight / bias gradients) return one partial per chunk, summed by the caller in
  chunk order.

``NNX_NUM_THREADS`` (read at every call) sets the number of chunks; default: the CPUs this process may run on.
``NNX_NUM_THREADS=1`` is the serial path.  Chunked matrix products must not also use BLAS's own
threads (2 chunks x 2 BLAS threads on 2 cores is ~1.7x slower than either alone, measured in
bench/NOTES.md): :func:`blas_limited` caps BLAS at one thread through threadpoolctl when it is
installed (optional); without it :func:`can_split_gemm` is False and callers keep their matrix
products whole.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_local = threading.local()          # .busy: this thread is running a chunk
_blas = None                        # list of BLAS controllers (threadpoolctl), [] if none
_blas_depth = 0
_blas_saved: list[int] = []


def _reset_after_fork():
    # a forked child inherits the pool object but not its threads: submit() would hang
    global _pool, _pool_size, _lock, _blas_depth
    _pool, _pool_size, _lock, _blas_depth = None, 0, threading.Lock(), 0
    _local.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def num_threads() -> int:
    """Chunks per parallel call: ``NNX_NUM_THREADS`` or the number of CPUs (at least 1)."""
    v = os.environ.get("NNX_NUM_THREADS", "").strip()
    if v:
        try:
            return max(1, int(v))
        except ValueError:
            raise ValueError(f"NNX_NUM_THREADS must be a positive integer, got {v!r}") from None
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def chunk_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous ranges covering ``range(n)``, sizes differing by at most one (the
    first ``n % k`` ranges are one longer) -- fixed for given ``(n, k)``."""
    k = max(1, min(k, n))
    q, r = divmod(n, k)
    out, a = [], 0
    for i in range(k):
        b = a + q + (i < r)
        out.append((a, b))
        a = b
    return out


def chunks_for(n: int, min_items: int = 1) -> int:
    """How many chunks :func:`parallel_chunks` would use for ``n`` items (1 = serial)."""
    if getattr(_local, "busy", False):
        return 1                     # nested call inside a chunk: stay serial
    return max(1, min(num_threads(), n // max(1, min_items)))


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="nnx-cpu")
            _pool_size = size
        return _pool


def _run(fn, a, b):
    _local.busy = True
    try:
        return fn(a, b)
    finally:
        _local.busy = False


def parallel_chunks(n: int, fn, min_items: int = 1) -> list:
    """Call ``fn(start, stop)`` on contiguous chunks of ``range(n)``, in parallel, and return
    their results in chunk order.  Chunk 0 runs on the calling thread; at most ``n //
    min_items`` chunks.  Serial (one call ``fn(0, n)``) with ``NNX_NUM_THREADS=1`` or when
    called from inside a chunk.  The first exception raised by a chunk is re-raised."""
    k = chunks_for(n, min_items)
    if k <= 1:
        return [fn(0, n)]
    bounds = chunk_bounds(n, k)
    futs = [_executor(k - 1).submit(_run, fn, a, b) for a, b in bounds[1:]]
    try:
        first = _run(fn, *bounds[0])
    finally:
        rest = []
        err = None
        for f in futs:                # always wait: chunks write into the caller's arrays
            try:
                rest.append(f.result())
            except BaseException as e:  # noqa: BLE001 -- re-raised below
                err = err or e
    if err is not None:
        raise err
    return [first] + rest


# ------------------------------------------------------------------------- BLAS threads
def _blas_controllers():
    global _blas
    if _blas is None:
        try:
            import threadpoolctl
            ctl = threadpoolctl.ThreadpoolController()
            _blas = [c for c in ctl.lib_controllers if c.user_api == "blas"]
        except Exception:            # not installed, or it failed to inspect the libraries
            _blas = []
    return _blas


def can_split_gemm() -> bool:
    """True when BLAS can be capped at one thread for chunked matrix products."""
    return bool(_blas_controllers())


def cap_blas_threads(n: int) -> None:
    """At most ``n`` BLAS threads from now on (a no-op without threadpoolctl)."""
    for c in _blas_controllers():
        if c.get_num_threads() > n:
            c.set_num_threads(n)


@contextmanager
def blas_limited():
    """BLAS at one thread inside the block (re-entrant); a no-op without threadpoolctl."""
    global _blas_depth, _blas_saved
    libs = _blas_controllers()
    with _lock:
        if _blas_depth == 0 and libs:
            _blas_saved = [c.get_num_threads() for c in libs]
            for c in libs:
                c.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _lock:
            _blas_depth -= 1
            if _blas_depth == 0 and libs:
                for c, nt in zip(libs, _blas_saved):
                    c.set_num_threads(nt)
