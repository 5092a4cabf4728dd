"""CPU performance paths must not change results: the 2x2 max-pool fast path, per-image conv
GEMMs, reused scratch buffers, in-place ReLU, and ``backward(dy, input_grad=False)``."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import nnx
from nnx.backend import cpu_conv
from nnx.nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from native_build import count_chunks
from tolerances import assert_within, network_rtol


def _naive_maxpool(x, k):
    """First arg-max in window order, by loops (the reference semantics)."""
    n, c, h, w = x.shape
    oh, ow = h // k, w // k
    y = np.empty((n, c, oh, ow), x.dtype)
    arg = np.empty((n, c, oh, ow), int)
    for idx in np.ndindex(n, c, oh, ow):
        a, b, i, j = idx
        win = x[a, b, i * k:(i + 1) * k, j * k:(j + 1) * k].reshape(-1)
        arg[idx] = int(np.argmax(win))           # numpy's argmax returns the first maximum
        y[idx] = win[arg[idx]]
    return y, arg


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 2, 5, 7), (3, 1, 2, 2)])
def test_maxpool_2x2_fast_path_matches_first_argmax(rng, shape):
    # few distinct values: many ties, including all-equal windows (as after a ReLU)
    x = rng.integers(0, 3, size=shape).astype(np.float32)
    pool = MaxPool2d(2)
    y = pool(x)
    y_ref, arg = _naive_maxpool(x, 2)
    np.testing.assert_array_equal(y, y_ref)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.backward(gy)
    dx_ref = np.zeros_like(x)
    for idx in np.ndindex(*y.shape):
        a, b, i, j = idx
        di, dj = divmod(arg[idx], 2)
        dx_ref[a, b, 2 * i + di, 2 * j + dj] += gy[idx]
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(dx, dx_ref)


def test_maxpool_2x2_noncontiguous_input(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)[:, :, ::2, :].transpose(0, 1, 3, 2)
    y, saved = cpu_conv.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, _naive_maxpool(np.ascontiguousarray(x), 2)[0])


@pytest.mark.parametrize("cin,k,p", [(3, 3, 1), (16, 3, 1), (2, 1, 0)])
def test_conv_per_image_path_matches_column_path(rng, monkeypatch, cin, k, p):
    x = rng.standard_normal((3, cin, 6, 5)).astype(np.float32)
    gy = rng.standard_normal((3, 4, 6 + 2 * p - k + 1, 5 + 2 * p - k + 1)).astype(np.float32)
    results = []
    for rows in (0, 10 ** 6):          # 0: one GEMM + layout copies; huge: per-image GEMMs
        monkeypatch.setattr(cpu_conv, "PER_IMAGE_MAX_ROWS", rows)
        nnx.manual_seed(3)
        conv = Conv2d(cin, 4, k, padding=p)
        y = conv(x)
        dx = conv.backward(gy)
        results.append((y, dx, conv.weight.grad, conv.bias.grad))
    for a, b in zip(*results):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_im2col_scratch_buffers_do_not_alias(rng):
    x1 = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    x2 = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    c1 = cpu_conv.im2col(x1, *geo)
    keep = c1.copy()
    cpu_conv.im2col(x2, *geo)
    np.testing.assert_array_equal(c1, keep)
    d1 = cpu_conv.col2im(c1, x1.shape, *geo)
    keep = d1.copy()
    cpu_conv.col2im(cpu_conv.im2col(x2, *geo), x2.shape, *geo)
    np.testing.assert_array_equal(d1, keep)


def test_im2col_scratch_border_stays_zero_across_paddings(rng):
    """Two geometries with the same padded shape, (7, 5) + padding (0, 1) and (5, 5) +
    padding (1, 1): the first writes its interior where the second's zero border lies."""
    from test_conv import naive_im2col
    a = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    b = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    cpu_conv.im2col(a, (3, 3), (1, 1), (0, 1), (1, 1))
    got = cpu_conv.im2col(b, (3, 3), (2, 2), (1, 1), (1, 1))
    np.testing.assert_array_equal(got, naive_im2col(b, (3, 3), (2, 2), (1, 1), (1, 1)))


def test_relu_inplace(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    expected = np.maximum(x, 0)
    relu = ReLU(inplace=True)
    y = relu(x)
    assert y is x
    np.testing.assert_array_equal(x, expected)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(relu.backward(gy), gy * (expected > 0))
    assert repr(relu) == "ReLU(inplace=True)" and repr(ReLU()) == "ReLU()"


def _cnn():
    return Sequential(OrderedDict([
        ("conv", Conv2d(2, 3, 3, padding=1)), ("relu", ReLU()), ("pool", MaxPool2d(2)),
        ("flat", Flatten()), ("fc", Linear(12, 4))]))


def _grads(model):
    return {k: p.grad.copy() for k, p in model.named_parameters()}


@pytest.mark.parametrize("build", [
    _cnn,
    lambda: Sequential(Flatten(), Linear(32, 4)),                   # parameter-free first
    lambda: Sequential(Sequential(Flatten(), Linear(32, 5)), ReLU(), Linear(5, 4)),  # nested
    lambda: nnx.models.ResNetSmall(in_channels=2, num_classes=4, width=4),
])
def test_backward_without_input_grad_gives_same_param_grads(rng, build):
    import nnx.models  # noqa: F401
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((3, 4)).astype(np.float32)
    nnx.manual_seed(5)
    a = build()
    nnx.manual_seed(5)
    b = build()
    a(x)
    b(x)
    dx = a.backward(dy)                      # default: unchanged, returns dL/dx
    assert dx.shape == x.shape
    assert b.backward(dy, input_grad=False) is None
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_backward_params_skips_input_gradient(rng, monkeypatch):
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    conv = Conv2d(2, 3, 3, padding=1)
    y = conv(x)
    calls = []
    monkeypatch.setattr(nnx.backend.get(), "col2im",
                        lambda *a, **k: calls.append(1))
    assert conv.backward_params(np.ones_like(y)) is None
    assert calls == [] and conv.weight.grad is not None
    lin = Linear(3, 2)
    lin(rng.standard_normal((4, 3)).astype(np.float32))
    assert lin.backward_params(np.ones((4, 2), np.float32)) is None
    np.testing.assert_allclose(lin.bias.grad, [4.0, 4.0])
    # a model without parameters: nothing to do, nothing returned
    seq = Sequential(ReLU(), Flatten())
    seq(x)
    assert seq.backward(np.ones((2, 32), np.float32), input_grad=False) is None


# ------------------------------------------------------------------------- batch-parallel CPU paths
@pytest.mark.parametrize("kernels", ["0", "auto"])
@pytest.mark.parametrize("threads", ["2", "3"])
def test_parallel_and_serial_paths_agree(rng, monkeypatch, threads, kernels):
    """NNX_NUM_THREADS=1 (serial) vs batch chunks on the thread pool.

    With the C kernels every image is computed by the same code whatever the chunk, so the
    loss and ``dL/dx`` are bit-identical (only the weight gradients' sum over chunks is
    reordered).  On the NumPy path the convolutions' GEMMs are chunked, and a BLAS may block
    a chunk's product differently from the whole one (seen: OpenBLAS on an AMD EPYC), so
    everything is compared within the derived reordering bound (tests/tolerances.py)."""
    import nnx.models
    from nnx.backend import cpu_direct, native
    monkeypatch.setenv("NNX_CPU_KERNELS", kernels)
    monkeypatch.setattr(cpu_conv, "_MIN_CHUNK_ELEMS", 1)   # split even these small tensors
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    calls = count_chunks(monkeypatch, cpu_conv, cpu_direct)
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, size=5)
    results = {}
    for nt in ("1", threads):
        monkeypatch.setenv("NNX_NUM_THREADS", nt)
        calls.clear()
        nnx.manual_seed(0)
        model = nnx.models.SimpleCNN(image_size=8)
        crit = nnx.nn.CrossEntropyLoss()
        loss = crit(model(x), labels)
        dx = model.backward(crit.backward())
        results[nt] = (loss, dx, {k: p.grad.copy() for k, p in model.named_parameters()})
        assert calls and max(calls) == int(nt)               # the path under test really ran
    (l1, dx1, g1), (l2, dx2, g2) = results["1"], results[threads]
    rtol = network_rtol(model, batch=x.shape[0], positions=x.shape[2] * x.shape[3],
                        dtype=np.float32)
    if native.library("conv2d") is not None:          # the C kernels ran: per image, exact
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(dx1, dx2)
    else:
        assert_within(l2, l1, rtol * abs(float(l1)), "loss")
        assert_within(dx2, dx1, rtol * np.abs(dx1).max(), "dx")
    for k in g1:
        assert g2[k].dtype == np.float32
        assert_within(g2[k], g1[k], rtol * np.abs(g1[k]).max(), k)


def test_parallel_chunks_order_bounds_and_errors(monkeypatch):
    from nnx.backend import cpu_parallel
    assert cpu_parallel.chunk_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert cpu_parallel.chunk_bounds(2, 4) == [(0, 1), (1, 2)]
    monkeypatch.setenv("NNX_NUM_THREADS", "3")
    assert cpu_parallel.parallel_chunks(7, lambda a, b: (a, b)) == [(0, 3), (3, 5), (5, 7)]
    # nested calls inside a chunk stay serial
    nested = cpu_parallel.parallel_chunks(4, lambda a, b: cpu_parallel.chunks_for(10))
    assert nested == [1, 1, 1]

    def boom(a, b):
        if a:
            raise ValueError("chunk failed")
    with pytest.raises(ValueError, match="chunk failed"):
        cpu_parallel.parallel_chunks(6, boom)
    monkeypatch.setenv("NNX_NUM_THREADS", "1")
    assert cpu_parallel.parallel_chunks(7, lambda a, b: (a, b)) == [(0, 7)]
    monkeypatch.setenv("NNX_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="NNX_NUM_THREADS"):
        cpu_parallel.num_threads()


def test_conv_weight_on_other_backend_raises():
    conv = Conv2d(2, 3, 3)

    class Foreign:                                     # stands in for a CuPy array
        dtype, shape = np.dtype(np.float32), conv.weight.data.shape

    conv.weight.data = Foreign()
    with pytest.raises(nnx.backend.BackendMismatchError, match=r"Conv2d.*model\.to\('cpu'\)"):
        conv(np.ones((1, 2, 4, 4), np.float32))  # Module.__call__ checks the parameters


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_parallel_pool_works_in_forked_child(monkeypatch):
    import os
    from nnx.backend import cpu_parallel
    monkeypatch.setenv("NNX_NUM_THREADS", "2")
    assert cpu_parallel.parallel_chunks(4, lambda a, b: b - a) == [2, 2]   # pool started
    pid = os.fork()
    if pid == 0:                                      # child: the pool must not hang
        ok = cpu_parallel.parallel_chunks(4, lambda a, b: b - a) == [2, 2]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------------- ReLU / MaxPool order
@pytest.mark.parametrize("pool_args", [(2,), (3, 2, 1), (3, 1)])
def test_sequential_runs_relu_after_maxpool_with_identical_results(rng, pool_args):
    """Sequential runs [ReLU, MaxPool2d] as [MaxPool2d, ReLU]: output and gradient must equal
    the literal order (the modules applied one by one), ties, zeros and negatives included."""
    x = rng.integers(-3, 3, size=(2, 3, 7, 6)).astype(np.float64)     # many ties and zeros
    x[0, 0, :2, :2] = -1.0                                               # an all-negative window
    seq = Sequential(ReLU(), MaxPool2d(*pool_args))
    relu, pool = ReLU(), MaxPool2d(*pool_args)
    y = seq(x)
    y_ref = pool(relu(x))
    np.testing.assert_array_equal(y, y_ref)
    calls = seq.ctx.tape.nodes                                           # the recorded calls
    assert calls[0].fn is seq[1] and calls[1].fn is seq[0]               # really reordered
    assert calls[1].ctx.y.shape == y.shape                               # ReLU saw pooled size
    gy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(seq.backward(gy), relu.backward(pool.backward(gy)))


def test_sequential_relu_maxpool_nan_propagates_like_literal_order():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4) - 8
    x[0, 0, 0, 1] = np.nan
    seq, relu, pool = Sequential(ReLU(), MaxPool2d(2)), ReLU(), MaxPool2d(2)
    y, y_ref = seq(x), pool(relu(x))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(y[~np.isnan(y)], y_ref[~np.isnan(y_ref)])
    gy = np.ones_like(y)
    np.testing.assert_array_equal(seq.backward(gy), relu.backward(pool.backward(gy)))
