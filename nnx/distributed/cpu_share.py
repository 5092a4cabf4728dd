"""Each process of a node gets its share of the node's CPUs.

``mpiexec -n P`` starts P processes on one machine, and each of them would otherwise run
``os.cpu_count()`` threads in nnx's pool *and* in BLAS (OpenBLAS spins while it waits for
work): P times too many threads for the cores.  Measured on a 2-core machine with 2 ranks
(bench/distributed_step.py, reference CNN, batch 32 per process): 118 ms per step with every
rank's BLAS at 2 threads, 4.2 ms with BLAS at 1 thread (bench/NOTES.md).  So a rank that
shares its node uses ``cpus // local_size`` threads (or ``NNX_NUM_THREADS`` when the user set
it), for nnx's pool and for BLAS (through threadpoolctl, when installed).
"""
from __future__ import annotations

import os

from ..backend import cpu_parallel


def share_cpus(local_size: int, cpus: int | None = None) -> int:
    """Give this process ``cpus // local_size`` threads (at least 1), for nnx's pool and
    BLAS, when it shares the node (``local_size > 1``); a set ``NNX_NUM_THREADS`` is kept
    and caps BLAS as well.  Returns the thread count it will use."""
    if local_size <= 1:
        return cpu_parallel.num_threads()            # alone on the node: as it is
    if os.environ.get("NNX_NUM_THREADS", "").strip():
        threads = cpu_parallel.num_threads()         # the user's choice, for BLAS too
    else:
        cpus = cpus or cpu_parallel.num_threads()    # the CPUs this process may use
        threads = max(1, int(cpus) // int(local_size))
        os.environ["NNX_NUM_THREADS"] = str(threads)  # read by nnx's pool at every call
    cpu_parallel.cap_blas_threads(threads)
    return threads
