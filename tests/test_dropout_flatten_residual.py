"""Dropout, Flatten, Residual and Add (the layer harness for each)."""
import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx.nn import Add, Conv2d, Dropout, Flatten, Identity, Linear, ReLU, Residual, Sequential


def test_dropout_train_eval(backend, rng):
    x = rng.standard_normal((200, 50)).astype(np.float32) + 3
    d = Dropout(0.3)
    y = backend.to_numpy(d(x))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    assert y.dtype == np.float32
    g = backend.to_numpy(d.backward(backend.asarray(np.ones_like(x))))
    np.testing.assert_allclose(g, kept / np.float32(0.7), rtol=1e-6)
    d.eval()
    np.testing.assert_array_equal(backend.to_numpy(d(x)), x)
    np.testing.assert_array_equal(backend.to_numpy(d.backward(backend.asarray(x))), x)
    with pytest.raises(ValueError):
        Dropout(1.5)
    np.testing.assert_array_equal(backend.to_numpy(Dropout(1.0)(x)), 0 * x)


def test_dropout_fixed_mask(backend, rng):
    # reseeded before each forward: a fixed mask per call (the two calls of the "twice"
    # check draw two different masks); the CPU and CUDA generators differ, so no comparison
    check_layer(lambda dt: Dropout(0.5), (rng.standard_normal((3, 4)),),
                before_forward=lambda: nnx.backend.get().manual_seed(7), skip=("cpu_vs_cuda",))


def test_dropout_draws_a_mask_per_call(backend, rng):
    class Twice(nnx.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = Dropout(0.5)

        def forward(self, x):
            return self.drop(x), self.drop(x)

    x = np.abs(rng.standard_normal((20, 30))) + 1
    m = Twice()
    y1, y2 = (backend.to_numpy(y) for y in m(x))
    assert ((y1 == 0) != (y2 == 0)).any()                # two masks
    g1, g2 = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    dx = backend.to_numpy(m.backward(backend.asarray(g1), backend.asarray(g2)))
    # each call's gradient through its own mask: 2·(g/(1-p)) where kept
    np.testing.assert_allclose(dx, (y1 != 0) * g1 * 2 + (y2 != 0) * g2 * 2, rtol=1e-15)


def test_flatten(backend, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    f = Flatten()
    assert f(x).shape == (2, 60)
    assert Flatten(0, 1)(x).shape == (6, 4, 5)
    assert Flatten(2, -1)(x).shape == (2, 3, 20)
    check_layer(lambda dt: Flatten(), (x[:, :, :2, :2],))
    xt = x.transpose(0, 2, 1, 3)                      # non-contiguous input
    np.testing.assert_array_equal(backend.to_numpy(f(xt)), xt.reshape(2, -1))
    assert f.backward(backend.asarray(np.ones((2, 60)))).shape == xt.shape
    with pytest.raises(ValueError, match="invalid"):
        Flatten(3, 1)(x)


def test_residual_identity_and_projection(backend, rng):
    body = Sequential(Linear(4, 4), ReLU(), Linear(4, 4)).double()
    res = Residual(body)
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(backend.to_numpy(res(x)),
                               backend.to_numpy(body(x)) + x)
    check_layer(lambda dt: Residual(Sequential(Linear(4, 4, dtype=dt), ReLU(),
                                               Linear(4, 4, dtype=dt))), (x,))
    proj = Residual(Sequential(Linear(4, 6), ReLU()), Linear(4, 6)).double()
    check_layer(lambda dt: Residual(Sequential(Linear(4, 6, dtype=dt), ReLU()),
                                    Linear(4, 6, dtype=dt)), (x,))
    assert set(proj.state_dict()) == {"body.0.weight", "body.0.bias", "shortcut.weight",
                                      "shortcut.bias"}
    check_layer(lambda dt: Add(Linear(4, 4, dtype=dt), Identity(),
                               Sequential(Linear(4, 4, dtype=dt), ReLU())), (x,))


def test_residual_shape_mismatch(backend, rng):
    res = Residual(Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="different shapes"):
        res(rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
