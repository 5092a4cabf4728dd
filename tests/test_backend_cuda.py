"""CupyBackend vs the NumPy reference backend, method by method, on the same random inputs.

Runs twice:
* ``cuda`` (marked ``gpu``): the real backend on a GPU; skipped here with the conftest's
  reason when CuPy or a GPU is missing.
* ``sim``: the same CupyBackend code with ``tests/cuda_sim/fake_cupy.py`` standing in for
  CuPy, so every kernel launch goes through the CPU simulator of the CUDA grid.  The fake
  rejects any kernel argument whose C type is wrong (e.g. a Python float for a ``float``), and
  its ``empty`` memory is NaN-poisoned.  Needs g++.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx.backend.errors import BackendMismatchError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import sim_backend  # noqa: E402

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module", params=[pytest.param("cuda", marks=pytest.mark.gpu), "sim"])
def gpu(request, tmp_path_factory):
    if request.param == "cuda":
        try:
            yield nnx.backend.create("cuda")
        except Exception as exc:  # same logic as conftest's backend fixture
            pytest.skip(f"cuda backend unavailable: {str(exc).splitlines()[0]}")
        return
    with sim_backend.module_backend(tmp_path_factory, "fake_cupy_build") as be:
        yield be


@pytest.fixture(scope="module")
def cpu():
    return nnx.backend.create("cpu")


def tol(dtype, loose=False):
    """GPU-vs-NumPy tolerances.  They cover what a GPU does differently (modelled by the
    simulator): FMA contraction (one rounding instead of two per multiply-add: ~1 ulp per
    operation, far below rtol for these few-operation kernels) and -ftz=true (float32
    denormals become 0: below atol).  Sums over rows (softmax, pooling) use ``loose``."""
    if dtype == np.float32:
        return dict(rtol=1e-4, atol=1e-5) if loose else dict(rtol=2e-5, atol=2e-6)
    return dict(rtol=1e-10, atol=1e-12)


def check(gpu, got, want, dtype, loose=False):
    got = gpu.to_numpy(got)
    assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype), got.dtype
    np.testing.assert_allclose(got, want, **tol(dtype, loose))


# ------------------------------------------------------------------ arrays, random, errors
def test_arrays_and_random(gpu, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    d = gpu.asarray(x)
    assert gpu.is_native(d) and not gpu.is_native(x) and d.dtype == np.float32
    np.testing.assert_array_equal(gpu.to_numpy(d), x)
    assert gpu.asarray(x, dtype=np.float64).dtype == np.float64
    gpu.manual_seed(3)
    a = gpu.to_numpy(gpu.random((5, 7)))
    gpu.manual_seed(3)
    assert np.array_equal(a, gpu.to_numpy(gpu.random((5, 7))))
    assert a.dtype == np.float32 and (a >= 0).all() and (a < 1).all()
    assert gpu.random(4, dtype="float64").dtype == np.float64
    r = gpu.to_numpy(gpu.randint(2, 9, (100,)))
    assert r.dtype == np.int64 and r.min() >= 2 and r.max() < 9
    gpu.synchronize()
    info = gpu.memory_info()
    assert {"pool_used_bytes", "pool_total_bytes"} <= set(info)


def test_rng_state_round_trip(gpu):
    # checkpoints store rng_state(); restoring it must replay the same draws (exact resume)
    gpu.manual_seed(11)
    gpu.random((3,))
    state = gpu.rng_state()
    a, b = gpu.to_numpy(gpu.random((4, 5))), gpu.to_numpy(gpu.randint(0, 100, (6,)))
    assert not np.array_equal(a, gpu.to_numpy(gpu.random((4, 5))))  # draws advance
    gpu.set_rng_state(state)
    np.testing.assert_array_equal(gpu.to_numpy(gpu.random((4, 5))), a)
    np.testing.assert_array_equal(gpu.to_numpy(gpu.randint(0, 100, (6,))), b)


def test_dtype_and_mismatch_errors(gpu):
    with pytest.raises(TypeError, match="float16"):
        gpu.relu(gpu.asarray(np.ones(3, np.float16)))
    with pytest.raises(BackendMismatchError, match="NumPy"):
        gpu.relu(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        gpu.bias_relu(gpu.asarray(np.ones((2, 4), np.float32)), gpu.asarray(np.ones(3, np.float32)))


# ------------------------------------------------------------------ element-wise
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise(gpu, cpu, rng, dtype):
    x = rng.standard_normal((4, 5, 3, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    y = np.tanh(x)
    check(gpu, gpu.tanh_backward(gpu.asarray(y), gpu.asarray(gy)), cpu.tanh_backward(y, gy), dtype)
    check(gpu, gpu.relu(gpu.asarray(x)), cpu.relu(x), dtype)
    check(gpu, gpu.bias_relu(gpu.asarray(x), gpu.asarray(b)), cpu.bias_relu(x, b), dtype)
    x2 = x[:, :, 0, 0].copy()
    check(gpu, gpu.bias_relu(gpu.asarray(x2), gpu.asarray(b)), cpu.bias_relu(x2, b), dtype)
    r = cpu.relu(x)
    check(gpu, gpu.relu_backward(gpu.asarray(r), gpu.asarray(gy)), cpu.relu_backward(r, gy), dtype)
    # non-contiguous input
    xt = gpu.asarray(x).transpose(0, 1, 3, 2)
    check(gpu, gpu.relu(xt), cpu.relu(x.transpose(0, 1, 3, 2)), dtype)


# ------------------------------------------------------------------ loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (7, 10), (5, 301)])
@pytest.mark.parametrize("s", [0.0, 0.2])
def test_softmax_cross_entropy(gpu, cpu, rng, dtype, n, c, s):
    z = (rng.standard_normal((n, c)) * 3 + 20).astype(dtype)
    labels = rng.integers(0, c, n)
    scale = (rng.random(n) / n).astype(dtype)
    check(gpu, gpu.softmax_cross_entropy_forward(gpu.asarray(z), gpu.asarray(labels), s),
          cpu.softmax_cross_entropy_forward(z, labels, s), dtype, loose=True)
    check(gpu, gpu.softmax_cross_entropy_backward(gpu.asarray(z), gpu.asarray(labels), s,
                                                  gpu.asarray(scale)),
          cpu.softmax_cross_entropy_backward(z, labels, s, scale), dtype, loose=True)


# ------------------------------------------------------------------ conv and pooling
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d", [((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
                                           ((1, 2, 11, 8), (3, 2), (2, 3), (2, 1), (2, 1))])
def test_im2col_col2im(gpu, cpu, rng, dtype, shape, k, s, p, d):
    x = rng.standard_normal(shape).astype(dtype)
    cols = cpu.im2col(x, k, s, p, d)
    check(gpu, gpu.im2col(gpu.asarray(x), k, s, p, d), cols, dtype)
    g = rng.standard_normal(cols.shape).astype(dtype)
    check(gpu, gpu.col2im(gpu.asarray(g), shape, k, s, p, d), cpu.col2im(g, shape, k, s, p, d),
          dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),
                                         ((1, 2, 8, 5), (2, 3), (1, 2), (0, 1)),
                                         ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0))])
def test_pooling(gpu, cpu, rng, dtype, shape, k, s, p):
    x = rng.standard_normal(shape).astype(dtype)
    y, saved = cpu.maxpool2d_forward(x, k, s, p)
    gy_, gsaved = gpu.maxpool2d_forward(gpu.asarray(x), k, s, p)
    check(gpu, gy_, y, dtype)
    g = rng.standard_normal(y.shape).astype(dtype)
    check(gpu, gpu.maxpool2d_backward(gpu.asarray(g), gsaved, shape, k, s, p),
          cpu.maxpool2d_backward(g, saved, shape, k, s, p), dtype)
    for inc in (True, False):
        check(gpu, gpu.avgpool2d_forward(gpu.asarray(x), k, s, p, inc),
              cpu.avgpool2d_forward(x, k, s, p, inc), dtype)
        check(gpu, gpu.avgpool2d_backward(gpu.asarray(g), shape, k, s, p, inc),
              cpu.avgpool2d_backward(g, shape, k, s, p, inc), dtype)


# ------------------------------------------------------------------ recurrent cells
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,H", [(1, 1), (3, 37)])
def test_lstm_cell(gpu, cpu, rng, dtype, n, H):
    gates = (rng.standard_normal((n, 4 * H)) * 2).astype(dtype)
    c_prev, dh, dc = (rng.standard_normal((n, H)).astype(dtype) for _ in range(3))
    h, c, saved = cpu.lstm_cell_forward(gates, c_prev)
    gh_, gc_, gsaved = gpu.lstm_cell_forward(gpu.asarray(gates), gpu.asarray(c_prev))
    check(gpu, gh_, h, dtype)
    check(gpu, gc_, c, dtype)
    for a, b in ((dh, dc), (None, dc), (dh, None)):
        want = cpu.lstm_cell_backward(a, b, saved)
        got = gpu.lstm_cell_backward(None if a is None else gpu.asarray(a),
                                     None if b is None else gpu.asarray(b), gsaved)
        for g_, w_ in zip(got, want):
            check(gpu, g_, w_, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,H", [(1, 1), (3, 37)])
def test_gru_cell(gpu, cpu, rng, dtype, n, H):
    gi, gh = ((rng.standard_normal((n, 3 * H)) * 2).astype(dtype) for _ in range(2))
    h_prev, dh = (rng.standard_normal((n, H)).astype(dtype) for _ in range(2))
    h, saved = cpu.gru_cell_forward(gi, gh, h_prev)
    gh_out, gsaved = gpu.gru_cell_forward(gpu.asarray(gi), gpu.asarray(gh), gpu.asarray(h_prev))
    check(gpu, gh_out, h, dtype)
    for g_, w_ in zip(gpu.gru_cell_backward(gpu.asarray(dh), gsaved),
                      cpu.gru_cell_backward(dh, saved)):
        check(gpu, g_, w_, dtype)


# ------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, first_step=True),
                                dict(momentum=0.5, dampening=0.5, first_step=True),
                                dict(momentum=0.9, dampening=0.1, weight_decay=1e-2),
                                dict(momentum=0.8, nesterov=True, weight_decay=1e-3)])
def test_sgd_update(gpu, cpu, rng, dtype, kw):
    p, g, buf = (rng.standard_normal((33, 17)).astype(dtype) for _ in range(3))
    dp, dbuf = gpu.asarray(p), gpu.asarray(buf)
    has_buf = bool(kw.get("momentum"))
    for _ in range(2):  # two steps: the buffer carries over
        cpu.sgd_update(p, g, buf if has_buf else None, 0.1, **kw)
        gpu.sgd_update(dp, gpu.asarray(g), dbuf if has_buf else None, 0.1, **kw)
        kw = {**kw, "first_step": False}
    check(gpu, dp, p, dtype)
    check(gpu, dbuf, buf, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update(gpu, cpu, rng, dtype, wd, decoupled):
    p, g = (rng.standard_normal(1001).astype(dtype) for _ in range(2))
    m, v = np.zeros_like(p), np.zeros_like(p)
    dp, dm, dv = gpu.asarray(p), gpu.asarray(m), gpu.asarray(v)
    for step in (1, 2, 3):
        cpu.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, wd, step, decoupled=decoupled)
        gpu.adam_update(dp, gpu.asarray(g), dm, dv, 1e-2, 0.9, 0.999, 1e-8, wd, step,
                        decoupled=decoupled)
    for a, b in ((dp, p), (dm, m), (dv, v)):
        check(gpu, a, b, dtype, loose=True)


def test_optimizer_updates_non_contiguous_param(gpu, cpu, rng):
    base = rng.standard_normal((6, 8))
    g = rng.standard_normal((8, 6))
    p = base.T.copy()
    dbase = gpu.asarray(base)
    dp = dbase.T  # a non-contiguous view must still be updated in place
    cpu.sgd_update(p, g, None, 0.5)
    gpu.sgd_update(dp, gpu.asarray(g), None, 0.5)
    check(gpu, dbase.T, p, np.float64)


# ------------------------------------------------------------------ what backward passes accept
def test_backward_passes_validate_saved(gpu, rng):
    """A mismatched ``saved`` would make the kernel read out of bounds: it must be refused."""
    f32 = lambda *s: gpu.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    geo = ((2, 2), (2, 2), (0, 0))
    y, arg = gpu.maxpool2d_forward(f32(2, 3, 6, 6), *geo)
    gy = f32(*y.shape)
    for bad in (arg[:, :, :2], arg.astype(np.int64), gpu.to_numpy(arg), None,
                gpu.maxpool2d_forward(f32(2, 3, 4, 4), *geo)[1]):
        with pytest.raises(ValueError, match="saved"):
            gpu.maxpool2d_backward(gy, bad, (2, 3, 6, 6), *geo)
    h, c, saved = gpu.lstm_cell_forward(f32(3, 8), f32(3, 2))
    act, c_prev, c_ = saved
    small = gpu.lstm_cell_forward(f32(1, 8), f32(1, 2))[2]
    for bad in (saved[:2], (c_, c_prev, act), (act, c_prev, small[2]), (act, small[1], c_),
                (act.astype(np.float64), c_prev, c_), (gpu.to_numpy(act), c_prev, c_)):
        with pytest.raises((ValueError, TypeError, BackendMismatchError)):
            gpu.lstm_cell_backward(f32(3, 2), None, bad)
    h, saved = gpu.gru_cell_forward(f32(3, 6), f32(3, 6), f32(3, 2))
    packed, h_prev = saved
    for bad in ((packed,), (h_prev, packed), (packed[:, :6], h_prev), (packed, h_prev[:1])):
        with pytest.raises((ValueError, TypeError)):
            gpu.gru_cell_backward(f32(3, 2), bad)
    gpu.gru_cell_backward(f32(3, 2), list(saved))  # a list is fine (a checkpointed tuple)


# ------------------------------------------------------------------ devices and threads
def test_every_entry_point_runs_on_the_backends_device(tmp_path, rng):
    """NNX_DEVICE=1 and calls from another thread (whose current device is 0): the simulated
    CuPy fails any launch whose arrays or module belong to another device, as a GPU would."""
    from concurrent.futures import ThreadPoolExecutor
    if sim_backend.available():
        pytest.skip(sim_backend.available())
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with sim_backend.simulated_backend(tmp_path, device=1, device_count=2) as be:
        dx = be.asarray(x)  # allocated on device 1 by the main thread
        w = be.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))

        def work():
            y, arg = be.maxpool2d_forward(be.relu(dx), (2, 2), (2, 2), (0, 0))
            gx = be.maxpool2d_backward(y, arg, x.shape, (2, 2), (2, 2), (0, 0))
            out = be.conv2d_forward(dx, w, None, (1, 1), (1, 1), (1, 1))
            p, g = be.random((5,)), be.random((5,))
            be.sgd_update(p, g, None, 0.1)
            return [be.to_numpy(a) for a in (gx, out[0] if isinstance(out, tuple) else out, p)]

        with ThreadPoolExecutor(1) as pool:
            got = pool.submit(work).result()
        want = work()  # the main thread (its current device is 1 since the constructor)
        for a, b in zip(got[:2], want[:2]):
            np.testing.assert_array_equal(a, b)  # same kernels, same order: identical
        # the unwrapped method, called from the worker, hits device 0: the model catches it
        raw = type(be).relu.__wrapped__
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(RuntimeError, match="device"):
                pool.submit(raw, be, dx).result()


# ------------------------------------------------------------------ multi-tensor optimizers
SHAPES = [(33, 17), (5,), (3, 4, 5, 2), (1,), (300,)]   # odd sizes: tensor boundaries mid-block


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, first_step=True),
                                dict(momentum=0.9, dampening=0.1, weight_decay=1e-2),
                                dict(momentum=0.8, nesterov=True, weight_decay=1e-3)])
def test_sgd_update_multi_matches_per_tensor_reference(gpu, cpu, rng, dtype, kw):
    ps, gs, bufs = ([rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(3))
    dps, dbufs = [gpu.asarray(p) for p in ps], [gpu.asarray(b) for b in bufs]
    has_buf = bool(kw.get("momentum"))
    for _ in range(2):
        for p, g, b in zip(ps, gs, bufs):
            cpu.sgd_update(p, g, b if has_buf else None, 0.1, **kw)
        gpu.sgd_update_multi(dps, [gpu.asarray(g) for g in gs], dbufs if has_buf else None,
                             0.1, **kw)
        kw = {**kw, "first_step": False}
    for d, p in zip(dps + dbufs, ps + bufs):
        check(gpu, d, p, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update_multi_matches_per_tensor_reference(gpu, cpu, rng, dtype, wd, decoupled):
    ps, gs = ([rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(2))
    ms, vs = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    dps, dms, dvs = ([gpu.asarray(a) for a in arrs] for arrs in (ps, ms, vs))
    for step in (1, 2, 3):
        for p, g, m, v in zip(ps, gs, ms, vs):
            cpu.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, wd, step, decoupled=decoupled)
        gpu.adam_update_multi(dps, [gpu.asarray(g) for g in gs], dms, dvs, 1e-2, 0.9, 0.999,
                              1e-8, wd, step, decoupled=decoupled)
    for d, h in zip(dps + dms + dvs, ps + ms + vs):
        check(gpu, d, h, dtype, loose=True)


def test_update_multi_rejects_mixed_arrays(gpu, rng):
    p = gpu.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.sgd_update_multi([p], [gpu.asarray(np.ones((4, 3)))], None, 0.1)   # float64 grad
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.sgd_update_multi([p], [p.T], None, 0.1)
