"""Data-parallel training over processes, nodes and GPUs: MPI (``mpi4py``) starts and
connects the processes and reduces NumPy arrays; NCCL (``cupy.cuda.nccl``) reduces GPU
arrays.  Install with ``pip install 'nnx[mpi]'``; launch with ``mpiexec -n N python ...``.

* :func:`init` / :class:`Communicator`: rank, size, local rank, in-place collectives;
* :class:`DistributedDataParallel`, :func:`broadcast_parameters`: averaged gradients in a
  few flat buckets, identical initial weights;
* :class:`DistributedSampler`, :class:`ShardedDataLoader`: per-epoch shards from a seed;
* :class:`SyncBatchNorm`, :func:`convert_sync_batchnorm`: batch statistics of the global
  batch.
"""
from .communicator import Communicator, DistributedUnavailable, import_mpi, init
from .data_parallel import DistributedDataParallel, broadcast_parameters
from .sampler import DistributedSampler, ShardedDataLoader
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["Communicator", "DistributedUnavailable", "import_mpi", "init",
           "DistributedDataParallel", "broadcast_parameters", "DistributedSampler",
           "ShardedDataLoader", "SyncBatchNorm", "convert_sync_batchnorm"]
