"""A stand-in for ``cupy.cuda.nccl`` over the simulated CuPy: its communicator reads and
writes the (host) memory at the pointers it is given, as NCCL does the device's, and sums
through MPI (``mpi4py``) across the processes of an ``mpiexec`` job; without mpi4py, one
rank only.  It checks what nnx hands NCCL: in-place pointers, counts, dtypes, the rank
count and rank, and the unique id that rank 0 made.  ``calls`` records each all-reduce's
element count."""
from __future__ import annotations

import ctypes

import numpy as np

try:
    from mpi4py import MPI
except ImportError:          # one process only
    MPI = None

NCCL_SUM = 0
NCCL_INT32, NCCL_INT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 2, 4, 6, 7, 8
_DTYPES = {NCCL_INT32: np.int32, NCCL_INT64: np.int64, NCCL_FLOAT16: np.float16,
           NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
UID = tuple(range(7, 135))   # NCCL's id is 128 bytes
calls: list = []


def _world():
    return (MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()) if MPI else (0, 1)


def get_unique_id():
    assert _world()[0] == 0, "only rank 0 makes the id (the others receive it over MPI)"
    return UID


def _memory(ptr, count, datatype):
    dt = np.dtype(_DTYPES[datatype])
    return np.frombuffer((ctypes.c_char * (count * dt.itemsize)).from_address(ptr), dtype=dt)


class NcclCommunicator:
    def __init__(self, ndev, uid, rank):
        assert (rank, ndev) == _world() and uid == UID, (ndev, rank, uid)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        assert op == NCCL_SUM and sendbuf == recvbuf, "nnx reduces in place"
        calls.append(int(count))
        if MPI is not None and MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, _memory(recvbuf, count, datatype),
                                     op=MPI.SUM)

    def bcast(self, buff, count, datatype, root, stream):
        if MPI is not None and MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Bcast(_memory(buff, count, datatype), root=root)
