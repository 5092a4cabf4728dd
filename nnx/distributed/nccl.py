"""All-reduce and broadcast of CuPy arrays with NCCL (``cupy.cuda.nccl``).

Rank 0 makes NCCL's unique id (``get_unique_id()``), MPI broadcasts it, and every rank
joins with ``NcclCommunicator(size, id, rank)`` on its own GPU (the backend's device,
``local_rank`` under ``nnx-train --distributed``).  The collectives run on the device
memory, in place, on the current CuPy stream: no host copy.  ``nccl`` can be given (tests
pass a fake communicator whose all-reduce goes through MPI on the host).
"""
from __future__ import annotations

import numpy as np

_NCCL_TYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
               np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int32): "NCCL_INT32",
               np.dtype(np.int64): "NCCL_INT64"}


def _import_nccl():
    from .communicator import DistributedUnavailable
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedUnavailable(
            f"--distributed on the cuda backend needs CuPy's NCCL binding ({exc}); install "
            "NCCL for CuPy (pip install nvidia-nccl-cu12 or -cu13, matching cupy-cudaXx)"
        ) from None
    return nccl


def _stream_ptr(array) -> int:
    """The current CuPy stream (0: the default stream)."""
    import cupy
    get = getattr(cupy.cuda, "get_current_stream", None)
    return int(get().ptr) if get is not None else 0


class NcclReducer:
    """NCCL collectives among the ranks of ``communicator`` (a :class:`Communicator`)."""

    def __init__(self, communicator, nccl=None):
        self.nccl = nccl if nccl is not None else _import_nccl()
        uid = self.nccl.get_unique_id() if communicator.rank == 0 else None
        uid = communicator.bcast_object(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(communicator.size, uid, communicator.rank)

    def _type(self, array):
        try:
            return getattr(self.nccl, _NCCL_TYPES[np.dtype(array.dtype)])
        except KeyError:
            raise TypeError(f"NCCL all-reduce: unsupported dtype {array.dtype}") from None

    def allreduce_(self, array):
        ptr = array.data.ptr
        self.comm.allReduce(ptr, ptr, array.size, self._type(array), self.nccl.NCCL_SUM,
                            _stream_ptr(array))
        return array

    def bcast_(self, array, root: int = 0):
        self.comm.bcast(array.data.ptr, array.size, self._type(array), root,
                        _stream_ptr(array))
        return array
