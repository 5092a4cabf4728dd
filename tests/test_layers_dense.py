"""Linear, the activations and Sequential through the layer harness (float64 gradchecks,
called twice in one graph, inputs unmodified, dtype, non-contiguous inputs, CPU vs CUDA),
plus values and input errors."""
from __future__ import annotations

import numpy as np
import pytest

from layer_harness import check_layer
from nnx import nn

ONCE = ("cpu_vs_cuda",)   # extra configurations skip the (simulated) CUDA comparison


def f64(rng, *shape):
    return rng.standard_normal(shape).astype(np.float64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (1, 3), (2, 4, 3)])
def test_linear(backend, rng, bias, shape):
    assert (nn.Linear(3, 4, bias=bias).bias is None) == (not bias)
    check_layer(lambda dt: nn.Linear(3, 4, bias=bias, dtype=dt), (f64(rng, *shape),),
                skip=() if bias and shape == (5, 3) else ONCE)


def test_linear_matches_formula(backend, rng):
    layer = nn.Linear(3, 2, dtype=np.float64)
    x = f64(rng, 4, 3)
    w, b = backend.to_numpy(layer.weight.data), backend.to_numpy(layer.bias.data)
    np.testing.assert_allclose(backend.to_numpy(layer(x)), x @ w.T + b, rtol=1e-12)


ACTIVATIONS = [
    lambda: nn.ReLU(),
    lambda: nn.ReLU(inplace=True),
    lambda: nn.LeakyReLU(0.1),
    lambda: nn.Sigmoid(),
    lambda: nn.Tanh(),
    lambda: nn.Arctan(),
    lambda: nn.Softmax(dim=-1),
    lambda: nn.Softmax(dim=0),
    lambda: nn.Softmax(dim=1),
    lambda: nn.Identity(),
]


@pytest.mark.parametrize("make", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(4, 5), (1, 3), (2, 3, 4)])
def test_activation(backend, rng, make, shape):
    x = f64(rng, *shape)
    x[np.abs(x) < 1e-3] = 0.5      # keep ReLU's kink away from the finite-difference step
    inplace = getattr(make(), "inplace", False)
    check_layer(lambda dt: make(), (x,), inplace=inplace,
                skip=() if shape == (2, 3, 4) else ONCE)


def test_activation_values(backend):
    x = np.array([[-2.0, 0.5, 3.0]])
    xb = backend.asarray(x)
    np.testing.assert_allclose(backend.to_numpy(nn.ReLU()(xb)), [[0, 0.5, 3]])
    np.testing.assert_allclose(backend.to_numpy(nn.LeakyReLU(0.1)(xb)), [[-0.2, 0.5, 3]])
    np.testing.assert_allclose(backend.to_numpy(nn.Sigmoid()(xb)), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(backend.to_numpy(nn.Arctan()(xb)), np.arctan(x))
    s = backend.to_numpy(nn.Softmax(dim=1)(xb))
    np.testing.assert_allclose(s, np.exp(x) / np.exp(x).sum(), rtol=1e-12)
    # no overflow for huge inputs
    big = backend.asarray(np.array([[1e4, -1e4, 0.0]]))
    assert np.isfinite(backend.to_numpy(nn.Sigmoid()(big))).all()
    np.testing.assert_allclose(backend.to_numpy(nn.Softmax(dim=1)(big)), [[1, 0, 0]])


def test_sequential(backend, rng):
    def make(dt):
        return nn.Sequential(nn.Linear(3, 5, dtype=dt), nn.Tanh(), nn.Linear(5, 4, dtype=dt),
                             nn.ReLU(), nn.Linear(4, 2, dtype=dt), nn.Softmax(dim=-1))
    check_layer(make, (f64(rng, 6, 3),))
    model = make(np.float64)
    assert len(model) == 6 and isinstance(model[1], nn.Tanh)
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def test_linear_bad_shape_names_both_numbers(backend, rng):
    layer = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"expects 3 input features.*got 5"):
        layer(backend.asarray(rng.standard_normal((2, 5)).astype(np.float32)))


def test_linear_dtype_mismatch(backend, rng):
    layer = nn.Linear(3, 4)  # float32
    with pytest.raises(TypeError, match="float32.*float64"):
        layer(rng.standard_normal((2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        layer(np.ones((2, 3), dtype=np.int64))


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Tanh().backward(np.ones((1, 2), np.float32))


@pytest.mark.torch
def test_activations_against_torch(backend, rng):
    torch = pytest.importorskip("torch")
    x = f64(rng, 3, 4)
    pairs = [(nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.Sigmoid(), torch.nn.Sigmoid()),
             (nn.Tanh(), torch.nn.Tanh()), (nn.Softmax(dim=0), torch.nn.Softmax(dim=0))]
    for ours, theirs in pairs:
        np.testing.assert_allclose(backend.to_numpy(ours(backend.asarray(x))),
                                   theirs(torch.tensor(x)).numpy(), rtol=1e-12)
