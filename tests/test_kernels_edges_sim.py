"""Numerical edges through the CUDA kernels (simulated: tests/cuda_sim), vs the NumPy backend.

Huge logits/pre-activations (>= 100 in float32, >= 800 in float64: exp overflows above ~88 and
~709, so a kernel that forgets the max-subtraction or a stable form returns inf/NaN here),
NaN and +-inf propagation, denormals and empty batches, for every kernel where such an edge
exists.  The simulator flushes float32 denormals like a GPU under CuPy's -ftz=true and fuses
multiply-adds; tolerances therefore allow ``float32.tiny`` absolute (a flushed denormal) on
top of a few-ulp relative error; NaN must appear exactly where NumPy has it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import sim_backend  # noqa: E402

DTYPES = [np.float32, np.float64]
HUGE = {np.float32: 100.0, np.float64: 800.0}


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    with sim_backend.module_backend(tmp_path_factory, "edges_build") as be:
        yield be


@pytest.fixture(scope="module")
def cpu():
    return nnx.backend.create("cpu")


def same(gpu, got, want, dtype, rtol=None):
    """Equal NaN positions; finite values to a few ulp (sums: rtol 1e-5/1e-12), plus the
    smallest normal as absolute slack for float32 (FTZ flushes denormals to 0)."""
    got = gpu.to_numpy(got)
    assert got.shape == np.shape(want) and got.dtype == np.dtype(dtype)
    tiny = float(np.finfo(np.float32).tiny) if dtype == np.float32 else 0.0
    rtol = rtol or (1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=tiny, equal_nan=True)


def dev(gpu, a):
    return gpu.asarray(a)


def ftz(a):
    """What a float32 kernel under -ftz=true reads: denormals as (signed) zero.  Needed where
    a denormal changes a decision, not just a value (``y > 0`` in relu_backward)."""
    a = np.array(a, copy=True)
    if a.dtype == np.float32:
        a[np.abs(a) < np.finfo(np.float32).tiny] *= 0
    return a


# ------------------------------------------------------------------ softmax cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_ce_huge_logits(gpu, cpu, rng, dtype, smoothing):
    big = HUGE[dtype]
    z = (rng.standard_normal((6, 7)) * 3 + big).astype(dtype)
    z[1] = -big + rng.standard_normal(7)            # all very negative
    z[2, 3] = big * 1.5                             # one dominant logit
    z[3, :] = big                                   # ties
    labels = rng.integers(0, 7, 6)
    scale = np.full(6, 1 / 6, dtype)
    loss = gpu.softmax_cross_entropy_forward(dev(gpu, z), dev(gpu, labels), smoothing)
    want = cpu.softmax_cross_entropy_forward(z, labels, smoothing)
    assert np.isfinite(want).all()
    same(gpu, loss, want, dtype, rtol=1e-4 if dtype == np.float32 else 1e-11)
    g = gpu.softmax_cross_entropy_backward(dev(gpu, z), dev(gpu, labels), smoothing,
                                           dev(gpu, scale))
    np.testing.assert_allclose(gpu.to_numpy(g), cpu.softmax_cross_entropy_backward(
        z, labels, smoothing, scale), rtol=1e-4, atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_nan_inf_and_empty(gpu, cpu, rng, dtype):
    z = rng.standard_normal((4, 5)).astype(dtype)
    z[0, 2] = np.nan                                # NaN row -> NaN loss and gradient
    z[1, 0] = -np.inf                               # a -inf logit (not the label): finite
    labels = np.array([1, 3, 2, 4])
    scale = np.full(4, 0.25, dtype)
    same(gpu, gpu.softmax_cross_entropy_forward(dev(gpu, z), dev(gpu, labels)),
         cpu.softmax_cross_entropy_forward(z, labels), dtype, rtol=1e-5)
    same(gpu, gpu.softmax_cross_entropy_backward(dev(gpu, z), dev(gpu, labels), 0.0,
                                                 dev(gpu, scale)),
         cpu.softmax_cross_entropy_backward(z, labels, 0.0, scale), dtype, rtol=1e-5)
    e = np.empty((0, 5), dtype)
    el = np.empty(0, np.int64)
    assert gpu.softmax_cross_entropy_forward(dev(gpu, e), dev(gpu, el)).shape == (0,)
    assert gpu.softmax_cross_entropy_backward(dev(gpu, e), dev(gpu, el), 0.0,
                                              dev(gpu, np.empty(0, dtype))).shape == (0, 5)


# ------------------------------------------------------------------ element-wise
def _specials(rng, dtype, n=64):
    x = rng.standard_normal(n).astype(dtype)
    tiny = np.finfo(dtype).tiny
    x[:8] = [np.nan, np.inf, -np.inf, tiny / 4, -tiny / 4, 0.0, -0.0, HUGE[dtype]]
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_specials(gpu, cpu, rng, dtype):
    x, gy = _specials(rng, dtype), _specials(rng, dtype)[::-1].copy()
    b = np.array([np.finfo(dtype).tiny / 2, -np.inf, 1.0, np.nan], dtype)
    x4 = x.reshape(16, 4)  # (N, C=4)
    y = np.tanh(x)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, 0 * inf: NaN expected
        want = [cpu.relu(x), cpu.bias_relu(x4, b), cpu.relu_backward(ftz(x), gy),
                cpu.tanh_backward(y, gy)]
    same(gpu, gpu.relu(dev(gpu, x)), want[0], dtype)
    same(gpu, gpu.bias_relu(dev(gpu, x4), dev(gpu, b)), want[1], dtype)
    same(gpu, gpu.relu_backward(dev(gpu, x), dev(gpu, gy)), want[2], dtype)
    same(gpu, gpu.tanh_backward(dev(gpu, y), dev(gpu, gy)), want[3], dtype)
    for op in (gpu.relu,):
        assert op(dev(gpu, np.empty((0, 3), dtype))).shape == (0, 3)
    assert gpu.tanh_backward(*(dev(gpu, np.empty(0, dtype)),) * 2).shape == (0,)


def test_float32_denormals_flush_like_a_gpu(gpu):
    """-ftz=true: a float32 kernel reads a denormal as 0 (tiny/4 + 0 -> 0 through bias_relu)
    and float64 keeps it.  NumPy keeps both, so the comparison tolerance above is needed."""
    for dtype, flushed in ((np.float32, True), (np.float64, False)):
        d = np.finfo(dtype).tiny / 4
        x = np.full((1, 1), d, dtype)
        out = gpu.to_numpy(gpu.bias_relu(dev(gpu, x), dev(gpu, np.zeros(1, dtype))))[0, 0]
        assert (out == 0) == flushed, (dtype, out)


# ------------------------------------------------------------------ pooling and conv
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_specials_and_empty(gpu, cpu, rng, dtype):
    x = rng.standard_normal((2, 2, 4, 4)).astype(dtype)
    x[0, 0, :2, :2] = -np.inf                       # a window of -inf only
    x[0, 1, 1, 1] = np.nan                          # NaN wins its window
    x[1, 0, 2, 2] = np.inf
    x[1, 1, 0, 0] = HUGE[dtype]
    geo = ((2, 2), (2, 2), (0, 0))
    y, arg = gpu.maxpool2d_forward(dev(gpu, x), *geo)
    ry, rarg = cpu.maxpool2d_forward(x, *geo)
    same(gpu, y, ry, dtype)
    gy = rng.standard_normal(ry.shape).astype(dtype)
    same(gpu, gpu.maxpool2d_backward(dev(gpu, gy), arg, x.shape, *geo),
         cpu.maxpool2d_backward(gy, rarg, x.shape, *geo), dtype)
    with np.errstate(invalid="ignore"):
        want = cpu.avgpool2d_forward(x, *geo)
    same(gpu, gpu.avgpool2d_forward(dev(gpu, x), *geo), want, dtype)
    e = np.empty((0, 2, 4, 4), dtype)
    ye, ae = gpu.maxpool2d_forward(dev(gpu, e), *geo)
    assert ye.shape == (0, 2, 2, 2)
    assert gpu.maxpool2d_backward(ye, ae, e.shape, *geo).shape == e.shape
    assert gpu.im2col(dev(gpu, e), (3, 3), (1, 1), (1, 1), (1, 1)).shape == (18, 0)


# ------------------------------------------------------------------ recurrent cells
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_cells_saturated(gpu, cpu, rng, dtype):
    big = HUGE[dtype]
    n, H = 3, 4
    gates = (rng.standard_normal((n, 4 * H)) * big).astype(dtype)   # far into saturation
    gates[0, :4] = big
    gates[1, :4] = -big
    c_prev, dh, dc = (rng.standard_normal((n, H)).astype(dtype) for _ in range(3))
    h, c, saved = gpu.lstm_cell_forward(dev(gpu, gates), dev(gpu, c_prev))
    rh, rc, rsaved = cpu.lstm_cell_forward(gates, c_prev)
    same(gpu, h, rh, dtype)
    same(gpu, c, rc, dtype)
    for a, b in zip(gpu.lstm_cell_backward(dev(gpu, dh), dev(gpu, dc), saved),
                    cpu.lstm_cell_backward(dh, dc, rsaved)):
        same(gpu, a, b, dtype)
    gi, gh = ((rng.standard_normal((n, 3 * H)) * big).astype(dtype) for _ in range(2))
    hp = rng.standard_normal((n, H)).astype(dtype)
    h, saved = gpu.gru_cell_forward(dev(gpu, gi), dev(gpu, gh), dev(gpu, hp))
    rh, rsaved = cpu.gru_cell_forward(gi, gh, hp)
    same(gpu, h, rh, dtype)
    for a, b in zip(gpu.gru_cell_backward(dev(gpu, dh), saved), cpu.gru_cell_backward(dh, rsaved)):
        same(gpu, a, b, dtype)
    e = np.empty((0, H), dtype)
    he, ce, se = gpu.lstm_cell_forward(dev(gpu, np.empty((0, 4 * H), dtype)), dev(gpu, e))
    assert he.shape == (0, H) and gpu.lstm_cell_backward(he, None, se)[0].shape == (0, 4 * H)


# ------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers_specials(gpu, cpu, rng, dtype):
    p = rng.standard_normal(16).astype(dtype)
    g = rng.standard_normal(16).astype(dtype)
    g[:4] = [0.0, np.finfo(dtype).tiny / 4, 1e30 if dtype == np.float32 else 1e300, np.inf]
    m, v = np.zeros_like(p), np.zeros_like(p)
    dp, dm, dv = dev(gpu, p), dev(gpu, m), dev(gpu, v)
    with np.errstate(over="ignore", invalid="ignore"):
        cpu.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    gpu.adam_update(dp, dev(gpu, g), dm, dv, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    for a, b in ((dp, p), (dm, m), (dv, v)):
        same(gpu, a, b, dtype, rtol=1e-4 if dtype == np.float32 else 1e-12)
    q, buf = rng.standard_normal(16).astype(dtype), np.zeros(16, dtype)
    dq, dbuf = dev(gpu, q), dev(gpu, buf)
    with np.errstate(over="ignore", invalid="ignore"):
        cpu.sgd_update(q, g, buf, 0.1, momentum=0.9, first_step=True)
    gpu.sgd_update(dq, dev(gpu, g), dbuf, 0.1, momentum=0.9, first_step=True)
    same(gpu, dq, q, dtype)
    same(gpu, dbuf, buf, dtype)
    empty = dev(gpu, np.empty(0, dtype))
    gpu.sgd_update(empty, empty, None, 0.1)
    gpu.adam_update(empty, empty, empty, empty, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
