"""Test helpers for nnx's C kernels: whether they build here (tests that need them skip
otherwise), and how their wrappers split work over threads."""
from __future__ import annotations

import os
import warnings

from nnx.backend import native


def c_kernels_build(*stems) -> bool:
    """True when every ``kernels/cpu/<stem>.c`` builds and loads (NNX_CPU_KERNELS=1 would
    raise otherwise); the loaded state is reset afterwards."""
    saved = os.environ.pop("NNX_CPU_KERNELS", None)
    try:
        native.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return all(native.library(s) is not None for s in stems)
    except Exception:       # noqa: BLE001
        return False
    finally:
        if saved is not None:
            os.environ["NNX_CPU_KERNELS"] = saved
        native.reset()


def count_chunks(monkeypatch, *modules) -> list:
    """Record, for every parallel call that any of ``modules`` makes (``parallel_chunks`` on
    Python threads, or ``cpu_tasks.run`` on the C pool), how many chunks it runs (one list for
    all of them, filled as the calls happen)."""
    from nnx.backend import cpu_parallel, cpu_tasks
    chunks = []
    real = cpu_parallel.parallel_chunks
    real_run = cpu_tasks.run

    def counting(n, fn, min_items=1):
        chunks.append(cpu_parallel.chunks_for(n, min_items))
        return real(n, fn, min_items)

    def counting_run(task, args, n, min_items=1):
        chunks.append(cpu_parallel.chunks_for(n, min_items) if n > 0 else 1)
        return real_run(task, args, n, min_items)

    for module in modules:
        if hasattr(module, "parallel_chunks"):
            monkeypatch.setattr(module, "parallel_chunks", counting)
        if hasattr(module, "cpu_tasks"):
            monkeypatch.setattr(cpu_tasks, "run", counting_run)
    return chunks
