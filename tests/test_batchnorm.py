"""BatchNorm1d/2d: the layer harness in train and eval mode (gradchecks, called twice,
dtype, strides, CPU vs CUDA), running statistics (once per call) and state_dict against
PyTorch."""
import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx.nn import BatchNorm1d, BatchNorm2d


def _randomize(bn, rng):
    be = nnx.backend.get()
    bn.weight.data[...] = be.asarray(rng.uniform(0.5, 1.5, bn.weight.shape))
    bn.bias.data[...] = be.asarray(rng.standard_normal(bn.bias.shape))


def _make(cls, c, train=True):
    """A batch norm with random affine parameters and running statistics (the same on every
    build: the harness compares builds)."""
    def make(dt):
        rng = np.random.default_rng(5)
        bn = cls(c, dtype=dt)
        _randomize(bn, rng)
        be = nnx.backend.get()
        bn.running_mean[...] = be.asarray(rng.standard_normal(c))
        bn.running_var[...] = be.asarray(rng.uniform(0.5, 2, c))
        return bn.train(train)
    return make


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (5, 3)), (BatchNorm1d, (3, 2, 4)),
                                       (BatchNorm2d, (2, 3, 3, 2))])
def test_batchnorm_train(backend, rng, cls, shape):
    check_layer(_make(cls, shape[1]), (rng.standard_normal(shape) * 2 + 1,))


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (4, 3)), (BatchNorm2d, (1, 2, 3, 3))])
def test_batchnorm_eval(backend, rng, cls, shape):
    check_layer(_make(cls, shape[1], train=False), (rng.standard_normal(shape),))


def test_batchnorm_no_affine(backend, rng):
    def make(train):
        return lambda dt: BatchNorm2d(2, affine=False, track_running_stats=False).train(train)
    check_layer(make(True), (rng.standard_normal((3, 2, 2, 2)),))
    # no running stats: batch statistics even in eval
    check_layer(make(False), (rng.standard_normal((3, 2, 2, 2)),), skip=("cpu_vs_cuda",))


def test_running_stats_update_once_per_call(backend, rng):
    """Two calls in one graph update the running statistics twice, in call order, as two
    separate forwards do (PyTorch's behaviour)."""
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)) + 2

    class Twice(nnx.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = BatchNorm1d(3, dtype=np.float64)

        def forward(self, a, b):
            return nnx.nn.functional.add(self.bn(a), self.bn(b))

    twice, ref = Twice(), BatchNorm1d(3, dtype=np.float64)
    twice(x1, x2)
    ref(x1)
    ref(x2)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(twice.bn, name), getattr(ref, name), name)
    assert int(twice.bn.num_batches_tracked) == 2


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dims", [1, 2])
def test_running_stats_and_outputs_match_torch(backend, rng, momentum, dims):
    torch = pytest.importorskip("torch")
    c = 4
    ours = (BatchNorm1d if dims == 1 else BatchNorm2d)(c, momentum=momentum)
    ref = (torch.nn.BatchNorm1d if dims == 1 else torch.nn.BatchNorm2d)(c, momentum=momentum)
    shape = (6, c, 5) if dims == 1 else (3, c, 4, 5)
    for _ in range(4):
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        y = ours(x)
        gy = rng.standard_normal(shape).astype(np.float32)
        ours.zero_grad()
        dx = ours.backward(backend.asarray(gy))
        tx = torch.tensor(x, requires_grad=True)
        ref.zero_grad()
        ty = ref(tx)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(backend.to_numpy(y), ty.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(dx), tx.grad.numpy(), atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(ours.weight.grad),
                                   ref.weight.grad.numpy(), atol=1e-4)
    sd, tsd = ours.state_dict(), ref.state_dict()
    assert list(sd) == list(tsd)
    for k in tsd:
        np.testing.assert_allclose(sd[k], tsd[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    ours.eval()
    ref.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(backend.to_numpy(ours(x)),
                               ref(torch.tensor(x)).detach().numpy(), atol=1e-5)


def test_state_dict_roundtrip_and_keys(backend, rng):
    torch = pytest.importorskip("torch")
    bn = BatchNorm2d(3)
    assert list(bn.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    assert list(BatchNorm1d(3, affine=False).state_dict()) == list(
        torch.nn.BatchNorm1d(3, affine=False).state_dict())
    bn(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    other = BatchNorm2d(3)
    other.load_state_dict(bn.state_dict())
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    assert int(other.num_batches_tracked) == 1


def test_batchnorm_errors(backend):
    with pytest.raises(ValueError, match="expects 3 channels in axis 1, got 2"):
        BatchNorm1d(3)(np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        BatchNorm2d(3)(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3)(np.ones((1, 3), np.float32))
