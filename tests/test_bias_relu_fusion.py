"""A Linear/Conv2d followed by a ReLU in a Sequential runs fused on backends with
``fuses_bias_relu`` (CUDA): ``layer(x, relu=True)``, the bias/layout/ReLU kernel forward and
the ReLU-mask + bias-gradient kernel backward.  Checked here: the layer harness on such
Sequentials (gradcheck on CPU, CPU vs simulated CUDA, which fuses), the fused path forced
on the CPU backend against the unfused one and by gradcheck, the pairs that must stay
unfused, and the launches the fusion saves in simulation."""
import numpy as np
import pytest

import nnx
from layer_harness import _using, check_layer, simulated_cuda
from nnx.backend.numpy_backend import NumpyBackend
from nnx.nn import Conv2d, Linear, MaxPool2d, ReLU, Sequential


def _conv_net(dt):
    return Sequential(Conv2d(3, 4, 3, padding=1, dtype=dt), ReLU(), MaxPool2d(2),
                      Conv2d(4, 5, 3, stride=2, bias=False, dtype=dt), ReLU())


def _mlp(dt):
    return Sequential(Linear(6, 8, dtype=dt), ReLU(), Linear(8, 3, dtype=dt),
                      ReLU(inplace=True), Linear(3, 2, bias=False, dtype=dt), ReLU())


@pytest.fixture
def cpu_fuses(monkeypatch):
    """The CPU backend taking the fused route (its generic fused methods)."""
    monkeypatch.setattr(NumpyBackend, "fuses_bias_relu", True)


def test_conv_relu_harness(rng):
    check_layer(_conv_net, (rng.standard_normal((2, 3, 9, 8)),))


def test_linear_relu_harness(rng):
    check_layer(_mlp, (rng.standard_normal((5, 6)),))


def test_linear_relu_3d_input_harness(rng):
    check_layer(lambda dt: Sequential(Linear(6, 4, dtype=dt), ReLU()),
                (rng.standard_normal((2, 3, 6)),))


@pytest.mark.parametrize("make,shape", [(_conv_net, (2, 3, 9, 8)), (_mlp, (5, 6))])
def test_fused_gradcheck(cpu_fuses, rng, make, shape):
    net = make(np.float64)
    assert all(relu for _, relu in net._steps()[:1])
    nnx.gradcheck(net, (rng.standard_normal(shape),))


def _forward_backward(net, x, gy_seed=7):
    y = net(x)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(y.dtype)
    dx = net.backward(gy)
    return y, dx, [p.grad.copy() for p in net.parameters()]


@pytest.mark.parametrize("make,shape", [(_conv_net, (4, 3, 12, 10)), (_mlp, (64, 6))])
def test_fused_equals_unfused_on_cpu(monkeypatch, rng, make, shape):
    """The fused route runs the same NumPy operations per element (bias add, max with 0;
    dy·[y > 0], then the same sums and GEMMs on the same arrays), so the bits are equal."""
    x = rng.standard_normal(shape).astype(np.float32)
    nnx.manual_seed(3)
    plain = _forward_backward(make(np.float32), x)
    monkeypatch.setattr(NumpyBackend, "fuses_bias_relu", True)
    nnx.manual_seed(3)
    net = make(np.float32)
    assert any(relu for _, relu in net._steps())
    fused = _forward_backward(net, x)
    assert (plain[0] == 0).any() and (plain[0] > 0).any()
    for a, b in zip([plain[0], plain[1], *plain[2]], [fused[0], fused[1], *fused[2]]):
        np.testing.assert_array_equal(a, b)


def test_steps_fuse_only_plain_pairs(cpu_fuses):
    class MyLinear(Linear):
        pass

    net = Sequential(Conv2d(3, 4, 3), ReLU(), MaxPool2d(2), ReLU(), Linear(4, 4), ReLU(),
                     MyLinear(4, 4), ReLU(), Linear(4, 4), ReLU(), Linear(4, 4))
    net[8].register_forward_hook(lambda m, args, out: None)     # a hook: stays unfused
    steps = [(type(m).__name__, relu) for m, relu in net._steps()]
    assert steps == [("Conv2d", True), ("MaxPool2d", False), ("ReLU", False),
                     ("Linear", True), ("MyLinear", False), ("ReLU", False),
                     ("Linear", False), ("ReLU", False), ("Linear", False)]
    # the unfused order (and the CPU backend's default) is unchanged
    assert [type(m).__name__ for m in net._execution_order()] == [
        "Conv2d", "MaxPool2d", "ReLU", "ReLU", "Linear", "ReLU", "MyLinear", "ReLU",
        "Linear", "ReLU", "Linear"]


def test_relu_hook_sees_pre_activation(cpu_fuses, rng):
    """A hook on the ReLU disables the fusion, so it still sees the layer's raw output."""
    net = Sequential(Linear(5, 4), ReLU())
    seen = []
    net[1].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    net(rng.standard_normal((3, 5)).astype(np.float32))
    assert len(seen) == 1 and (seen[0] < 0).any()


def test_fusion_saves_launches_in_simulation(rng):
    """Per (layer, ReLU) pair in simulation: Linear 3 -> 2 forward (matmul, bias_relu),
    Conv2d 1 launch after its GEMM; backward one bias_grad_rows per pair."""
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    with simulated_cuda(), _using("cuda") as be:
        import fake_cupy as fc      # (on sys.path once simulated_cuda runs)
        nnx.manual_seed(0)
        net = Sequential(Conv2d(3, 4, 3, padding=1), ReLU(), MaxPool2d(2),
                         nnx.nn.Flatten(), Linear(64, 8), ReLU(), Linear(8, 3))
        xd = be.asarray(x)
        with fc.trace() as t:
            y = net(xd)
            net.backward(be.asarray(np.ones(y.shape, np.float32)), input_grad=False)
        names = t.names()
        assert names["conv_output_nchw<float>"] == 1 and names["bias_relu<float>"] == 1
        assert names["bias_grad_rows<float>"] == 2       # conv (transposed) and fc1
        assert not any(k.startswith(("relu<", "relu_backward<", "ascontiguousarray"))
                       for k in names)
        assert names["add.reduce"] == 1                  # fc2's bias gradient (no ReLU)
