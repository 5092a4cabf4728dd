"""Every CUDA kernel in kernels/ run on the CPU through tests/cuda_sim (g++), vs NumPy.

Outputs are pre-filled with NaN ("poisoned") so any element a kernel forgets to write fails the
comparison.  Sizes are odd and not multiples of the block; each kernel runs with a full grid
and with a tiny grid (2 blocks of 64) so grid-stride loops wrap several times.  Conv/pool/RNN
kernels are checked against naive references written here, and against the NumPy backend's
``cpu_conv``/``cpu_rnn`` where those are implemented.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import simbuild  # noqa: E402

pytestmark = pytest.mark.skipif(simbuild.gxx() is None, reason="g++ not found: cannot simulate")

CU_FILES = sorted((ROOT / "kernels").glob("*.cu"))
DTYPES = [np.float32, np.float64]
CT = {np.float32: "float", np.float64: "double"}  # kernel name expressions: relu<float>
# (grid or None for ceil(n/block), block): full grid, and a tiny grid that forces grid-striding.
LAUNCH = [(None, 256), (2, 64)]
COVERED: set[str] = set()  # kernel names exercised below (checked by test_every_kernel_tested)


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cuda_sim_build")
    with ThreadPoolExecutor(max_workers=2) as pool:
        libs = list(pool.map(lambda f: simbuild.build(f, cache), CU_FILES))
    kernels = {}
    for lib in libs:
        kernels.update(lib)
    return kernels


def run(sim, name, n, launch, *args):
    """Launch kernel ``name`` over ``n`` work items with a (grid, block) pair."""
    COVERED.add(name)
    grid, block = launch
    if grid is None:
        grid = max(1, -(-n // block))
    sim[name](grid, block, *args)


def poison(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


@pytest.fixture(scope="module")
def cpu():
    return nnx.backend.create("cpu")


def _backend_ref(module_name, fn):
    """The NumPy backend's cpu_conv/cpu_rnn function, or skip when not written yet."""
    mod = getattr(nnx.backend, module_name, None)
    if mod is None:
        import importlib
        mod = importlib.import_module(f"nnx.backend.{module_name}")
    if not hasattr(mod, fn):
        pytest.skip(f"nnx.backend.{module_name}.{fn} is not implemented yet")
    return getattr(mod, fn)


# ------------------------------------------------------------------ element-wise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("launch", LAUNCH)
def test_tanh_backward(sim, cpu, rng, dtype, launch):
    n = 1003
    y = np.tanh(rng.standard_normal(n)).astype(dtype)
    gy = rng.standard_normal(n).astype(dtype)
    gx = poison(n, dtype)
    run(sim, f"tanh_backward<{CT[dtype]}>", n, launch, n, y, gy, gx)
    np.testing.assert_allclose(gx, cpu.tanh_backward(y, gy), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("launch", LAUNCH)
def test_relu_family(sim, cpu, rng, dtype, launch):
    shape = (3, 7, 5, 9)
    x = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    n = x.size
    y = poison(shape, dtype)
    run(sim, f"relu<{CT[dtype]}>", n, launch, n, x, y)
    np.testing.assert_array_equal(y, cpu.relu(x))
    yb = poison(shape, dtype)
    run(sim, f"bias_relu<{CT[dtype]}>", n, launch, n, 7, 5 * 9, x, b, yb)
    np.testing.assert_allclose(yb, cpu.bias_relu(x, b), **tol(dtype))
    gy = rng.standard_normal(shape).astype(dtype)
    gx = poison(shape, dtype)
    run(sim, f"relu_backward<{CT[dtype]}>", n, launch, n, yb, gy, gx)
    np.testing.assert_array_equal(gx, cpu.relu_backward(yb, gy))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_2d_and_nan(sim, cpu, rng, dtype):
    x = rng.standard_normal((5, 11)).astype(dtype)  # (N, C): inner size 1
    x[0, 0] = np.nan
    b = rng.standard_normal(11).astype(dtype)
    y = poison(x.shape, dtype)
    run(sim, f"bias_relu<{CT[dtype]}>", x.size, (None, 256), x.size, 11, 1, x, b, y)
    np.testing.assert_allclose(y, cpu.bias_relu(x, b), **tol(dtype))  # NaN stays NaN


# ------------------------------------------------------------------ bias + layout + ReLU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("launch", LAUNCH)
@pytest.mark.parametrize("has_bias,relu", [(1, 1), (1, 0), (0, 1)])
def test_conv_output_nchw(sim, cpu, rng, dtype, launch, has_bias, relu):
    """(O, N*HW) GEMM result -> NCHW, + bias, ReLU: the base backend's conv2d_gemm_forward
    arithmetic (one add and one max per element, so equal up to nothing: same operations)."""
    n, o, oh, ow = 3, 7, 5, 9
    g = rng.standard_normal((o, n * oh * ow)).astype(dtype)
    g[2, 4] = np.nan                                   # NaN survives the ReLU, as np.maximum
    b = rng.standard_normal(o).astype(dtype)
    y = poison((n, o, oh, ow), dtype)
    run(sim, f"conv_output_nchw<{CT[dtype]}>", y.size, launch, y.size, o, oh * ow, g, b,
        has_bias, relu, y)
    want = g.reshape(o, n, oh, ow).transpose(1, 0, 2, 3) + (b.reshape(1, o, 1, 1) * has_bias)
    if relu:
        want = np.maximum(want, 0)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("launch", [(None, 64), (2, 64), (3, 256)])
@pytest.mark.parametrize("shape", [(5, 7, 1), (3, 6, 45), (2, 3, 700)])
@pytest.mark.parametrize("relu,transpose,has_bias", [(1, 1, 1), (1, 0, 1), (0, 1, 0),
                                                     (0, 0, 1)])
def test_bias_grad_rows(sim, cpu, rng, dtype, launch, shape, relu, transpose, has_bias):
    """d = gy * [y > 0] (in gy's layout or as (C, N*inner) rows) and db = Σ d per channel,
    vs the base backend's separate passes.  The sum's order differs (per-thread strides,
    then a tree): any order of n additions is within n * eps * Σ|d| of the exact sum."""
    outer, c, inner = shape
    grid, block = launch
    gy = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    d = poison((c, outer * inner) if transpose else shape, dtype)
    db = poison(c, dtype)
    run(sim, f"bias_grad_rows<{CT[dtype]}>", c, (grid or c, block), outer, c, inner, gy, y,
        relu, transpose, has_bias, d, db)
    want_d, want_db = nnx.backend.base.Backend.bias_grad(cpu, gy, y if relu else None,
                                                         bool(has_bias), bool(transpose))
    np.testing.assert_array_equal(d, want_d)            # one multiply per element
    if has_bias:
        n, eps = outer * inner, np.finfo(dtype).eps
        abs_sum = np.abs(gy).sum(axis=(0, 2))               # >= Σ|d| per channel
        assert (np.abs(db - want_db) <= 2 * n * eps * abs_sum).all()  # both sums' errors
    else:
        assert np.isnan(db).all()                       # not written


# ------------------------------------------------------------------ softmax cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,grid,block", [(7, 10, 7, 32), (5, 300, 2, 256), (3, 1, 3, 64),
                                            (4, 1000, 4, 128)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(sim, cpu, rng, dtype, n, c, grid, block, smoothing):
    z = (rng.standard_normal((n, c)) * 4 + 30).astype(dtype)  # large offset: needs max-subtraction
    labels = rng.integers(0, c, n).astype(np.int64)
    scale = rng.random(n).astype(dtype)
    scale[0] = 0.0  # a masked row
    loss = poison(n, dtype)
    run(sim, f"softmax_cross_entropy_forward<{CT[dtype]}>", n, (grid, block),
        n, c, z, labels, 0, 0, smoothing, loss)
    ref = cpu.softmax_cross_entropy_forward(z, labels, smoothing)
    t = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else tol(dtype)
    np.testing.assert_allclose(loss, ref, **t)
    g = poison((n, c), dtype)
    run(sim, f"softmax_cross_entropy_backward<{CT[dtype]}>", n, (grid, block),
        n, c, z, labels, 0, 0, smoothing, 1.0, scale, 1, scale, 0, g)
    ref_g = cpu.softmax_cross_entropy_backward(z, labels, smoothing, scale)
    np.testing.assert_allclose(g, ref_g, **(dict(rtol=1e-4, atol=1e-6)
                                            if dtype == np.float32 else tol(dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,grid,block", [(7, 10, 7, 32), (300, 5, 2, 32), (3, 1, 3, 64)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_loss_fused(sim, cpu, rng, dtype, n, c, grid, block, reduction):
    """The fused loss (ignore_index, device count, reduction, upstream / count) against the
    NumPy backend's reference; 300 rows > the reduce block, so its rows stride."""
    z = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n).astype(np.int64)
    labels[rng.random(n) < 0.3] = 1 if c > 1 else 0   # an ignored class inside [0, C)
    ignore = 1 if c > 1 else 0
    s = dtype(0.1)
    rows = poison(n, dtype)
    run(sim, f"softmax_cross_entropy_forward<{CT[dtype]}>", n, (grid, block),
        n, c, z, labels, 1, ignore, s, rows)
    out, status = poison(2, dtype), np.zeros(2, np.int64)
    run(sim, f"cross_entropy_reduce<{CT[dtype]}>", 1, (1, 64), n, c, rows, labels, 1, ignore,
        int(reduction == "mean"), out, status)
    ref_status = np.zeros(2, np.int64)
    ref, count = cpu.cross_entropy_loss_forward(z, labels, s, ignore, reduction, ref_status)
    # a float32 sum over n <= 300 rows: n*eps bounds the difference of summation orders
    t = dict(rtol=n * 1.2e-7 * 4, atol=1e-6) if dtype == np.float32 else tol(dtype)
    if reduction == "none":
        np.testing.assert_allclose(rows, ref, **t)
    else:
        np.testing.assert_allclose(out[0], ref, **t)
    assert out[1] == count == np.count_nonzero(labels != ignore)
    assert status.tolist() == ref_status.tolist() == [0, 0]
    up = rng.random(n).astype(dtype) if reduction == "none" else dtype(0.7)
    g = poison((n, c), dtype)
    has_row = int(reduction == "none")
    run(sim, f"softmax_cross_entropy_backward<{CT[dtype]}>", n, (grid, block),
        n, c, z, labels, 1, ignore, s, dtype(1) if has_row else up,
        up if has_row else z, has_row, out[1:], int(reduction == "mean"), g)
    ref_g = cpu.cross_entropy_loss_backward(z, labels, s, ignore, up,
                                            count if reduction == "mean" else None)
    np.testing.assert_allclose(g, ref_g, **(dict(rtol=1e-4, atol=1e-6)
                                            if dtype == np.float32 else tol(dtype)))
    assert np.all(g[labels == ignore] == 0)


def test_cross_entropy_all_ignored_and_bad_labels(sim, cpu):
    z = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    ignored = np.full(5, -100, np.int64)
    rows, out, status = poison(5, np.float32), poison(2, np.float32), np.zeros(2, np.int64)
    run(sim, "softmax_cross_entropy_forward<float>", 5, (5, 32), 5, 4, z, ignored, 1, -100,
        0.0, rows)
    run(sim, "cross_entropy_reduce<float>", 1, (1, 32), 5, 4, rows, ignored, 1, -100, 1, out,
        status)
    assert out.tolist() == [0.0, 0.0] and status.tolist() == [0, 0]   # PyTorch: nan; nnx: 0
    # out of range (not ignored): NaN loss, the count and first label recorded, sticky
    for labels, want in (([1, 7, -100, -3, 2], [2, 7]), ([9, 0, 0, 0, 0], [3, 7])):
        labels = np.array(labels, np.int64)
        run(sim, "softmax_cross_entropy_forward<float>", 5, (2, 32), 5, 4, z, labels, 1,
            -100, 0.0, rows)
        run(sim, "cross_entropy_reduce<float>", 1, (1, 32), 5, 4, rows, labels, 1, -100, 1,
            out, status)
        assert np.isnan(out[0]) and status.tolist() == want
    ref_status = np.zeros(2, np.int64)
    ref, _ = cpu.cross_entropy_loss_forward(z, np.array([1, 7, -100, -3, 2]), 0.0, -100,
                                            "mean", ref_status)
    assert np.isnan(ref) and ref_status.tolist() == [2, 7]


def test_softmax_cross_entropy_bad_label_is_nan(sim):
    z = np.zeros((2, 4), np.float32)
    labels = np.array([1, 4], np.int64)
    loss = np.zeros(2, np.float32)
    run(sim, "softmax_cross_entropy_forward<float>", 2, (2, 32), 2, 4, z, labels, 0, 0, 0.0,
        loss)
    assert np.isfinite(loss[0]) and np.isnan(loss[1])


# ------------------------------------------------------------------ trainer bookkeeping
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,block", [(7, 10, 32), (300, 3, 64), (5, 1, 32)])
def test_step_metrics_add(sim, cpu, rng, dtype, n, c, block):
    """Running loss sum and correct count vs NumPy's argmax (first maximum; NaN wins): rows
    with ties and a NaN row; 300 rows stride over a 64-thread block; two calls accumulate."""
    z = rng.standard_normal((n, c)).astype(dtype)
    z[0] = 1.0                                    # all tied: argmax 0
    if n > 3 and c > 2:
        z[3, 2] = np.nan                          # NaN: argmax 2
    labels = np.where(rng.random(n) < 0.5, np.argmax(z, axis=1), rng.integers(0, c, n))
    labels = labels.astype(np.int64)
    loss = np.array(rng.random(), dtype)
    acc = np.array([1.5, 4.0])
    for _ in range(2):
        run(sim, f"step_metrics_add<{CT[dtype]}>", 1, (1, block), n, c, z, labels, loss,
            float(n), acc)
    want_sum, want_correct = 1.5, 4
    for _ in range(2):
        want_sum, want_correct = cpu.step_metrics_add(want_sum, want_correct, loss, n, z,
                                                      labels)
    # two products loss*n added in double vs NumPy's arithmetic in the loss dtype: within
    # a few eps of the dtype
    np.testing.assert_allclose(acc[0], want_sum, rtol=4 * np.finfo(dtype).eps)
    assert acc[1] == want_correct


# ------------------------------------------------------------------ im2col / col2im
def out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def ref_im2col(x, k, s, p, d):
    n, c, h, w = x.shape
    oh, ow = out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    cols = np.empty((c, k[0], k[1], n, oh, ow), x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            win = xp[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                     j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]]
            cols[:, i, j] = win.transpose(1, 0, 2, 3)
    return cols.reshape(c * k[0] * k[1], n * oh * ow)


def ref_col2im(cols, shape, k, s, p, d):
    n, c, h, w = shape
    oh, ow = out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1])
    cols6 = cols.reshape(c, k[0], k[1], n, oh, ow)
    xp = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), cols.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            xp[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
               j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]] += \
                cols6[:, i, j].transpose(1, 0, 2, 3)
    return xp[:, :, p[0]: p[0] + h, p[1]: p[1] + w]


CONV_GEOMS = [  # (x shape, kernel, stride, padding, dilation)
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 11, 8), (3, 2), (2, 3), (2, 1), (2, 1)),
    ((3, 1, 5, 5), (5, 5), (1, 1), (0, 0), (1, 1)),
    ((2, 4, 9, 10), (2, 3), (3, 2), (1, 2), (3, 2)),
]


def _im2col_sim(sim, x, k, s, p, d, launch):
    n, c, h, w = x.shape
    oh, ow = out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1])
    cols = poison((c * k[0] * k[1], n * oh * ow), x.dtype)
    run(sim, f"im2col<{CT[x.dtype.type]}>", cols.size, launch, cols.size, n, c, h, w, *k, oh, ow,
        *s, *p, *d, x, cols)
    return cols


def _col2im_sim(sim, cols, shape, k, s, p, d, launch):
    n, c, h, w = shape
    oh, ow = out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1])
    x = poison(shape, cols.dtype)
    run(sim, f"col2im<{CT[cols.dtype.type]}>", x.size, launch, x.size, n, c, h, w, *k, oh, ow,
        *s, *p, *d, cols, x)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", CONV_GEOMS)
@pytest.mark.parametrize("launch", LAUNCH)
def test_im2col_col2im(sim, rng, dtype, geom, launch):
    shape, k, s, p, d = geom
    x = rng.standard_normal(shape).astype(dtype)
    cols = _im2col_sim(sim, x, k, s, p, d, launch)
    np.testing.assert_array_equal(cols, ref_im2col(x, k, s, p, d))
    g = rng.standard_normal(cols.shape).astype(dtype)
    gx = _col2im_sim(sim, g, shape, k, s, p, d, launch)
    np.testing.assert_allclose(gx, ref_col2im(g, shape, k, s, p, d), **tol(dtype))
    # adjointness: <im2col(x), g> == <x, col2im(g)>
    if dtype == np.float64:
        assert np.isclose(np.vdot(cols, g), np.vdot(x, gx), rtol=1e-12)


@pytest.mark.parametrize("geom", CONV_GEOMS[:2])
def test_im2col_col2im_vs_backend(sim, cpu, rng, geom):
    _backend_ref("cpu_conv", "im2col")
    shape, k, s, p, d = geom
    x = rng.standard_normal(shape)
    cols = _im2col_sim(sim, x, k, s, p, d, (None, 256))
    np.testing.assert_allclose(cols, cpu.im2col(x, k, s, p, d), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(cols.shape)
    gx = _col2im_sim(sim, g, shape, k, s, p, d, (None, 256))
    np.testing.assert_allclose(gx, cpu.col2im(g, shape, k, s, p, d), rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------ pooling
POOL_GEOMS = [  # (x shape, kernel, stride, padding)
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 8, 5), (2, 3), (1, 2), (0, 1)),
    ((3, 1, 6, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 3, 9, 7), (4, 3), (3, 1), (2, 1)),
]


def ref_pool_windows(shape, k, s, p):
    """Yield (oh, ow, h0, h1, w0, w1, divisor_with_pad) per output position (PyTorch rules)."""
    _, _, h, w = shape
    oh_n, ow_n = out_size(h, k[0], s[0], p[0]), out_size(w, k[1], s[1], p[1])
    for oh in range(oh_n):
        for ow in range(ow_n):
            hs, ws = oh * s[0] - p[0], ow * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            pool = (he - hs) * (we - ws)
            yield oh, ow, max(hs, 0), min(he, h), max(ws, 0), min(we, w), pool


def ref_maxpool(x, k, s, p):
    n, c, h, w = x.shape
    oh_n, ow_n = out_size(h, k[0], s[0], p[0]), out_size(w, k[1], s[1], p[1])
    y = np.empty((n, c, oh_n, ow_n), x.dtype)
    arg = np.empty((n, c, oh_n, ow_n), np.int64)
    for oh, ow, h0, h1, w0, w1, _ in ref_pool_windows(x.shape, k, s, p):
        win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
        a = win.argmax(axis=2)
        y[:, :, oh, ow] = np.take_along_axis(win, a[..., None], 2)[..., 0]
        arg[:, :, oh, ow] = (h0 + a // (w1 - w0)) * w + w0 + a % (w1 - w0)
    return y, arg


def ref_maxpool_backward(gy, arg, shape):
    n, c, h, w = shape
    gx = np.zeros((n * c, h * w), gy.dtype)
    rows = np.repeat(np.arange(n * c), gy[0, 0].size)
    np.add.at(gx, (rows, arg.reshape(-1)), gy.reshape(-1))
    return gx.reshape(shape)


def ref_avgpool(x, k, s, p, include_pad):
    n, c, h, w = x.shape
    y = np.empty((n, c, out_size(h, k[0], s[0], p[0]), out_size(w, k[1], s[1], p[1])), x.dtype)
    for oh, ow, h0, h1, w0, w1, pool in ref_pool_windows(x.shape, k, s, p):
        div = pool if include_pad else (h1 - h0) * (w1 - w0)
        y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / div
    return y


def ref_avgpool_backward(gy, shape, k, s, p, include_pad):
    gx = np.zeros(shape, gy.dtype)
    for oh, ow, h0, h1, w0, w1, pool in ref_pool_windows(shape, k, s, p):
        div = pool if include_pad else (h1 - h0) * (w1 - w0)
        gx[:, :, h0:h1, w0:w1] += (gy[:, :, oh, ow] / div)[:, :, None, None]
    return gx


def _pool_sim(sim, kind, x_or_gy, shape, k, s, p, launch, extra=(), argmax=None):
    n, c, h, w = shape
    oh, ow = out_size(h, k[0], s[0], p[0]), out_size(w, k[1], s[1], p[1])
    ct = CT[x_or_gy.dtype.type]
    geo = (h, w, oh, ow, *k, *s, *p)
    if kind == "max_fwd":
        y = poison((n, c, oh, ow), x_or_gy.dtype)
        a = np.full((n, c, oh, ow), -7, np.int32)
        run(sim, f"maxpool2d_forward<{ct}>", y.size, launch, y.size, *geo, x_or_gy, y, a)
        return y, a
    gx = poison(shape, x_or_gy.dtype)
    if kind == "max_bwd":
        run(sim, f"maxpool2d_backward<{ct}>", gx.size, launch, gx.size, *geo, x_or_gy, argmax, gx)
        return gx
    if kind == "avg_fwd":
        y = poison((n, c, oh, ow), x_or_gy.dtype)
        run(sim, f"avgpool2d_forward<{ct}>", y.size, launch, y.size, *geo, *extra, x_or_gy, y)
        return y
    run(sim, f"avgpool2d_backward<{ct}>", gx.size, launch, gx.size, *geo, *extra, x_or_gy, gx)
    return gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
@pytest.mark.parametrize("launch", LAUNCH)
def test_maxpool(sim, rng, dtype, geom, launch):
    shape, k, s, p = geom
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 1, :3] = x[0, 0, 1, 0]  # ties: the first index must win
    y, arg = _pool_sim(sim, "max_fwd", x, shape, k, s, p, launch)
    ry, rarg = ref_maxpool(x, k, s, p)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = _pool_sim(sim, "max_bwd", gy, shape, k, s, p, launch, argmax=arg)
    np.testing.assert_allclose(gx, ref_maxpool_backward(gy, rarg, shape), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avgpool(sim, rng, dtype, geom, include_pad):
    shape, k, s, p = geom
    x = rng.standard_normal(shape).astype(dtype)
    for launch in LAUNCH:
        y = _pool_sim(sim, "avg_fwd", x, shape, k, s, p, launch, extra=(int(include_pad),))
        np.testing.assert_allclose(y, ref_avgpool(x, k, s, p, include_pad), **tol(dtype))
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx = _pool_sim(sim, "avg_bwd", gy, shape, k, s, p, launch, extra=(int(include_pad),))
        np.testing.assert_allclose(gx, ref_avgpool_backward(gy, shape, k, s, p, include_pad),
                                   **tol(dtype))


@pytest.mark.parametrize("geom", POOL_GEOMS[:2])
def test_pooling_vs_backend(sim, cpu, rng, geom):
    _backend_ref("cpu_conv", "maxpool2d_forward")
    shape, k, s, p = geom
    x = rng.standard_normal(shape)
    y, arg = _pool_sim(sim, "max_fwd", x, shape, k, s, p, (None, 256))
    ry, saved = cpu.maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, ry)
    gy = rng.standard_normal(y.shape)
    gx = _pool_sim(sim, "max_bwd", gy, shape, k, s, p, (None, 256), argmax=arg)
    np.testing.assert_allclose(gx, cpu.maxpool2d_backward(gy, saved, shape, k, s, p), rtol=1e-12)
    for inc in (True, False):
        ya = _pool_sim(sim, "avg_fwd", x, shape, k, s, p, (None, 256), extra=(int(inc),))
        np.testing.assert_allclose(ya, cpu.avgpool2d_forward(x, k, s, p, inc), rtol=1e-12)
        ga = _pool_sim(sim, "avg_bwd", gy, shape, k, s, p, (None, 256), extra=(int(inc),))
        np.testing.assert_allclose(ga, cpu.avgpool2d_backward(gy, shape, k, s, p, inc),
                                   rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------ recurrent cells
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def ref_lstm(gates, c_prev, dh, dc):
    i, f, g, o = np.split(gates, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c = f * c_prev + i * g
    tc = np.tanh(c)
    h = o * tc
    dct = dc + dh * o * (1 - tc ** 2)
    dgates = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f),
                             dct * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
    return h, c, dgates, dct * f


def ref_gru(gi, gh, h_prev, dh):
    H = h_prev.shape[1]
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    ghn = gh[:, 2 * H:]
    n = np.tanh(gi[:, 2 * H:] + r * ghn)
    h = (1 - z) * n + z * h_prev
    dan = dh * (1 - z) * (1 - n ** 2)
    dar = dan * ghn * r * (1 - r)
    daz = dh * (h_prev - n) * z * (1 - z)
    dgi = np.concatenate([dar, daz, dan], axis=1)
    dgh = np.concatenate([dar, daz, dan * r], axis=1)
    return h, dgi, dgh, dh * z


def _lstm_sim(sim, gates, c_prev, dh, dc, launch, has=(1, 1)):
    n, H = c_prev.shape
    dt = gates.dtype
    ct = CT[dt.type]
    h, c, act = poison((n, H), dt), poison((n, H), dt), poison((n, 4 * H), dt)
    run(sim, f"lstm_cell_forward<{ct}>", n * H, launch, n * H, H, gates, c_prev, h, c, act)
    dg, dcp = poison((n, 4 * H), dt), poison((n, H), dt)
    run(sim, f"lstm_cell_backward<{ct}>", n * H, launch, n * H, H, dh, dc, *has, act, c_prev, c,
        dg, dcp)
    return h, c, dg, dcp, (act, c_prev, c)


def _gru_sim(sim, gi, gh, h_prev, dh, launch):
    n, H = h_prev.shape
    dt = gi.dtype
    ct = CT[dt.type]
    h, packed = poison((n, H), dt), poison((n, 4 * H), dt)
    run(sim, f"gru_cell_forward<{ct}>", n * H, launch, n * H, H, gi, gh, h_prev, h, packed)
    dgi, dgh, dhp = poison((n, 3 * H), dt), poison((n, 3 * H), dt), poison((n, H), dt)
    run(sim, f"gru_cell_backward<{ct}>", n * H, launch, n * H, H, dh, packed, h_prev, dgi, dgh, dhp)
    return h, dgi, dgh, dhp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,H", [(1, 1), (3, 37), (5, 70)])
@pytest.mark.parametrize("launch", LAUNCH)
def test_lstm_cell(sim, rng, dtype, n, H, launch):
    gates = (rng.standard_normal((n, 4 * H)) * 2).astype(dtype)
    c_prev, dh, dc = (rng.standard_normal((n, H)).astype(dtype) for _ in range(3))
    h, c, dg, dcp, _ = _lstm_sim(sim, gates, c_prev, dh, dc, launch)
    rh, rc, rdg, rdcp = ref_lstm(gates, c_prev, dh, dc)
    for a, b in ((h, rh), (c, rc), (dg, rdg), (dcp, rdcp)):
        np.testing.assert_allclose(a, b, **tol(dtype))
    # has_dh / has_dc == 0: the gradient pointer is ignored (pass a poisoned one)
    junk = poison((n, H), dtype)
    _, _, dg0, dcp0, _ = _lstm_sim(sim, gates, c_prev, junk, dc, launch, has=(0, 1))
    _, _, rdg0, rdcp0 = ref_lstm(gates, c_prev, np.zeros_like(dh), dc)
    np.testing.assert_allclose(dg0, rdg0, **tol(dtype))
    np.testing.assert_allclose(dcp0, rdcp0, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,H", [(1, 1), (3, 37), (5, 70)])
@pytest.mark.parametrize("launch", LAUNCH)
def test_gru_cell(sim, rng, dtype, n, H, launch):
    gi, gh = ((rng.standard_normal((n, 3 * H)) * 2).astype(dtype) for _ in range(2))
    h_prev, dh = (rng.standard_normal((n, H)).astype(dtype) for _ in range(2))
    out = _gru_sim(sim, gi, gh, h_prev, dh, launch)
    for a, b in zip(out, ref_gru(gi, gh, h_prev, dh)):
        np.testing.assert_allclose(a, b, **tol(dtype))


def test_rnn_cells_vs_backend(sim, cpu, rng):
    _backend_ref("cpu_rnn", "lstm_cell_forward")
    n, H = 3, 37
    gates = rng.standard_normal((n, 4 * H)) * 2
    c_prev, dh, dc = (rng.standard_normal((n, H)) for _ in range(3))
    h, c, dg, dcp, _ = _lstm_sim(sim, gates, c_prev, dh, dc, (None, 256))
    rh, rc, saved = cpu.lstm_cell_forward(gates, c_prev)
    rdg, rdcp = cpu.lstm_cell_backward(dh, dc, saved)
    for a, b in ((h, rh), (c, rc), (dg, rdg), (dcp, rdcp)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    _backend_ref("cpu_rnn", "gru_cell_forward")
    gi, gh = (rng.standard_normal((n, 3 * H)) * 2 for _ in range(2))
    h_prev = rng.standard_normal((n, H))
    h, dgi, dgh, dhp = _gru_sim(sim, gi, gh, h_prev, dh, (None, 256))
    rh, saved = cpu.gru_cell_forward(gi, gh, h_prev)
    for a, b in zip((h, *cpu.gru_cell_backward(dh, saved)), (rh, dgi, dgh, dhp)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------ optimizers
SGD_CASES = [dict(momentum=0.0), dict(momentum=0.9, first_step=True),
             dict(momentum=0.9, dampening=0.9, first_step=True),
             dict(momentum=0.9, dampening=0.1, weight_decay=1e-2),
             dict(momentum=0.8, nesterov=True, weight_decay=1e-3)]


def _sgd_scalars(case, lr, t):
    """The SGD kernels' scalar arguments after the arrays, as the backend passes them."""
    mom, damp = case["momentum"], case.get("dampening", 0.0)
    return (t(lr), t(mom), t(1 - damp), t(case.get("weight_decay", 0.0)),
            int(case.get("nesterov", False)), int(case.get("first_step", False)), int(mom != 0))


def _adam_scalars(lr, b1, b2, eps, wd, step, decoupled, t):
    """The Adam kernels' scalar arguments after the arrays (wd mode 0 none, 1 L2, 2 AdamW)."""
    mode = 0 if not wd else (2 if decoupled else 1)
    return (t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), t(wd), t(1 - lr * wd),
            t(lr / (1 - b1 ** step)), t(1 - b2 ** step), mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("launch", LAUNCH)
def test_sgd_update(sim, cpu, rng, dtype, case, launch):
    n, lr = 777, 0.05
    p, g, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    rp, rbuf = p.copy(), buf.copy()
    cpu.sgd_update(rp, g, rbuf if case["momentum"] else None, lr, **case)
    run(sim, f"sgd_update<{CT[dtype]}>", n, launch, n, p, g, buf, *_sgd_scalars(case, lr, dtype))
    np.testing.assert_allclose(p, rp, **tol(dtype))
    np.testing.assert_allclose(buf, rbuf, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
@pytest.mark.parametrize("launch", LAUNCH)
def test_adam_update(sim, cpu, rng, dtype, wd, decoupled, launch):
    n, lr, b1, b2, eps, step = 1001, 1e-3, 0.9, 0.999, 1e-8, 3
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    rp, rm, rv = p.copy(), m.copy(), v.copy()
    cpu.adam_update(rp, g, rm, rv, lr, b1, b2, eps, wd, step, decoupled=decoupled)
    run(sim, f"adam_update<{CT[dtype]}>", n, launch, n, p, g, m, v,
        *_adam_scalars(lr, b1, b2, eps, wd, step, decoupled, dtype))
    for a, b in ((p, rp), (m, rm), (v, rv)):
        np.testing.assert_allclose(a, b, **tol(dtype))


def _table(rows):
    """The *_multi kernels' table: running offsets, then each row's addresses (the simulator
    runs on host memory, so host addresses are its device pointers)."""
    sizes = np.cumsum([0] + [r[0].size for r in rows], dtype=np.int64)
    return np.concatenate([sizes, np.array([a.ctypes.data for r in rows for a in r], np.int64)])


MULTI_SIZES = (777, 1, 64, 300)   # tensor boundaries inside blocks and on a block edge


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("launch", LAUNCH)
def test_sgd_update_multi(sim, cpu, rng, dtype, case, launch):
    lr, t = 0.05, dtype
    rows = [tuple(rng.standard_normal(n).astype(dtype) for _ in range(3)) for n in MULTI_SIZES]
    refs = [(p.copy(), b.copy()) for p, _, b in rows]
    for (rp, rb), (_, g, _) in zip(refs, rows):
        cpu.sgd_update(rp, g, rb if case["momentum"] else None, lr, **case)
    table = _table(rows)
    run(sim, f"sgd_update_multi<{CT[dtype]}>", int(table[len(rows)]), launch, len(rows), table,
        *_sgd_scalars(case, lr, t))
    for (p, _, b), (rp, rb) in zip(rows, refs):
        np.testing.assert_allclose(p, rp, **tol(dtype))
        np.testing.assert_allclose(b, rb, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
@pytest.mark.parametrize("launch", LAUNCH)
def test_adam_update_multi(sim, cpu, rng, dtype, wd, decoupled, launch):
    lr, b1, b2, eps, step, t = 1e-3, 0.9, 0.999, 1e-8, 3, dtype
    rows = [(*(rng.standard_normal(n).astype(dtype) for _ in range(3)),
             rng.random(n).astype(dtype)) for n in MULTI_SIZES]
    refs = [(p.copy(), m.copy(), v.copy()) for p, _, m, v in rows]
    for (rp, rm, rv), (_, g, _, _) in zip(refs, rows):
        cpu.adam_update(rp, g, rm, rv, lr, b1, b2, eps, wd, step, decoupled=decoupled)
    table = _table(rows)
    run(sim, f"adam_update_multi<{CT[dtype]}>", int(table[len(rows)]), launch, len(rows),
        table, *_adam_scalars(lr, b1, b2, eps, wd, step, decoupled, t))
    for (p, _, m, v), ref in zip(rows, refs):
        for a, b in zip((p, m, v), ref):
            np.testing.assert_allclose(a, b, **tol(dtype))


# ------------------------------------------------------------------ coverage (keep last)
def test_every_kernel_tested(sim):
    missing = sorted(set(sim) - COVERED)
    if len(COVERED) == 0:
        pytest.skip("run the whole file to check coverage")
    assert not missing, f"kernels without a simulator test: {missing}"
