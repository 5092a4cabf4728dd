"""The C batch norm (``kernels/cpu/batchnorm2d.c`` via ``nnx/backend/cpu_batchnorm.py``)
against the backend's array-math reference (``Backend.batchnorm_forward/backward`` in
nnx/backend/base.py) and an exact float64 reference over odd geometries; gradchecks through
the layer harness on the C path; thread-count independence; PyTorch as an oracle; the CUDA
backend's version in simulation."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from layer_harness import check_layer, simulated_cuda
from native_build import c_kernels_build, count_chunks
from nnx.backend import cpu_batchnorm, cpu_conv
from nnx.backend.base import Backend
from nnx.nn import BatchNorm1d, BatchNorm2d
from tolerances import assert_within, gamma, unit_roundoff


pytestmark = pytest.mark.skipif(not c_kernels_build("batchnorm2d"),
                                reason="the C kernels do not build here")

# (shape, offset): odd sizes, S not a multiple of the 8 summation lanes, S = 1, one image,
# 1-D inputs; a large offset checks the shifted one-pass statistics against cancellation
GEOMS = [((3, 5, 7, 9), 0.0), ((1, 4, 3, 5), 0.0), ((4, 2, 33, 1), 0.0), ((2, 3, 1, 1), 0.0),
         ((7, 1, 8, 8), 0.0), ((5, 3), 0.0), ((2, 3, 17), 0.0), ((6, 4, 5, 7), 1000.0)]


@pytest.fixture(autouse=True)
def _cpu_backend(monkeypatch):
    previous = nnx.backend.get()
    nnx.backend.use("cpu")
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    try:
        yield
    finally:
        nnx.backend.use(previous.name)


def _inputs(rng, shape, offset, dtype, affine=True):
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 2))
         + offset).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    g = rng.standard_normal(shape).astype(dtype)
    mean = (rng.standard_normal(c) + offset).astype(dtype)
    var = rng.uniform(0.5, 2, c).astype(dtype)
    return x, w, b, g, mean, var


def _exact(x, w, b, g, mean, var, eps, use_batch):
    """Float64 forward and backward (array math on float64 copies) and the magnitudes the
    error bounds below scale with."""
    f = lambda a: None if a is None else np.asarray(a, np.float64)   # noqa: E731
    x, w, b, g = f(x), f(w), f(b), f(g)
    be = nnx.backend.get()
    y, mu, v, saved = Backend.batchnorm_forward(be, x, w, b, *(
        (None, None) if use_batch else (f(mean), f(var))), eps=eps)
    dx, dw, db = Backend.batchnorm_backward(be, g, saved, w, use_batch)
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    gam = np.ones(x.shape[1]) if w is None else np.abs(w)
    inv = saved[2]
    # |x - μ| as computed: |x| + |μ| (μ itself is a sum of m terms of |x|/m)
    spread = (np.abs(x) + np.abs(mu).reshape(bshape)) * inv.reshape(bshape)
    sg_abs = np.abs(g).sum(axis=axes)
    sgx_abs = (np.abs(g) * spread).sum(axis=axes)
    mags = {
        "y": gam.reshape(bshape) * spread + (0 if b is None else np.abs(b).reshape(bshape)),
        "dweight": sgx_abs, "dbias": sg_abs,
        "dx": (gam * inv).reshape(bshape) * (np.abs(g) + (sg_abs / m).reshape(bshape)
                                             + spread * (sgx_abs / m).reshape(bshape)),
    }
    return {"y": y, "dx": dx, "dweight": dw, "dbias": db, "mean": mu, "var": v}, mags, m


def _bound(mags, m, dtype):
    """Error bound of one float ``dtype`` evaluation against the exact values: the sums over
    a channel's m values may be taken in any order (γ_m, Higham §3.1), plus at most 12
    roundings on the path of each output (subtract μ, 1/√(σ²+ε) = 3, scale, shift, and the
    three-term dx); these enter relative to the terms' magnitudes ``mags``."""
    k = gamma(m, dtype) + 12 * unit_roundoff(dtype)
    return {key: k * val for key, val in mags.items()}


def _run(be_fn_fwd, be_fn_bwd, x, w, b, g, mean, var, eps, use_batch):
    y, mu, v, saved = be_fn_fwd(x, w, b, *((None, None) if use_batch else (mean, var)), eps=eps)
    dx, dw, db = be_fn_bwd(g, saved, w, use_batch)
    return {"y": y, "dx": dx, "dweight": dw, "dbias": db, "mean": mu, "var": v}, saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_batch", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "x".join(map(str, g[0])) + f"+{g[1]:g}")
def test_c_batchnorm_matches_reference_and_float64(rng, geom, dtype, use_batch, affine):
    shape, offset = geom
    x, w, b, g, mean, var = _inputs(rng, shape, offset, dtype, affine)
    be = nnx.backend.get()
    eps = 1e-5
    got, saved = _run(be.batchnorm_forward, be.batchnorm_backward, x, w, b, g, mean, var, eps,
                      use_batch)
    assert isinstance(saved, cpu_batchnorm.BatchNormSaved)          # the C path ran
    ref, _ = _run(lambda *a, **k: Backend.batchnorm_forward(be, *a, **k),
                  lambda *a: Backend.batchnorm_backward(be, *a), x, w, b, g, mean, var, eps,
                  use_batch)
    exact, mags, m = _exact(x, w, b, g, mean, var, eps, use_batch)
    bound = _bound(mags, m, dtype)
    for key in ("y", "dx", "dweight", "dbias"):
        assert got[key].dtype == dtype and got[key].shape == exact[key].shape
        assert_within(got[key], exact[key], bound[key], f"C {key} vs float64")
        # both within the bound of the exact value: within twice of each other
        assert_within(got[key], ref[key], 2 * bound[key], f"C {key} vs NumPy path")
    if use_batch:
        axes, bshape = (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
        dev = np.abs(np.asarray(x, np.float64) - exact["mean"].reshape(bshape))
        mean_abs = np.abs(np.asarray(x, np.float64)).mean(axis=axes)
        # the C sums run over x - K (K = the channel's first value) in double, then
        # σ² = s2/m - (s1/m)²: their terms are at most (|x - μ| + |K - μ|)² ≤ 4·max|x - μ|²,
        # and the result is rounded once to dtype
        k = gamma(m, dtype) + 4 * unit_roundoff(dtype)
        assert_within(got["mean"], exact["mean"], k * mean_abs, "C mean vs float64")
        assert_within(got["var"], exact["var"], k * 4 * dev.max(axis=axes) ** 2,
                      "C var vs float64")
    else:      # running statistics pass through, copied (the caller may change them later)
        np.testing.assert_array_equal(got["mean"], mean)
        assert got["mean"] is not mean


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (3, 4, 5, 3)), (BatchNorm1d, (5, 3)),
                                       (BatchNorm1d, (3, 2, 7))])
def test_layer_harness_on_c_path(rng, cls, shape, train):
    """gradcheck (float64), called twice, input not modified, dtypes, non-contiguous input
    and CPU vs CUDA (simulated) with the C kernels required (NNX_CPU_KERNELS=1)."""
    def make(dt):
        r = np.random.default_rng(9)
        bn = cls(shape[1], dtype=dt)
        bn.weight.data[...] = r.uniform(0.5, 1.5, shape[1])
        bn.bias.data[...] = r.standard_normal(shape[1])
        bn.running_mean[...] = r.standard_normal(shape[1])
        bn.running_var[...] = r.uniform(0.5, 2, shape[1])
        return bn.train(train)
    bn = make(np.float64)
    bn(rng.standard_normal(shape))
    assert isinstance(bn.ctx.saved[0], cpu_batchnorm.BatchNormSaved)
    check_layer(make, (rng.standard_normal(shape) * 2 + 1,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_do_not_change_results(rng, monkeypatch, dtype):
    """Channels are split over threads, a channel's sums never are: each sum is taken in one
    order fixed by nnx whatever NNX_NUM_THREADS is, so 1, 2 and 3 threads must give the same
    bits (exact equality is valid here ONLY because nnx fixes that order; no BLAS, no
    thread-dependent chunking of a reduction)."""
    monkeypatch.setattr(cpu_conv, "_MIN_CHUNK_ELEMS", 1)
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    chunks = count_chunks(monkeypatch, cpu_batchnorm)
    x = (rng.standard_normal((6, 7, 9, 11)) * 2 + 3).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    results = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NNX_NUM_THREADS", threads)
        chunks.clear()
        bn = BatchNorm2d(7, dtype=dtype)
        bn.weight.data[...] = np.linspace(0.5, 1.5, 7)
        y = bn(x)
        dx = bn.backward(g)
        assert chunks == [int(threads)] * 2, chunks
        results[threads] = (y, dx, bn.weight.grad, bn.bias.grad, bn.running_mean,
                            bn.running_var)
    for t in ("2", "3"):
        for a, b in zip(results[t], results["1"]):
            np.testing.assert_array_equal(a, b, err_msg=f"threads={t}")


def test_numpy_mode_uses_the_reference(rng, monkeypatch):
    monkeypatch.setenv("NNX_CPU_KERNELS", "0")
    bn = BatchNorm2d(3)
    bn(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert bn.ctx.saved[0][0] == "xhat"


def test_backward_shape_mismatch_is_a_clear_error(rng):
    be = nnx.backend.get()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    _, _, _, saved = be.batchnorm_forward(x, None, None)
    with pytest.raises(ValueError, match="dy has shape"):
        be.batchnorm_backward(np.zeros((2, 3, 4, 5), np.float32), saved, None, True)


@pytest.mark.torch
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (4, 2, 33, 1), (5, 3)])
def test_c_batchnorm_matches_torch_float64(rng, shape, train):
    torch = pytest.importorskip("torch")
    c = shape[1]
    x, w, b, g, mean, var = _inputs(rng, shape, 0.5, np.float64)
    bn = (BatchNorm2d if len(shape) == 4 else BatchNorm1d)(c, dtype=np.float64)
    bn.weight.data[...] = w
    bn.bias.data[...] = b
    bn.running_mean[...] = mean
    bn.running_var[...] = var
    bn.train(train)
    y = bn(x)
    dx = bn.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    rm, rv = torch.tensor(mean), torch.tensor(var)
    yt = torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training=train, momentum=0.1,
                                        eps=1e-5)
    yt.backward(torch.tensor(g))
    # float64 on both sides; 1e-10 relative is far above both implementations' γ_m (m ≤ 1000)
    tol = 1e-10
    for got, want in ((y, yt), (dx, xt.grad), (bn.weight.grad, wt.grad),
                      (bn.bias.grad, bt.grad), (bn.running_mean, rm), (bn.running_var, rv)):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("train", [True, False])
def test_cuda_version_matches_cpu_in_simulation(rng, train):
    """The CUDA backend's batch norm (array math on CuPy) against the CPU's C kernel."""
    x, w, b, g, mean, var = _inputs(rng, (3, 4, 5, 6), 0.0, np.float32)
    be = nnx.backend.get()
    want, _ = _run(be.batchnorm_forward, be.batchnorm_backward, x, w, b, g, mean, var, 1e-5,
                   train)
    exact, mags, m = _exact(x, w, b, g, mean, var, 1e-5, train)
    bound = _bound(mags, m, np.float32)
    with simulated_cuda() as cu:
        a = lambda v: cu.asarray(v)     # noqa: E731
        got, _ = _run(cu.batchnorm_forward, cu.batchnorm_backward, a(x), a(w), a(b), a(g),
                      a(mean), a(var), 1e-5, train)
        got = {k: cu.to_numpy(v) for k, v in got.items()}
        with pytest.raises(Exception, match="NumPy"):
            cu.batchnorm_forward(x, a(w), a(b))
    for key in ("y", "dx", "dweight", "dbias"):
        assert_within(got[key], want[key], 2 * bound[key], f"CUDA vs CPU {key}")
