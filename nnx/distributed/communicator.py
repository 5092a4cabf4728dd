"""The processes of a data-parallel job and their collective operations, on MPI (``mpi4py``).

:func:`init` wraps MPI's world (processes started by ``mpiexec``/``srun``): ``rank`` and
``size`` are the world's, ``local_rank``/``local_size`` those of the node (MPI's
``COMM_TYPE_SHARED`` split: the processes that share memory), which picks the GPU a rank
uses.  Collectives act **in place** on arrays of the active backend:

* CPU: ``MPI.Allreduce(IN_PLACE, buffer)`` / ``Bcast`` straight on the NumPy array's memory
  (a C-contiguous array is passed as it is: no copy);
* CUDA: NCCL on the device memory (:class:`nnx.distributed.nccl.NcclReducer`), set up with a
  unique id that rank 0 makes and broadcasts over MPI.

As ChainerMN's communicator, it also carries the small host-side agreements a training loop
needs (:meth:`Communicator.any`, :meth:`Communicator.sums`).
"""
from __future__ import annotations

import numpy as np

from .cpu_share import share_cpus


class DistributedUnavailable(RuntimeError):
    """Distributed training was asked for but MPI (mpi4py) is not installed or usable."""


def import_mpi():
    """``mpi4py.MPI``, or :class:`DistributedUnavailable` saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailable(
            f"distributed training needs mpi4py and an MPI library ({exc}); install them "
            "with: pip install 'nnx[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"
        ) from None
    return MPI


class Communicator:
    """Collectives over the processes of ``comm`` (an ``mpi4py`` communicator).

    ``device_reducer``: an object with ``allreduce_(array)`` and ``bcast_(array, root)`` for
    device arrays (NCCL); made on first use on the ``cuda`` backend unless given."""

    def __init__(self, comm, device_reducer=None):
        self.MPI = import_mpi()
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._device = device_reducer

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ arrays
    def _on_device(self, array) -> bool:
        return not isinstance(array, np.ndarray) or type(array).__module__.startswith("cupy")

    def use_nccl(self, nccl=None) -> "Communicator":
        """Set up NCCL for device arrays now (collective: every rank calls it); ``nccl``:
        a module with ``cupy.cuda.nccl``'s names (default: that one)."""
        from .nccl import NcclReducer
        self._device = NcclReducer(self, nccl)
        return self

    def device_reducer(self):
        if self._device is None:
            self.use_nccl()
        return self._device

    def allreduce_(self, array):
        """Sum ``array`` over the ranks, in place (a C-contiguous array of the backend)."""
        _check_contiguous(array, "allreduce_")
        if self.size == 1:
            return array
        if self._on_device(array):
            return self.device_reducer().allreduce_(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def bcast_(self, array, root: int = 0):
        """Overwrite ``array`` on every rank with rank ``root``'s, in place."""
        _check_contiguous(array, "bcast_")
        if self.size == 1:
            return array
        if self._on_device(array):
            return self.device_reducer().bcast_(array, root)
        self.comm.Bcast(array, root=root)
        return array

    # ------------------------------------------------------------------ host values
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if self.size == 1:
            return bool(flag)
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def sums(self, values):
        """Element-wise sums over the ranks of a few host numbers, as floats (float64:
        exact for integers below 2**53)."""
        buf = np.asarray(values, dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return [float(v) for v in buf]

    def bcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job (``MPI_Abort``): a rank that fails must not leave
        the others waiting in a collective."""
        self.comm.Abort(code)


def _check_contiguous(array, what):
    if not array.flags.c_contiguous:
        raise ValueError(f"Communicator.{what}: the array must be C-contiguous (the "
                         "collective works on its memory in place); got strides "
                         f"{array.strides} for shape {tuple(array.shape)}")


_WORLD = None


def init(device_reducer=None) -> Communicator:
    """The communicator of MPI's world (created once per process).  Unless
    ``NNX_NUM_THREADS`` is set, each of a node's ranks then runs ``cpus // local_size``
    threads in nnx and in BLAS (:func:`nnx.distributed.cpu_share.share_cpus`)."""
    global _WORLD
    if _WORLD is None:
        MPI = import_mpi()
        _WORLD = Communicator(MPI.COMM_WORLD, device_reducer)
        share_cpus(_WORLD.local_size)   # P ranks on a node: each its share of the cores
    return _WORLD

