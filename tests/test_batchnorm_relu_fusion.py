"""A BatchNorm1d/2d followed by a ReLU in a Sequential runs fused on backends with
``fuses_batchnorm_relu`` (the CPU backend): ``bn(x, relu=True)``, one C pass that normalises
and clamps, and one backward pass that applies ReLU's mask inside batch norm's sums and dx.

Checked here: fused against the two layers (bit for bit: the same products and sums in the
same order), float64 gradient checks of the fused pair in training and eval mode, the pairs
that must stay unfused, the C kernels against the NumPy reference composition, and the CUDA
backend (simulated) taking the same route through the generic composition."""
import numpy as np
import pytest

import nnx
from layer_harness import _using, simulated_cuda
from native_build import c_kernels_build
from nnx.backend import cpu_conv
from nnx.backend.base import Backend
from nnx.backend.numpy_backend import NumpyBackend
from nnx.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, MaxPool2d, ReLU, Sequential

needs_c = pytest.mark.skipif(not c_kernels_build("batchnorm2d", "elementwise", "parallel"),
                             reason="the C kernels do not build here")


def _conv_net(dt):
    return Sequential(Conv2d(3, 5, 3, padding=1, bias=False, dtype=dt), BatchNorm2d(5, dtype=dt),
                      ReLU(), MaxPool2d(2), Conv2d(5, 4, 3, stride=2, dtype=dt),
                      BatchNorm2d(4, dtype=dt), ReLU())


def _mlp(dt):
    return Sequential(Linear(6, 8, dtype=dt), BatchNorm1d(8, dtype=dt), ReLU(),
                      Linear(8, 3, dtype=dt), BatchNorm1d(3, dtype=dt), ReLU())


def _run(net, x, train=True, seed=7, asarray=np.asarray):
    net.train(train)
    y = net(x)
    gy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.dtype(y.dtype))
    dx = net.backward(asarray(gy))
    bufs = [b.copy() for _, b in net.named_buffers()]
    return [y, dx, *[p.grad.copy() for p in net.parameters()], *bufs]


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", [(_conv_net, (6, 3, 10, 9)), (_mlp, (40, 6))])
def test_fused_equals_unfused(monkeypatch, rng, kernels, dtype, train, make, shape):
    if kernels == "1" and not c_kernels_build("batchnorm2d", "elementwise", "parallel"):
        pytest.skip("the C kernels do not build here")
    monkeypatch.setenv("NNX_CPU_KERNELS", kernels)
    monkeypatch.setenv("NNX_NUM_THREADS", "2")
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)        # split channels over threads
    x = rng.standard_normal(shape).astype(dtype)
    results = {}
    for fuse in (False, True):
        monkeypatch.setattr(NumpyBackend, "fuses_batchnorm_relu", fuse)
        nnx.manual_seed(3)
        net = make(dtype)
        fused_steps = [relu for m, relu in net._steps() if isinstance(m, (BatchNorm1d,
                                                                          BatchNorm2d))]
        assert all(fused_steps) == fuse and fused_steps
        if not train:                  # eval mode on non-trivial running statistics
            net.train(True)
            net(x * 2 + 1)
        results[fuse] = _run(net, x, train)
    y = results[False][0]
    assert (y == 0).any() and (y > 0).any()          # the ReLU really clamps
    for a, b in zip(results[False], results[True]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", [(_conv_net, (3, 3, 7, 6)), (_mlp, (9, 6))])
def test_fused_gradcheck(rng, train, make, shape):
    nnx.manual_seed(1)
    net = make(np.float64)
    assert any(relu for m, relu in net._steps() if isinstance(m, (BatchNorm1d, BatchNorm2d)))
    if not train:
        net(rng.standard_normal(shape) * 2 + 1)      # running statistics
    net.train(train)
    nnx.gradcheck(net, (rng.standard_normal(shape),))


def test_only_plain_pairs_fuse():
    class MyBN(BatchNorm2d):
        pass

    net = Sequential(BatchNorm2d(3), ReLU(), MyBN(3), ReLU(), BatchNorm2d(3), ReLU(),
                     BatchNorm2d(3), MaxPool2d(2), ReLU())
    net[5].register_forward_hook(lambda m, args, out: None)   # a hook on the ReLU
    steps = [(type(m).__name__, relu) for m, relu in net._steps()]
    assert steps == [("BatchNorm2d", True), ("MyBN", False), ("ReLU", False),
                     ("BatchNorm2d", False), ("ReLU", False), ("BatchNorm2d", False),
                     ("MaxPool2d", False), ("ReLU", False)]


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_fused_kernels_match_the_reference_composition(rng, monkeypatch, dtype):
    """The C pass against NumPy's batch norm then ReLU (different summation: tolerance)."""
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    be = nnx.backend.use("cpu")
    x = (rng.standard_normal((5, 4, 7, 3)) * 3 + 1).astype(dtype)
    w = rng.standard_normal(4).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, mean, var, saved = be.batchnorm_forward(x, w, b, relu=True)
    ry, rmean, rvar, rsaved = Backend.batchnorm_forward(be, x, w, b, relu=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, ry, **tol)
    assert ((y == 0) == (ry == 0)).mean() > 0.99 and (y == 0).any()
    dx, dw, db = be.batchnorm_backward(dy, saved, w, True, relu_y=y)
    rdx, rdw, rdb = Backend.batchnorm_backward(be, dy, rsaved, w, True, relu_y=ry)
    for a, r in ((dx, rdx), (dw, rdw), (db, rdb)):
        np.testing.assert_allclose(a, r, **tol)


@needs_c
def test_backward_checks_the_relu_output_shape(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    be = nnx.backend.use("cpu")
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y, _, _, saved = be.batchnorm_forward(x, None, None, relu=True)
    with pytest.raises(ValueError, match="relu_y has shape"):
        be.batchnorm_backward(x, saved, None, True, relu_y=y[:2])


def test_cuda_backend_takes_the_fused_route_in_simulation(rng, monkeypatch):
    """CUDA (simulated) with the fusion forced on: the generic composition, against the CPU."""
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    nnx.manual_seed(5)
    cpu_net = _conv_net(np.float32)
    state = {k: v.copy() for k, v in cpu_net.state_dict().items()}
    want = _run(cpu_net, x)
    with simulated_cuda(), _using("cuda") as be:
        monkeypatch.setattr(type(be), "fuses_batchnorm_relu", True)
        net = _conv_net(np.float32)
        net.to(be)
        net.load_state_dict(state)
        assert any(relu for m, relu in net._steps() if isinstance(m, BatchNorm2d))
        got = [be.to_numpy(a) for a in _run(net, be.asarray(x), asarray=be.asarray)]
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_pair_does_not_depend_on_the_thread_count(rng, monkeypatch, dtype):
    """Channels are split over threads, a channel's sums never are (exact: nnx fixes the
    order of every sum, whatever NNX_NUM_THREADS is)."""
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    x = rng.standard_normal((5, 7, 6, 5)).astype(dtype)
    results = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NNX_NUM_THREADS", threads)
        nnx.manual_seed(2)
        net = Sequential(BatchNorm2d(7, dtype=dtype), ReLU())
        assert net._steps()[0][1]
        results[threads] = _run(net, x)
    for t in ("2", "3"):
        for a, b in zip(results["1"], results[t]):
            np.testing.assert_array_equal(a, b)
