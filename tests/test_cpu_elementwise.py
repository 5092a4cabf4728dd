"""The CPU backend's ReLU passes and gradient sum in C (kernels/cpu/elementwise.c) against
NumPy, value for value.

Exact equality is valid here: each output element is one add and/or one compare-and-select (or
one multiply by 0/1) of its inputs, the same operations NumPy does, in no order that threads
could change.  One thing NumPy leaves open: which zero ``np.maximum`` returns for a tie of
-0.0 and 0 (on this machine the second operand's, as x86's ``maxps`` does: ``maximum(-0.0, 0)``
is +0, ``maximum(0, -0.0)`` is -0; other SIMD paths or CPUs need not agree), so the ReLU
results' bits, sign of zero included, are checked against the kernels' documented formula
``v <= 0 ? +0 : v`` written in NumPy, and their values against ``np.maximum``."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backend import cpu_conv, cpu_elementwise, native
from nnx.backend.base import Backend
from native_build import c_kernels_build, count_chunks

needs_c = pytest.mark.skipif(not c_kernels_build("elementwise", "parallel"),
                             reason="the C kernels do not build here")

SHAPES = [(7, 5, 3, 4), (2, 3), (1, 1), (9,), (3, 16, 33, 17)]


def _special(rng, shape, dtype):
    """Random normals with NaN, ±inf, ±0 and exact zeros mixed in."""
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)
    idx = rng.choice(flat.size, size=min(flat.size, 2 * len(specials)), replace=False)
    flat[idx] = np.resize(specials, idx.size)
    return x


def _same(a, b):
    """Equal values, NaN where NaN, and the same sign of zero."""
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def _same_relu(got, v):
    """``got`` is ReLU of ``v``: NumPy's values (``np.maximum``), and the bits of
    ``v <= 0 ? +0 : v`` (NaN stays the same NaN, -0.0 becomes +0)."""
    np.testing.assert_array_equal(got, np.maximum(v, 0))
    _same(got, np.where(v <= 0, v.dtype.type(0), v))


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_relu_passes_match_numpy(rng, monkeypatch, dtype, shape, threads):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setenv("NNX_NUM_THREADS", threads)
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)      # chunk even these small arrays
    x, y, gy = (_special(rng, shape, dtype) for _ in range(3))
    with np.errstate(invalid="ignore"):
        _same_relu(cpu_elementwise.relu(x), x)
        _same(cpu_elementwise.relu_backward(y, gy), gy * (y > 0))
        _same_relu(cpu_elementwise.add_relu(x, y), x + y)
        _same(cpu_elementwise.add(x, y), x + y)
        if len(shape) >= 2:
            b = _special(rng, (shape[1],), dtype)
            bshape = (1, -1) + (1,) * (len(shape) - 2)
            _same_relu(cpu_elementwise.bias_relu(x, b), x + b.reshape(bshape))


@needs_c
def test_the_backend_uses_the_c_passes_and_splits_them(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setenv("NNX_NUM_THREADS", "2")
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    chunks = count_chunks(monkeypatch, cpu_elementwise)
    be = nnx.backend.use("cpu")
    x, y = (rng.standard_normal((4, 3, 5, 5)).astype(np.float32) for _ in range(2))
    b = rng.standard_normal(3).astype(np.float32)
    _same_relu(be.relu(x), x)
    _same(be.relu_backward(y, x), x * (y > 0))
    _same(be.add_relu(x, y), Backend.add_relu(be, x, y))          # the array-math version
    _same_relu(be.bias_relu(x, b), x + b.reshape(1, 3, 1, 1))
    _same(be.add(x, y), x + y)
    assert chunks == [2, 2, 2, 2, 2]


@needs_c
def test_other_operands_take_the_numpy_path(rng, monkeypatch):
    """Non-contiguous, broadcast, integer or mixed-dtype operands: None from the C path, and
    the backend still gives NumPy's answer."""
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    be = nnx.backend.use("cpu")
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    strided = x[:, ::2]
    assert cpu_elementwise.relu(strided) is None
    _same(be.relu(strided), np.maximum(strided, 0))
    ints = rng.integers(-3, 3, size=(4, 5))
    assert cpu_elementwise.relu(ints) is None
    np.testing.assert_array_equal(be.relu(ints), np.maximum(ints, 0))
    row = x[:1]
    assert cpu_elementwise.add_relu(x, row) is None                    # broadcast
    _same_relu(be.add_relu(x, np.broadcast_to(row, x.shape).copy()), x + row)
    assert cpu_elementwise.relu_backward(x, x.astype(np.float64)) is None   # mixed dtypes
    assert cpu_elementwise.bias_relu(x, np.ones(5, np.float32)) is None    # wrong bias size


@needs_c
def test_kernels_off_means_numpy(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert cpu_elementwise.relu(x) is None
    assert native.library("elementwise") is None


@needs_c
def test_the_tape_sums_a_residual_input_gradient_through_the_backend(rng, monkeypatch):
    """An input used by two branches gets the sum of both gradients (the C add), the same
    bits as NumPy's ``+``."""
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    calls = []
    real = cpu_elementwise.add

    def spy(a, b):
        calls.append(a.shape)
        return real(a, b)

    monkeypatch.setattr(cpu_elementwise, "add", spy)
    from nnx.nn import Conv2d, Residual
    nnx.manual_seed(0)
    block = Residual(Conv2d(3, 3, 3, padding=1), Conv2d(3, 3, 1))
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = block(x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    dx = block.backward(gy)
    assert calls == [x.shape]
    body, short = block.body, block.shortcut
    # the two branch gradients recomputed on their own, summed by NumPy
    body(x), short(x)
    want = body.backward(gy) + short.backward(gy)
    _same(dx, want)
