"""``nnx-train --distributed``: the world of a data-parallel run (see :mod:`nnx.train_loop`)
and how its processes end together.

Launch one process per GPU (or per CPU socket) with ``mpiexec -n N nnx-train --distributed
...``.  ``--batch-size`` is the global batch: each rank takes ``batch/N`` samples of every
step (:class:`~nnx.distributed.ShardedDataLoader`), BatchNorm layers become
:class:`~nnx.distributed.SyncBatchNorm`, rank 0's initial weights are broadcast and the
gradients are averaged before each step (:class:`~nnx.distributed.DistributedDataParallel`).
So, without augmentation, N processes take the same steps as one process at the same
global batch (to float rounding).  Rank 0 alone prints, logs, plots and checkpoints; every
rank resumes from the one checkpoint.  With augmentation rank 0 draws as a single process
would and the other ranks from their own seeds.

Ending together: the NaN/inf checks and Ctrl-C are agreed on by all ranks (an all-reduce
of the flag), so they stop at the same step.  Any other exception on a rank prints a message
naming the rank and calls ``MPI_Abort``, which ends every process of the job with a
non-zero status at once (a rank killed outright is detected by ``mpiexec``, which ends the
others).  Errors every rank meets alike before training (a bad setting, missing data) are
printed once, by rank 0, when all ranks have reached them within a few seconds.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback

from . import backend as B
from .train_loop import SingleProcess
from .train_options import ConfigError

#: Seconds a rank with a setup error waits for the others to report it too.
AGREE_SECONDS = 10.0
#: Seconds between a failing rank's message and MPI_Abort: mpiexec forwards the output of
#: the ranks asynchronously, and an abort right away loses it at times.
ABORT_GRACE_SECONDS = 1.0


class TrainerWorld(SingleProcess):
    """The ranks of an MPI job training one model (``comm``: a
    :class:`~nnx.distributed.Communicator`)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size, self.is_main = comm.rank, comm.size, comm.is_main
        self.ddp = None

    def check_settings(self, cfg: dict) -> None:
        self.seed = cfg["seed"]
        if cfg["batch_size"] % self.size:
            raise ConfigError(f"--distributed: the batch size {cfg['batch_size']} (the "
                              f"global batch) is not divisible by the {self.size} processes; "
                              f"give a multiple of {self.size}")

    def prepare_model(self, model):
        from .distributed import DistributedDataParallel, convert_sync_batchnorm
        model = convert_sync_batchnorm(model, self.comm)
        self.ddp = DistributedDataParallel(model, self.comm)
        if self.rank > 0:
            self._reseed(0)
        return model

    def _reseed(self, position: int) -> None:
        """A rank other than 0 draws its augmentation from its own stream."""
        B.get().manual_seed((self.seed * 1_000_003 + self.rank * 7_919 + position) % 2 ** 62)

    def make_loader(self, dataset, batch_size, seed, transform):
        from .distributed import ShardedDataLoader
        return ShardedDataLoader(dataset, batch_size, self.size, self.rank, seed=seed,
                                 transform=transform)

    def after_restore(self, seed: int, position: int) -> None:
        if self.rank > 0:       # every rank restored rank 0's generator from the checkpoint
            self._reseed(position + 1)

    def average_gradients(self, model) -> None:
        self.ddp.sync_gradients()

    def any(self, flag: bool) -> bool:
        return self.comm.any(flag)

    def sums(self, values):
        return self.comm.sums(values)

    def test_shard(self, n: int) -> slice:
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def start(self, args) -> None:
        """Print which process is which rank (``mpiexec`` names a rank that dies by its
        pid); on the cuda backend, give each rank GPU ``local_rank`` (ConfigError when the
        node has fewer GPUs than processes)."""
        comm = self.comm
        ranks = comm.comm.gather((os.getpid(), socket.gethostname()), root=0)
        if self.is_main and self.size > 1:
            print(f"nnx-train: {self.size} processes: " + ", ".join(
                f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(ranks)),
                flush=True)
        backend = (args.backend or os.environ.get("NNX_BACKEND", "cpu")).strip().lower()
        if backend in ("cuda", "cupy"):
            from .backend.cupy_backend import _import_cupy
            _, count = _import_cupy()
            if comm.local_size > count:
                raise ConfigError(f"--distributed: {comm.local_size} processes on this node "
                                  f"but only {count} GPU(s); start at most one process per "
                                  "GPU")
            os.environ["NNX_DEVICE"] = str(comm.local_rank)

    # ------------------------------------------------------------------ ending
    def agreed(self, seconds: float = AGREE_SECONDS) -> bool:
        """True when every rank reaches this point within ``seconds`` (a non-blocking
        barrier, polled): they all met the same error."""
        request = self.comm.comm.Ibarrier()
        deadline = time.monotonic() + seconds
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def fail(self, code: int, message: str, *, collective: bool, detail: str = "") -> None:
        """End this rank with ``code`` after ``message`` (one line; ``detail``, e.g. a
        traceback, follows it).  ``collective``: an error every rank raises at the same
        point (printed by rank 0 only); otherwise, or when the others do not arrive, the
        message names the rank and MPI_Abort ends the job."""
        if collective and (self.size == 1 or self.agreed()):
            if self.is_main:
                print(message, file=sys.stderr, flush=True)
            raise SystemExit(code)
        print(f"{message} [rank {self.rank} of {self.size}; aborting all ranks]"
              + (f"\n{detail}" if detail else ""), file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.abort(code)


def make_world(args) -> TrainerWorld:
    """The world of ``--distributed``: MPI's processes (raises DistributedUnavailable
    without mpi4py).  Then :meth:`TrainerWorld.start`."""
    from .distributed import init
    return TrainerWorld(init())


def describe(exc: BaseException) -> tuple[str, str]:
    """A failed rank's one-line message and its traceback."""
    return (f"nnx-train: {type(exc).__name__}: {exc}",
            "".join(traceback.format_exception(exc)).rstrip())
