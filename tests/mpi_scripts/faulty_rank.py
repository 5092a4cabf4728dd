"""``nnx-train`` with one rank that fails at its 2nd step (run under mpiexec by
tests/test_distributed_mpi.py): ``python faulty_rank.py RANK raise|kill|nan TRAIN-ARGS...``."""
import os
import signal
import sys

from mpi4py import MPI

import nnx.train as T
import nnx.train_blocks as TB

rank, how = int(sys.argv[1]), sys.argv[2]
real_add = TB._StepMetrics.add
calls = [0]


def add(self, loss, logits, y):
    calls[0] += 1
    if MPI.COMM_WORLD.Get_rank() == rank and calls[0] == 2:
        if how == "raise":
            raise RuntimeError("injected failure")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        loss = loss * float("nan")
    return real_add(self, loss, logits, y)


TB._StepMetrics.add = add
T.main(sys.argv[3:])
