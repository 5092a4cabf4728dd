"""``Residual(..., relu=True)`` (the fused sum + ReLU of a ResNet block) and the backends'
``add_relu``: the layer harness (gradcheck, called twice, dtypes, strides, CPU vs simulated
CUDA) and equality with the unfused ``Sequential(Residual(...), ReLU())``."""
import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx.nn import BatchNorm2d, Conv2d, ReLU, Residual, Sequential


def _block(dt, relu=True):
    rng = np.random.default_rng(3)
    # no conv bias before the batch norm: its gradient is exactly zero in theory, noise in
    # practice, and cannot be compared
    body = Sequential(Conv2d(3, 4, 3, 2, 1, bias=False, dtype=dt), BatchNorm2d(4, dtype=dt))
    shortcut = Conv2d(3, 4, 1, 2, dtype=dt)
    be = nnx.backend.get()
    for p in body.parameters():
        p.data[...] = be.asarray(rng.standard_normal(p.shape))
    for p in shortcut.parameters():
        p.data[...] = be.asarray(rng.standard_normal(p.shape))
    return Residual(body, shortcut, relu=relu)


def test_residual_relu_harness(backend, rng):
    check_layer(_block, (rng.standard_normal((3, 3, 7, 6)),))


def test_residual_relu_equals_unfused(backend, rng):
    """Fused and unfused run the same element-wise operations (a + b, then max with 0; the
    gradient gy·[y > 0] to both branches) in the same order, so the bits are equal."""
    be = nnx.backend.get()
    x = be.asarray(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    fused, unfused = _block(np.float32), Sequential(_block(np.float32, relu=False), ReLU())
    y1, y2 = fused(x), unfused(x)
    gy = be.asarray(rng.standard_normal(y1.shape).astype(np.float32))
    dx1, dx2 = fused.backward(gy), unfused.backward(gy)
    np.testing.assert_array_equal(be.to_numpy(y1), be.to_numpy(y2))
    assert (be.to_numpy(y1) == 0).any() and (be.to_numpy(y1) > 0).any()
    np.testing.assert_array_equal(be.to_numpy(dx1), be.to_numpy(dx2))
    for p1, p2 in zip(fused.parameters(), unfused.parameters()):
        np.testing.assert_array_equal(be.to_numpy(p1.grad), be.to_numpy(p2.grad))


def test_add_relu_batch_chunks_match_whole(rng, monkeypatch):
    """The CPU backend's chunked add_relu against the array-math version (exact: one add
    and one max per element, whatever the chunking)."""
    from nnx.backend import cpu_conv
    from nnx.backend.base import Backend
    monkeypatch.setattr(cpu_conv, "_MIN_CHUNK_ELEMS", 1)
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    monkeypatch.setenv("NNX_NUM_THREADS", "3")
    be = nnx.backend.use("cpu")
    a, b = rng.standard_normal((2, 7, 5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(be.add_relu(a, b), Backend.add_relu(be, a, b))


def test_branch_shape_mismatch_is_a_clear_error(rng):
    res = Residual(Conv2d(2, 3, 1), Conv2d(2, 3, 1, 2), relu=True)
    with pytest.raises(ValueError, match="branch outputs have different shapes"):
        res(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
