"""The NCCL path on the simulated CuPy (tests/cuda_sim), run under ``mpiexec -n 2`` by
tests/test_distributed_mpi.py: ``python nccl_sim.py BUILD_DIR``.

tests/cuda_sim/fake_nccl.py stands in for ``cupy.cuda.nccl``: it reads and writes the
device memory at the pointers it is given and sums through MPI, checking what nnx hands NCCL
(pointers, counts, dtypes, the unique id from rank 0).  On the simulated ``cuda`` backend,
each rank runs a SyncBatchNorm and a Linear layer on its half of a batch, averages the
gradients with DistributedDataParallel, and compares with the whole batch on the CPU
backend."""
import sys

import numpy as np
from mpi4py import MPI

import fake_nccl
import sim_backend

import nnx
import nnx.backend as B
from nnx.distributed import Communicator, DistributedDataParallel, SyncBatchNorm
from nnx.nn import Linear, Sequential

WORLD = MPI.COMM_WORLD


def model(comm):
    nnx.manual_seed(3)
    return Sequential(Linear(6, 4), SyncBatchNorm(4, process_group=comm), Linear(4, 3))


def main(build_dir):
    rank, size = WORLD.Get_rank(), WORLD.Get_size()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    dy = rng.standard_normal((8, 3)).astype(np.float32)
    # the whole batch on the CPU, one process: the reference
    B.use("cpu")
    ref = model(None)
    ref(x)
    ref.backward(dy / size, input_grad=False)   # (dL/dy of the mean over the global batch)
    want = [p.grad.copy() for p in ref.parameters()]
    want_stats = ref[1].running_mean.copy(), ref[1].running_var.copy()
    with sim_backend.simulated_backend(build_dir) as be:
        import nnx.backend as NB
        NB._INSTANCES["cuda"] = be
        B.use("cuda")
        comm = Communicator(WORLD).use_nccl(fake_nccl)
        net = model(comm)
        if rank == 1:   # another initialisation: the broadcast must replace it
            for p in net.parameters():
                p.data[...] = be.xp.asarray(np.full(p.data.shape, 9, np.float32))
        ddp = DistributedDataParallel(net, comm)
        part = slice(rank * 8 // size, (rank + 1) * 8 // size)
        ddp(be.asarray(x[part]))
        ddp.backward(be.asarray(dy[part]), input_grad=False)
        got = [be.to_numpy(p.grad) for p in net.parameters()]
        stats = be.to_numpy(net[1].running_mean), be.to_numpy(net[1].running_var)
    # float32 sums of <= 8 terms in another order, through <= 4 reductions (2 Linear, the
    # batch norm's two): 2·4·8 rounding units of the largest magnitude involved (the first
    # bias's gradient is 0 up to rounding: batch norm cancels it, so no relative test)
    scale = max(np.abs(w).max() for w in want + list(want_stats))
    for g, w in zip(got + list(stats), want + list(want_stats)):
        assert np.abs(g - w).max() <= 64 * np.finfo(np.float32).eps * scale, (g, w)
    assert fake_nccl.calls, "NCCL was not used"
    print(f"rank {rank}: ok, NCCL all-reduce sizes {fake_nccl.calls}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
