"""nnx.distributed in one process: the shard sampler (PyTorch's DistributedSampler
semantics, and the union of the ranks' batches is one process's batch), the sharded loader's
state, SyncBatchNorm through the layer harness and against BatchNorm, convert_sync_batchnorm,
the gradient buckets, and the one-line errors of ``--distributed`` that need no second
process.  Real multi-process runs: tests/test_distributed_mpi.py."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import mpi_jobs  # noqa: F401  (puts tests/cuda_sim on the path: sim_backend)
import nnx
from layer_harness import check_layer
from nnx import models
from nnx.data import DataLoader
from nnx.distributed import (DistributedDataParallel, DistributedSampler, ShardedDataLoader,
                             SyncBatchNorm, convert_sync_batchnorm)
from nnx.nn import BatchNorm1d, BatchNorm2d
from tolerances import assert_within, gamma


# ------------------------------------------------------------------ sampler
@pytest.mark.parametrize("n, ranks, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False),
                                                 (5, 2, True)])
def test_sampler_matches_pytorch_without_shuffle(n, ranks, drop_last):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DistributedSampler as TorchSampler
    for rank in range(ranks):
        ours = DistributedSampler(n, ranks, rank, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(range(n), ranks, rank, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)
    assert torch  # (the import is the oracle)


def test_sampler_shards_cover_the_epoch_and_change_with_it():
    n, ranks = 23, 3
    shards = [DistributedSampler(n, ranks, r, seed=4) for r in range(ranks)]
    per_epoch = []
    for epoch in (0, 1):
        for s in shards:
            s.set_epoch(epoch)
        idx = np.concatenate([s.indices() for s in shards])
        assert len(idx) == 3 * 8                      # padded to ceil(23/3) per rank
        assert set(idx.tolist()) == set(range(n))     # every sample, one padded twice
        per_epoch.append(shards[0].indices())
    assert not np.array_equal(*per_epoch)
    with pytest.raises(ValueError, match="rank 3 is not in"):
        DistributedSampler(n, 3, 3)


def test_the_ranks_batches_together_are_one_process_batches():
    rng = np.random.default_rng(0)
    n, batch, ranks = 40, 8, 2          # 40 = 5 global batches of 8
    x, y = rng.standard_normal((n, 3)), np.arange(n)
    single = DataLoader((x, y), batch, shuffle=True, seed=7)
    shards = [ShardedDataLoader((x, y), batch, ranks, r, seed=7) for r in range(ranks)]
    for epoch in (0, 3):
        single.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        whole = [nnx.backend.get().to_numpy(yb) for _, yb in single]
        parts = [[nnx.backend.get().to_numpy(yb) for _, yb in s] for s in shards]
        assert len(whole) == len(parts[0]) == len(parts[1]) == len(single) == len(shards[0])
        for k, yb in enumerate(whole):
            assert sorted(np.concatenate([p[k] for p in parts])) == sorted(yb)


def test_sharded_loader_state_speaks_of_the_global_batch():
    x, y = np.zeros((30, 2)), np.arange(30)
    shard = ShardedDataLoader((x, y), 6, 3, 1, seed=2)
    it = iter(shard)
    next(it), next(it)
    state = shard.state_dict()
    assert state["batch_size"] == 6 and state["position"] == 2 and state["num_samples"] == 30
    single = DataLoader((x, y), 6, shuffle=True, seed=2)
    single.load_state_dict(state)            # a 1-process run resumes the 3-process state
    other = ShardedDataLoader((x, y), 6, 2, 0, seed=0)
    other.load_state_dict(state)             # as does a run on another number of ranks
    assert other.seed == 2 and other.sampler.seed == 2 and other.position == 2
    with pytest.raises(ValueError, match="not divisible by the 4 processes"):
        ShardedDataLoader((x, y), 6, 4, 0, seed=0)


# ------------------------------------------------------------------ SyncBatchNorm
def _make_sync(c, train=True):
    def make(dt):
        rng = np.random.default_rng(5)
        be = nnx.backend.get()
        bn = SyncBatchNorm(c, dtype=dt)
        bn.weight.data[...] = be.asarray(rng.uniform(0.5, 1.5, c))
        bn.bias.data[...] = be.asarray(rng.standard_normal(c))
        bn.running_mean[...] = be.asarray(rng.standard_normal(c))
        bn.running_var[...] = be.asarray(rng.uniform(0.5, 2, c))
        return bn.train(train)
    return make


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 3, 2)])
def test_sync_batchnorm_one_process_harness(backend, rng, shape):
    check_layer(_make_sync(shape[1]), (rng.standard_normal(shape) * 2 + 1,))


def test_sync_batchnorm_eval_harness(backend, rng):
    check_layer(_make_sync(2, train=False), (rng.standard_normal((1, 2, 3, 3)),))


@pytest.mark.parametrize("cls, shape", [(BatchNorm1d, (6, 4)), (BatchNorm2d, (4, 3, 5, 5))])
def test_sync_batchnorm_is_batchnorm_on_one_process(rng, cls, shape):
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    plain, sync = cls(shape[1], dtype=np.float64), SyncBatchNorm(shape[1], dtype=np.float64)
    results = []
    for bn in (plain, sync):
        y = bn(x)
        dx = bn.backward(dy)
        results.append((y, dx, bn.weight.grad, bn.bias.grad, bn.running_mean.copy(),
                        bn.running_var.copy()))
    m = x.size // shape[1]
    # the same equations; the mean is Σx/m here and mean() there, summed in another order
    for got, want in zip(results[1], results[0]):
        assert_within(got, want, 8 * gamma(m, np.float64) * (np.abs(want).max() + 1))


def test_convert_sync_batchnorm_shares_the_parameters():
    model = models.get("resnet", in_channels=1, num_classes=10, image_size=8)
    before = dict(model.state_dict())
    params = {id(p) for p in model.parameters()}
    bns = sum(isinstance(m, BatchNorm2d) for m in model.modules())
    model.eval()
    converted = convert_sync_batchnorm(model)
    assert converted is model and bns > 0
    assert sum(isinstance(m, SyncBatchNorm) for m in model.modules()) == bns
    assert not any(isinstance(m, BatchNorm2d) for m in model.modules())
    assert {id(p) for p in model.parameters()} == params
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert not any(m.training for m in model.modules())
    single = convert_sync_batchnorm(BatchNorm1d(3))
    assert isinstance(single, SyncBatchNorm) and single.num_features == 3


# ------------------------------------------------------------------ buckets
class _Recorder:
    """A stand-in communicator of ``size`` ranks that all hold this process's values: the
    all-reduce multiplies by ``size`` (what summing equal arrays gives) and records sizes."""

    def __init__(self, size):
        self.size, self.rank, self.calls = size, 0, []

    def allreduce_(self, a):
        self.calls.append(a.size)
        a *= a.dtype.type(self.size)
        return a

    def bcast_(self, a, root=0):
        return a


def test_gradients_are_averaged_in_a_few_flat_buckets(rng):
    model = models.get("simple_cnn", in_channels=1, num_classes=10, image_size=8)
    comm = _Recorder(4)
    ddp = DistributedDataParallel(model, comm, bucket_mb=0.02)   # ~20 KB buckets
    x = nnx.backend.get().asarray(rng.standard_normal((6, 1, 8, 8)).astype(np.float32))
    ddp(x)
    ddp.backward(nnx.backend.get().asarray(rng.standard_normal((6, 10)).astype(np.float32)),
                 input_grad=False)
    params = list(model.parameters())
    grads = [p.grad.copy() for p in params]
    ddp.sync_gradients()      # equal gradients on every rank: the average is the gradient
    assert all(np.array_equal(p.grad, g) for p, g in zip(params, grads))
    n = sum(p.data.size for p in params)
    assert sum(comm.calls) == 2 * n and 1 < len(comm.calls) // 2 < len(params)
    # a bucket stays under the cap unless one parameter alone is larger
    assert all(b.nbytes <= 0.02 * 2 ** 20 or len(b.params) == 1 for b in ddp.buckets)
    assert ddp.bytes_per_step == 4 * n
    # the gradients now live in the buckets: accumulating in place needs no copy
    flat = {id(b.flat) for b in ddp.buckets}
    assert all(p.grad.base is not None and id(p.grad.base) in flat for p in params)
    one = DistributedDataParallel(model, _Recorder(4))
    assert len(one.buckets) == 1            # 25 MB default: the whole small model


# ------------------------------------------------------------------ errors
def test_distributed_without_mpi4py_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    from nnx import train
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # as if not installed
    monkeypatch.setattr("nnx.distributed.communicator._WORLD", None)
    with pytest.raises(SystemExit) as e:
        train.main(["--distributed", "--dataset", "digits", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs mpi4py" in err[0] and "nnx[mpi]" in err[0], err


def test_more_ranks_per_node_than_gpus_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    import sim_backend
    from nnx import train
    # rank 0 of 3 on a node with 2 GPUs; the other ranks meet the same error (Ibarrier)
    mpi = types.SimpleNamespace(gather=lambda value, root: [value] * 3,
                                Ibarrier=lambda: types.SimpleNamespace(Test=lambda: True))
    node = types.SimpleNamespace(rank=0, size=3, local_rank=0, local_size=3, is_main=True,
                                 comm=mpi)
    monkeypatch.setattr("nnx.distributed.init", lambda: node)
    with sim_backend.simulated_cupy(tmp_path, device_count=2):
        with pytest.raises(SystemExit) as e:
            train.main(["--distributed", "--backend", "cuda", "--dataset", "digits",
                        "--out", str(tmp_path)])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert "3 processes: rank 0 pid" in out
    err = err.strip().splitlines()
    assert err == ["nnx-train: error: --distributed: 3 processes on this node but only 2 "
                   "GPU(s); start at most one process per GPU"], err
