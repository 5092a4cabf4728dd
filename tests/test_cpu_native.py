"""The compiled CPU kernels (``kernels/cpu/*.c`` via ``nnx/backend/native.py`` and
``nnx/backend/cpu_direct.py``): the C convolution and max pool against the NumPy im2col path,
a naive loop reference and PyTorch; finite-difference gradchecks; thread chunking; the
build / cache / fallback machinery; errors on the C path."""
from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

import nnx
from nnx.backend import cpu_conv, cpu_direct, native
from nnx.nn import Conv2d, MaxPool2d
from native_build import c_kernels_build, count_chunks
from tolerances import assert_within, reorder_bound, windows_per_input


needs_c = pytest.mark.skipif(not c_kernels_build("conv2d", "maxpool2d"),
                             reason="the C kernels do not build here")


@pytest.fixture(autouse=True)
def _cpu_backend():
    previous = nnx.backend.get()
    nnx.backend.use("cpu")
    nnx.manual_seed(4321)
    try:
        yield
    finally:
        nnx.backend.use(previous.name)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """Isolated build state: an empty cache folder, no loaded libraries, no warning issued;
    reset again afterwards so later tests load the normal libraries."""
    monkeypatch.setenv("NNX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NNX_CPU_KERNELS", raising=False)
    native.reset()
    yield tmp_path / "cpu-kernels"
    native.reset()


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the C conv / pool wrappers the NumPy backend makes."""
    counts = {"conv_fwd": 0, "conv_bwd": 0, "pool_fwd": 0, "pool_bwd": 0}

    def wrap(name, key):
        real = getattr(cpu_direct, name)

        def f(*a, **k):
            counts[key] += 1
            return real(*a, **k)

        monkeypatch.setattr(cpu_direct, name, f)

    wrap("conv2d_forward", "conv_fwd")
    wrap("conv2d_backward", "conv_bwd")
    wrap("maxpool2d_forward", "pool_fwd")
    wrap("maxpool2d_backward", "pool_bwd")
    return counts


# ------------------------------------------------------------------------- references
def _out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _windows(xpad, i, j, s, d, oh, ow):
    (sh, sw), (dh, dw) = s, d
    return (slice(None), slice(None), slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def ref_conv(x, w, b, dy, stride, padding, dilation, groups=1):
    """Float64 loop-over-kernel-offsets reference: ``(y, dx, dW, db)``."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    (ph, pw) = padding
    oh = _out_size(h, kh, stride[0], ph, dilation[0])
    ow = _out_size(wd, kw, stride[1], pw, dilation[1])
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, oh, ow))
    dxpad = np.zeros_like(xpad)
    dW = np.zeros_like(w)
    dy = None if dy is None else dy.astype(np.float64)
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for i in range(kh):
            for j in range(kw):
                win = _windows(xpad, i, j, stride, dilation, oh, ow)
                xs = xpad[win][:, cs]
                y[:, os_] += np.einsum("nchw,oc->nohw", xs, w[os_, :, i, j])
                if dy is not None:
                    dW[os_, :, i, j] = np.einsum("nohw,nchw->oc", dy[:, os_], xs)
                    view = dxpad[win]
                    view[:, cs] += np.einsum("nohw,oc->nchw", dy[:, os_], w[os_, :, i, j])
    if b is not None:
        y += b.astype(np.float64).reshape(1, -1, 1, 1)
    dx = dxpad[:, :, ph:ph + h, pw:pw + wd]
    db = None if dy is None else dy.sum(axis=(0, 2, 3))
    return y, dx, dW, db


def _run_conv(conv, x, dy):
    conv.zero_grad()
    y = conv(x)
    tag = conv.ctx.saved[0]
    dx = conv.backward(dy)
    db = None if conv.bias is None else conv.bias.grad.copy()
    return tag, y, dx, conv.weight.grad.copy(), db


def _close(a, b, dtype, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)


# ------------------------------------------------------------------------- 1. C conv vs im2col
CONV_GEOMS = [  # (N, C, H, W, O, kernel, padding, dilation, bias)
    (2, 3, 7, 9, 5, 1, 0, 1, True),                  # 1x1
    (2, 3, 7, 9, 5, 3, 1, 1, True),                  # 3x3 "same"
    (1, 3, 7, 9, 17, 3, 0, 1, True),                 # batch 1, O=17, no padding
    (2, 4, 8, 7, 5, 5, 2, 1, False),                 # 5x5, no bias
    (2, 3, 7, 9, 5, (2, 3), (1, 2), 1, True),        # non-square kernel, ph != pw
    (2, 3, 7, 9, 6, 3, (0, 2), 1, True),             # asymmetric padding ph=0, pw=2
    (2, 3, 9, 9, 5, 3, 2, 2, True),                  # dilation 2, padding 2
    (2, 2, 7, 9, 6, 3, (1, 2), (1, 2), True),        # dilation (1, 2)
    (2, 3, 9, 11, 4, (3, 2), (1, 1), (2, 1), False), # dilation (2, 1), 3x2
    (5, 3, 6, 5, 17, 3, 1, 1, True),                 # batch > threads
    (3, 16, 5, 6, 8, 3, 1, 1, True),                 # channels multiple of 8
    (2, 1, 4, 4, 1, 2, 1, 1, True),                  # single channel, even kernel, padding 1
    (2, 3, 3, 3, 4, 3, 0, 1, True),                  # 1x1 output
    (2, 3, 5, 1, 4, (3, 1), (1, 0), 1, True),        # width-1 input
    (1, 5, 6, 13, 7, (3, 5), (2, 4), (1, 1), True),  # wide kernel, maximal padding
    # strided (10th entry; issue 17): the phase layout forward / dW, phase-wise dx
    (2, 3, 8, 8, 5, 3, 1, 1, True, 2),               # the ResNet's 3x3 stride 2
    (2, 3, 7, 9, 5, 3, 1, 1, True, 2),               # odd sizes
    (2, 3, 7, 9, 5, 1, 0, 1, False, 2),              # 1x1 stride 2 (a shortcut)
    (3, 16, 6, 6, 8, 1, 1, 1, True, 2),              # 1x1 with padding: outputs on padding
    (2, 4, 9, 8, 6, (3, 2), (1, 0), 1, True, (2, 3)),  # mixed strides, non-square kernel
    (1, 3, 7, 7, 4, 5, 2, 1, True, 3),               # stride 3, 5x5
    (2, 2, 5, 5, 3, 2, 0, 1, True, 2),               # kernel = stride
    (5, 3, 6, 5, 17, 3, 3, 1, True, 2),              # padding > kernel/2
    (2, 3, 10, 8, 5, (2, 1), (1, 1), 1, True, (3, 2)),  # kernel < stride, padded: dx rows
                                                        # and columns no phase reaches
    (17, 5, 8, 8, 33, 3, 1, 1, True, 2),             # several weight-gradient groups
]


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", CONV_GEOMS, ids=lambda g: "x".join(map(str, g[:5]))
                         + f"-k{g[5]}p{g[6]}d{g[7]}b{int(g[8])}s{g[9] if len(g) > 9 else 1}")
def test_c_conv_matches_im2col_and_reference(rng, monkeypatch, spy, geom, dtype):
    n, c, h, w, o, k, p, d, bias = geom[:9]
    stride = geom[9] if len(geom) > 9 else 1
    monkeypatch.setenv("NNX_NUM_THREADS", "3")
    monkeypatch.setattr(cpu_conv, "_MIN_CHUNK_ELEMS", 1)     # chunk even these small batches
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    conv = Conv2d(c, o, k, stride, padding=p, dilation=d, bias=bias, dtype=dtype)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal(conv.output_shape(x.shape)).astype(dtype)

    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    tag0, *numpy_res = _run_conv(conv, x, dy)
    assert tag0 == "im2col" and spy["conv_fwd"] == spy["conv_bwd"] == 0
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    tag1, *c_res = _run_conv(conv, x, dy)
    assert tag1 == "direct" and spy["conv_fwd"] == 1 and spy["conv_bwd"] == 1

    ref = ref_conv(x, conv.weight.data, None if conv.bias is None else conv.bias.data, dy,
                   conv.stride, conv.padding, conv.dilation)
    for name, a, b, r in zip(["y", "dx", "dW", "db"], c_res, numpy_res, ref):
        if name == "db" and not bias:
            assert a is None and b is None
            continue
        assert a.dtype == dtype and b.dtype == dtype, name
        assert np.abs(r).max() > 0, name
        _close(a, b, dtype, f"C vs im2col: {name}")
        _close(a, r, dtype, f"C vs reference: {name}")


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_conv_noncontiguous_input(rng, monkeypatch, spy, dtype):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    conv = Conv2d(3, 5, 3, padding=1, dtype=dtype)
    base = rng.standard_normal((2, 3, 9, 7)).astype(dtype)
    x = base.transpose(0, 1, 3, 2)                  # (2, 3, 7, 9), not C-contiguous
    assert not x.flags.c_contiguous
    dy = rng.standard_normal((2, 5, 7, 9)).astype(dtype)
    tag, y, dx, dW, db = _run_conv(conv, x, dy)
    assert tag == "direct" and spy["conv_fwd"] == 1
    tag_c, y_c, dx_c, dW_c, db_c = _run_conv(conv, np.ascontiguousarray(x), dy)
    # the kernels read a C-contiguous copy: the same computation on the same values, exact
    np.testing.assert_array_equal(y, y_c)
    np.testing.assert_array_equal(dx, dx_c)
    np.testing.assert_array_equal(dW, dW_c)
    ref = ref_conv(x, conv.weight.data, conv.bias.data, dy, (1, 1), (1, 1), (1, 1))
    for name, a, r in zip(["y", "dx", "dW", "db"], (y, dx, dW, db), ref):
        _close(a, r, dtype, name)
    # a non-contiguous dy too
    dy_t = np.ascontiguousarray(dy.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not dy_t.flags.c_contiguous
    _, _, dx2, dW2, _ = _run_conv(conv, x, dy_t)
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(dW2, dW)


FALLBACK_CASES = [  # (C, O, kernel, stride, padding, dilation, groups), all unsupported by C
    (3, 4, 3, 2, 1, 2, 1),          # stride 2 with dilation 2
    (3, 4, 3, (1, 2), 1, (2, 1), 1),  # stride (1, 2) with dilation (2, 1)
    (4, 6, 3, 1, 1, 1, 2),          # groups 2
    (3, 4, 3, 1, 3, 1, 1),          # padding 3 > dilation*(k-1) = 2
    (3, 4, 1, 1, 1, 1, 1),          # 1x1 kernel with padding 1
    (3, 4, 3, 1, (0, 3), 1, 1),     # pw > dw*(kw-1) only
    (3, 4, 3, 1, 3, (1, 2), 1),     # ph > dh*(kh-1) only (pw = 3 <= 4)
]


@needs_c
@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_unsupported_geometries_fall_back_to_im2col(rng, monkeypatch, spy, case):
    c, o, k, s, p, d, g = case
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    conv = Conv2d(c, o, k, s, p, d, groups=g, dtype=np.float64)
    assert not cpu_direct.conv_supported(np.float64, conv.stride, conv.padding, conv.dilation,
                                         conv.kernel_size, conv.groups)
    x = rng.standard_normal((2, c, 7, 8))
    dy = rng.standard_normal(conv.output_shape(x.shape))
    tag, y, dx, dW, db = _run_conv(conv, x, dy)
    assert tag == "im2col" and spy["conv_fwd"] == 0 and spy["conv_bwd"] == 0
    ref = ref_conv(x, conv.weight.data, conv.bias.data, dy, conv.stride, conv.padding,
                   conv.dilation, g)
    for name, a, r in zip(["y", "dx", "dW", "db"], (y, dx, dW, db), ref):
        _close(a, r, np.float64, name)


@needs_c
def test_conv_supported_rules(monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    f = cpu_direct.conv_supported
    assert f(np.float32, (1, 1), (1, 1), (1, 1), (3, 3), 1)
    assert f(np.float64, (1, 1), (0, 0), (1, 1), (1, 1), 1)
    assert f(np.float32, (1, 1), (2, 4), (1, 2), (3, 3), 1)
    assert not f(np.float16, (1, 1), (1, 1), (1, 1), (3, 3), 1)
    assert f(np.float32, (2, 2), (1, 1), (1, 1), (3, 3), 1)          # strided, dilation 1
    assert f(np.float32, (2, 1), (3, 0), (1, 1), (1, 1), 1)          # any padding when strided
    assert not f(np.float32, (2, 2), (1, 1), (2, 1), (3, 3), 1)      # strided and dilated
    assert not f(np.float32, (1, 1), (1, 1), (1, 1), (3, 3), 2)
    assert not f(np.float32, (1, 1), (1, 0), (1, 1), (1, 3), 1)


@needs_c
def test_numpy_mode_never_touches_the_c_path(rng, monkeypatch, spy):
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    assert not cpu_direct.conv_supported(np.float32, (1, 1), (1, 1), (1, 1), (3, 3), 1)
    assert not cpu_direct.pool_supported(np.float32)
    conv, pool = Conv2d(3, 4, 3, padding=1), MaxPool2d(2)
    y = pool(conv(rng.standard_normal((2, 3, 6, 6)).astype(np.float32)))
    conv.backward(pool.backward(np.ones_like(y)))
    assert spy == {"conv_fwd": 0, "conv_bwd": 0, "pool_fwd": 0, "pool_bwd": 0}
    assert native.describe().startswith("numpy")


@needs_c
def test_mode_switch_between_forward_and_backward_conv(rng, monkeypatch):
    """NNX_CPU_KERNELS is read at every call: a Conv2d forward run on the C path and its
    backward run after switching to NNX_CPU_KERNELS=0 must still give the right gradients
    (not crash)."""
    conv = Conv2d(3, 4, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    dy = rng.standard_normal((2, 4, 6, 6))
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    conv(x)
    assert conv.ctx.saved[0] == "direct"
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    dx = conv.backward(dy)
    ref = ref_conv(x, conv.weight.data, conv.bias.data, dy, (1, 1), (1, 1), (1, 1))
    for name, a, r in zip(["dx", "dW", "db"], (dx, conv.weight.grad, conv.bias.grad), ref[1:]):
        _close(a, r, np.float64, name)


@needs_c
def test_mode_switch_between_forward_and_backward_maxpool(rng, monkeypatch):
    """The same for MaxPool2d: forward on the C path, backward with NNX_CPU_KERNELS=0."""
    x = rng.standard_normal((2, 3, 6, 6))
    gy = rng.standard_normal((2, 3, 3, 3))
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    ref_pool = MaxPool2d(2)
    ref_pool(x)
    expected = ref_pool.backward(gy)
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    pool = MaxPool2d(2)
    pool(x)
    assert isinstance(pool.ctx.saved, cpu_direct.PoolIndices)
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    np.testing.assert_array_equal(pool.backward(gy), expected)


# ------------------------------------------------------------------------- max pool: C vs NumPy
POOL_CASES = [  # (kernel, stride, padding, input shape)
    (2, None, 0, (2, 3, 6, 8)),
    (2, None, 0, (1, 2, 5, 7)),          # odd sizes: ragged edge dropped
    (3, 2, 1, (2, 3, 7, 9)),
    (3, 1, 0, (1, 2, 5, 6)),             # overlapping
    ((3, 2), (1, 2), (1, 1), (2, 1, 4, 5)),
    (2, 3, 0, (1, 2, 7, 5)),             # gaps between windows
    ((1, 3), (2, 1), (0, 1), (3, 2, 5, 6)),
]


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_c_maxpool_matches_numpy_path(rng, monkeypatch, spy, case, dtype, ties):
    k, s, p, shape = case
    x = (rng.integers(-2, 2, size=shape) if ties else rng.standard_normal(shape)).astype(dtype)
    results = []
    for mode in ("0", "1"):
        monkeypatch.setenv("NNX_CPU_KERNELS", mode)
        pool = MaxPool2d(k, s, p)
        y = pool(x)
        gy = np.arange(1, y.size + 1, dtype=dtype).reshape(y.shape)   # distinct, non-zero
        saved = pool.ctx.saved            # the call's state, before backward frees it
        results.append((y, pool.backward(gy), saved))
    (y0, dx0, saved0), (y1, dx1, saved1) = results
    assert not isinstance(saved0, cpu_direct.PoolIndices)
    assert isinstance(saved1, cpu_direct.PoolIndices)
    assert spy["pool_fwd"] == 1 and spy["pool_bwd"] == 1
    assert y1.dtype == dtype and dx1.dtype == dtype and dx1.shape == x.shape
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)


@needs_c
def test_c_maxpool_noncontiguous_and_minus_inf_padding(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    x = rng.standard_normal((2, 3, 8, 6))[:, :, ::2, :].transpose(0, 1, 3, 2)   # (2,3,6,4)
    pool = MaxPool2d(3, 2, 1)
    y = pool(x)
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    np.testing.assert_array_equal(y, MaxPool2d(3, 2, 1)(np.ascontiguousarray(x)))
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    y = MaxPool2d(2, 1, 1)(-np.ones((1, 1, 2, 2)))        # padding must never win
    np.testing.assert_array_equal(y, -np.ones((1, 1, 3, 3)))


# ------------------------------------------------------------------------- 2. gradchecks (C path)
GRADCHECK_CONVS = [  # (C, O, kernel, padding, dilation, bias, input (N, H, W))
    (3, 4, 3, 1, 1, True, (2, 5, 6)),
    (2, 3, (2, 3), (1, 0), (2, 1), True, (2, 6, 5)),
    (3, 2, 1, 0, 1, False, (1, 4, 3)),
    (2, 3, 3, (2, 1), (1, 2), False, (1, 5, 7)),
    (3, 4, 3, 1, 1, True, (2, 7, 6), 2),           # strided (8th entry)
    (2, 3, 1, 0, 1, False, (2, 5, 5), (2, 3)),
]


@needs_c
@pytest.mark.parametrize("case", GRADCHECK_CONVS)
def test_conv2d_gradcheck_c_path(rng, monkeypatch, spy, case):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    c, o, k, p, d, bias, (n, h, w) = case[:7]
    conv = Conv2d(c, o, k, case[7] if len(case) > 7 else 1, padding=p, dilation=d,
                  bias=bias).double()
    x = rng.standard_normal((n, c, h, w))
    errs = nnx.gradcheck(conv, (x,), atol=1e-7, rtol=1e-5)
    conv(x)                                   # a fresh call whose saved state we inspect
    assert conv.ctx.saved[0] == "direct" and spy["conv_bwd"] >= 1
    assert set(errs) == {"input[0]", "weight"} | ({"bias"} if bias else set())


@needs_c
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_gradcheck_c_path(rng, monkeypatch, spy, case):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    k, s, p, shape = case
    # well separated values: finite differences never flip an arg-max
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(0, .01, shape)
    pool = MaxPool2d(k, s, p)
    nnx.gradcheck(pool, (x,), eps=1e-4)
    pool(x)                                   # a fresh call whose saved state we inspect
    assert isinstance(pool.ctx.saved, cpu_direct.PoolIndices) and spy["pool_bwd"] >= 1


# ------------------------------------------------------------------------- 3. PyTorch oracle
TORCH_CONVS = [  # (N, C, H, W, O, kernel, padding, dilation, bias)
    (2, 3, 7, 9, 5, 3, 1, 1, True),
    (1, 3, 7, 9, 17, (2, 3), (1, 2), 1, True),
    (3, 2, 8, 9, 5, 3, (2, 1), (1, 2), False),
    (2, 4, 6, 5, 3, 5, 2, 1, True),
    (2, 3, 8, 7, 5, 3, 1, 1, True, 2),             # strided (10th entry)
    (2, 3, 7, 9, 4, 1, 0, 1, False, (2, 3)),
]


@needs_c
@pytest.mark.torch
@pytest.mark.parametrize("geom", TORCH_CONVS)
def test_c_conv_matches_torch_float64(rng, monkeypatch, geom):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    n, c, h, w, o, k, p, d, bias = geom[:9]
    s = geom[9] if len(geom) > 9 else 1
    conv = Conv2d(c, o, k, s, padding=p, dilation=d, bias=bias, dtype=np.float64)
    tconv = torch.nn.Conv2d(c, o, k, s, padding=p, dilation=d, bias=bias,
                            dtype=torch.float64)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(conv.weight.data))
        if bias:
            tconv.bias.copy_(torch.from_numpy(conv.bias.data))
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal(conv.output_shape(x.shape))
    tag, y, dx, dW, db = _run_conv(conv, x, dy)
    assert tag == "direct"
    tx = torch.tensor(x, requires_grad=True)
    ty = tconv(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, tconv.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    if bias:
        np.testing.assert_allclose(db, tconv.bias.grad.numpy(), rtol=1e-10, atol=1e-10)


TORCH_POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 0), (3, 1, 1)]


@needs_c
@pytest.mark.torch
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k,s,p", TORCH_POOLS)
def test_c_maxpool_matches_torch_float64(rng, monkeypatch, k, s, p, ties):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    shape = (2, 3, 7, 8)
    # ties: small integers, many equal maxima (all-equal windows too); torch and nnx must
    # both route the gradient to the first maximum in window order
    x = (rng.integers(0, 3, size=shape) if ties else rng.standard_normal(shape)).astype(np.float64)
    pool = MaxPool2d(k, s, p)
    y = pool(x)
    saved = pool.ctx.saved
    assert isinstance(saved, cpu_direct.PoolIndices)
    gy = rng.standard_normal(y.shape)
    dx = pool.backward(gy, retain_graph=True)      # a second backward below (|gy|)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_array_equal(y, ty.detach().numpy())           # a selection: exact
    np.testing.assert_array_equal(saved.idx, tidx.numpy())
    # dx sums the gradients of the overlapping windows that chose each input; torch may add
    # them in another order, so compare within the reordering bound of those sums (same
    # routing, so the magnitudes are the backward of |gy|)
    assert_within(dx, tx.grad.numpy(),
                  reorder_bound(windows_per_input(k, s), pool.backward(np.abs(gy)), np.float64),
                  f"dx ties={ties}")


@needs_c
@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_c_maxpool_nan_like_torch(rng, monkeypatch, k, s, p, dtype):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    x = rng.standard_normal((1, 2, 6, 6)).astype(dtype)
    x[0, 0, 1, 1] = np.nan                     # one NaN
    x[0, 1, 2, 2] = x[0, 1, 3, 3] = np.nan     # two NaNs sharing windows
    x[0, 1, 0, 5] = np.inf
    pool = MaxPool2d(k, s, p)
    y = pool(x)
    gy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, k, s, p)
    ty.backward(torch.from_numpy(gy))
    assert np.isnan(y).any()
    np.testing.assert_array_equal(y, ty.detach().numpy())           # NaN == NaN here
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------- 4. thread chunking
@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_chunking_is_deterministic(rng, monkeypatch, dtype):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setattr(cpu_conv, "_MIN_CHUNK_ELEMS", 1)
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    monkeypatch.setattr(cpu_direct, "_GROUP_MAX", 2)   # 7 images: weight-gradient groups 2+2+2+1
    chunks = count_chunks(monkeypatch, cpu_direct)
    conv = Conv2d(3, 6, 3, padding=1, dilation=(1, 2), dtype=dtype)
    pool = MaxPool2d(3, 1, 1)
    x = rng.standard_normal((7, 3, 8, 9)).astype(dtype)
    gy = None
    results = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NNX_NUM_THREADS", threads)
        chunks.clear()
        conv.zero_grad()
        y = pool(conv(x))
        if gy is None:
            gy = rng.standard_normal(y.shape).astype(dtype)
        assert conv.ctx.saved[0] == "direct"
        dx = conv.backward(pool.backward(gy))
        # conv fwd, pool fwd, pool bwd, conv dW (over the 4 groups), conv dx: each split into
        # `threads` chunks
        assert chunks == [int(threads)] * 5, chunks
        results[threads] = (y, dx, conv.weight.grad.copy(), conv.bias.grad.copy())
    y1, dx1, dw1, db1 = results["1"]
    for t in ("2", "3"):
        y, dx, dw, db = results[t]
        np.testing.assert_array_equal(y, y1, err_msg=f"threads={t}")
        np.testing.assert_array_equal(dx, dx1, err_msg=f"threads={t}")
        # exact: every group is summed by the same C code in the same order, and the groups
        # are added left to right (cpu_direct._sum_in_order), whatever the chunking over threads
        np.testing.assert_array_equal(dw, dw1, err_msg=f"threads={t}")
        np.testing.assert_array_equal(db, db1, err_msg=f"threads={t}")


@needs_c
@pytest.mark.parametrize("stride,kernel,hw", [(1, 3, 8), (2, 3, 16), (2, 1, 32), (1, 1, 8)])
def test_weight_grad_groups_match_float64_reference(rng, monkeypatch, stride, kernel, hw):
    """Weight/bias gradients summed over fixed groups of images (a short last group too)
    against a float64 einsum: float32 error bound eps32 * (N*OH*OW terms) * max|dy| max|x|."""
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")   # calls the C wrappers directly, on any path row
    monkeypatch.setattr(cpu_direct, "_GROUP_MAX", 3)
    n, c, o, pad = 7, 5, 20, kernel // 2
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((o, c, kernel, kernel)).astype(np.float32)
    y, xc = cpu_direct.conv2d_forward(x, w, None, (pad, pad), (1, 1), (stride, stride))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dW, db = cpu_direct.conv2d_backward(xc, w, dy, True, False, (pad, pad), (1, 1),
                                           (stride, stride))
    oh, ow = y.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ref = np.zeros(w.shape)
    for i in range(kernel):
        for j in range(kernel):
            xs = xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            ref[:, :, i, j] = np.einsum("nohw,nchw->oc", dy.astype(np.float64), xs)
    terms = n * oh * ow
    bound = np.finfo(np.float32).eps * terms * np.abs(dy).max() * np.abs(x).max()
    assert np.abs(dW - ref).max() <= bound
    assert np.abs(db - dy.astype(np.float64).sum((0, 2, 3))).max() <= (
        np.finfo(np.float32).eps * terms * np.abs(dy).max())


@needs_c
def test_weight_grad_of_an_empty_batch_is_zero(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    x = np.empty((0, 3, 8, 8), np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dx, dW, db = cpu_direct.conv2d_backward(x, w, np.empty((0, 4, 4, 4), np.float32), True,
                                            True, (1, 1), (1, 1), (2, 2))
    assert dx.shape == (0, 3, 8, 8)
    np.testing.assert_array_equal(dW, np.zeros_like(w))
    np.testing.assert_array_equal(db, np.zeros(4, np.float32))


# ------------------------------------------------------------------------- 5. build machinery
def _stat(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@needs_c
def test_build_goes_to_cache_dir_and_is_reused(fresh_native, monkeypatch):
    lib = native.library("conv2d")
    assert lib is not None
    files = sorted(fresh_native.iterdir())
    assert [f.name.split("-")[0] for f in files] == ["conv2d"] and files[0].suffix == ".so"
    before = _stat(files[0])
    assert native.function("conv2d", "conv2d_forward", np.dtype(np.float32)) is not None
    assert native.function("conv2d", "conv2d_forward", np.dtype(np.float64)) is not None
    assert native.function("conv2d", "conv2d_forward", np.dtype(np.int32)) is None

    commands = []
    real_run = native._run

    def recording(cmd):
        commands.append(cmd)
        return real_run(cmd)

    monkeypatch.setattr(native, "_run", recording)
    native.reset()
    assert native.library("conv2d") is not None
    assert sorted(fresh_native.iterdir()) == files
    assert _stat(files[0]) == before                     # not rewritten
    assert all("-o" not in cmd for cmd in commands), commands   # not recompiled
    assert native.describe().startswith("C kernels")
    # every library (describe() loads them all), and nothing else (no temp files, no probes)
    names = sorted(f.name for f in fresh_native.iterdir())
    assert [n.split("-")[0] for n in names] == ["batchnorm2d", "conv2d", "elementwise",
                                               "maxpool2d", "parallel"], names
    assert all(n.endswith(".so") and not n.startswith(".") for n in names)


@needs_c
def test_changed_sources_are_rebuilt(fresh_native, monkeypatch, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(native.source_dir(), src)
    monkeypatch.setattr(native, "source_dir", lambda: src)
    assert native.library("maxpool2d") is not None
    first = {f.name for f in fresh_native.iterdir()}
    with open(src / "maxpool2d_impl.h", "a") as f:
        f.write("\n/* changed */\n")
    native.reset()
    assert native.library("maxpool2d") is not None
    second = {f.name for f in fresh_native.iterdir()}
    assert len(first) == 1 and len(second) == 2 and first < second


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_broken_compiler_auto_mode_warns_once_and_falls_back(fresh_native, monkeypatch, rng,
                                                             spy, cc):
    if cc == "false" and shutil.which("false") is None:
        pytest.skip("no `false` command")
    monkeypatch.setenv("CC", cc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.library("conv2d") is None
        assert native.library("maxpool2d") is None
        assert native.function("conv2d", "conv2d_forward", np.float32) is None
        conv, pool = Conv2d(3, 4, 3, padding=1, dtype=np.float64), MaxPool2d(2)
        x = rng.standard_normal((2, 3, 6, 6))
        y = pool(conv(x))
        gy = rng.standard_normal(y.shape)
        assert conv.ctx.saved[0] == "im2col"
        assert not isinstance(pool.ctx.saved, cpu_direct.PoolIndices)
        dx = conv.backward(pool.backward(gy))
        assert spy == {"conv_fwd": 0, "conv_bwd": 0, "pool_fwd": 0, "pool_bwd": 0}
        desc = native.describe()
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in runtime]
    assert "C kernels unavailable" in str(runtime[0].message)
    assert desc.startswith("numpy (C kernels failed to build")
    # the NumPy path's results are right
    z = conv(x)
    ref_y, ref_dx, ref_dw, ref_db = ref_conv(x, conv.weight.data, conv.bias.data, None,
                                              (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(z, ref_y, rtol=1e-12, atol=1e-12)
    # a failed build leaves nothing behind in the cache folder
    leftovers = list(fresh_native.iterdir()) if fresh_native.exists() else []
    assert leftovers == []


@pytest.mark.parametrize("cc,needle", [("/nonexistent/cc", "no C compiler"),
                                       ("false", "failed")])
def test_broken_compiler_required_mode_raises(fresh_native, monkeypatch, rng, cc, needle):
    if cc == "false" and shutil.which("false") is None:
        pytest.skip("no `false` command")
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # required mode raises, never just warns
        with pytest.raises(native.NativeUnavailableError, match=needle) as info:
            native.library("conv2d")
        assert "NNX_CPU_KERNELS=1" in str(info.value)
        with pytest.raises(native.NativeUnavailableError, match=needle):
            Conv2d(3, 4, 3, padding=1)(rng.standard_normal((1, 3, 5, 5)).astype(np.float32))
        with pytest.raises(native.NativeUnavailableError, match=needle):
            MaxPool2d(2)(rng.standard_normal((1, 3, 4, 4)))
        assert native.describe().startswith("unavailable:")
    assert issubclass(native.NativeUnavailableError, RuntimeError)
    if cc == "false":
        assert str(shutil.which("false")) in str(info.value)
    leftovers = list(fresh_native.iterdir()) if fresh_native.exists() else []
    assert leftovers == []


def test_off_mode_needs_no_compiler(fresh_native, monkeypatch, rng):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library("conv2d") is None
        y = Conv2d(3, 2, 3)(rng.standard_normal((1, 3, 5, 5)).astype(np.float32))
    assert y.shape == (1, 2, 3, 3)
    assert not fresh_native.exists() or list(fresh_native.iterdir()) == []


@pytest.mark.parametrize("value,expected", [("", "auto"), ("auto", "auto"), ("0", "off"),
                                            ("off", "off"), ("1", "on"), (" ON ", "on")])
def test_mode_values(monkeypatch, value, expected):
    monkeypatch.setenv("NNX_CPU_KERNELS", value)
    assert native.mode() == expected


def test_bogus_mode_raises(fresh_native, monkeypatch, rng):
    monkeypatch.setenv("NNX_CPU_KERNELS", "bogus")
    with pytest.raises(ValueError, match="NNX_CPU_KERNELS"):
        native.mode()
    with pytest.raises(ValueError, match="NNX_CPU_KERNELS.*bogus"):
        native.library("conv2d")
    with pytest.raises(ValueError, match="NNX_CPU_KERNELS"):
        Conv2d(3, 2, 3)(rng.standard_normal((1, 3, 5, 5)).astype(np.float32))


# ------------------------------------------------------------------------- 6. errors on the C path
@needs_c
def test_errors_on_c_path(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    conv = Conv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="3 input channels, got 2"):
        conv(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        Conv2d(3, 4, 5)(rng.standard_normal((1, 3, 3, 6)).astype(np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Conv2d(3, 4, 3).backward(np.ones((1, 4, 3, 3), np.float32))
    y = conv(rng.standard_normal((2, 3, 5, 5)).astype(np.float32))
    assert conv.ctx.saved[0] == "direct"
    with pytest.raises(ValueError, match="dy has shape"):
        conv.backward(np.ones((2, 4, 5, 4), np.float32))
    with pytest.raises(TypeError):
        conv(rng.standard_normal((1, 3, 5, 5)))           # float64 into a float32 layer
    pool = MaxPool2d(2)
    y = pool(rng.standard_normal((2, 3, 6, 6)))
    assert isinstance(pool.ctx.saved, cpu_direct.PoolIndices)
    with pytest.raises(ValueError, match=r"gy has shape \(2, 3, 3, 2\), expected \(2, 3, 3, 3\)"):
        pool.backward(np.ones((2, 3, 3, 2)))
    with pytest.raises(ValueError, match="gy has shape"):
        pool.backward(np.ones((2 * 3 * 3 * 3,)))
    with pytest.raises(ValueError, match="4-D"):
        pool(np.ones((3, 6, 6)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2d(3)(np.ones((1, 1, 2, 2)))
    # the layers still work after the errors
    dx = pool.backward(np.ones(y.shape))
    assert dx.shape == (2, 3, 6, 6) and dx.sum() == y.size


# ------------------------------------------------------------------------- vector widths
@needs_c
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 instruction-set levels")
@pytest.mark.parametrize("arch", ["-march=x86-64", "-march=x86-64-v3"])   # SSE2 / AVX2 blocks
def test_c_conv_and_pool_other_vector_widths(fresh_native, monkeypatch, rng, arch):
    """The kernels pick 16-, 32- or 64-byte vectors and register blocks at compile time; the
    default build exercises one of them.  Build the SSE2 and AVX2 variants too and compare
    them with the reference on a geometry with tails in every blocked dimension."""
    monkeypatch.setattr(native, "_ARCH_FLAGS", (arch,))
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    native.reset()
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
        conv = Conv2d(5, 11, 3, padding=(1, 2), dilation=(1, 2), dtype=dtype)
        dy = rng.standard_normal(conv.output_shape(x.shape)).astype(dtype)
        tag, y, dx, dW, db = _run_conv(conv, x, dy)
        assert tag == "direct"
        ry, rdx, rdW, rdb = ref_conv(x.astype(np.float64), conv.weight.data.astype(np.float64),
                                     conv.bias.data.astype(np.float64), dy.astype(np.float64),
                                     (1, 1), (1, 2), (1, 2))
        for got, want, what in ((y, ry, "y"), (dx, rdx, "dx"), (dW, rdW, "dW"), (db, rdb, "db")):
            _close(got, want, dtype, f"{arch} {what}")
        pool = MaxPool2d(3, 2, 1)
        z = pool(x)
        monkeypatch.setenv("NNX_CPU_KERNELS", "0")
        z_ref = MaxPool2d(3, 2, 1)(x)
        monkeypatch.setenv("NNX_CPU_KERNELS", "1")
        np.testing.assert_array_equal(z, z_ref)
    assert native.describe().endswith(f"{arch})")
    assert len(list(fresh_native.glob("conv2d-*.so"))) == 1
