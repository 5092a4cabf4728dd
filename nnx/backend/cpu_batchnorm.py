"""The C kernels' batch normalisation for the NumPy backend (``kernels/cpu/batchnorm2d.c``).

Input ``x`` of shape ``(N, C, *)`` is read as ``(N, C, S)`` C-ordered.  Per channel, one pass
computes the sums the statistics need (shifted by the channel's first value, accumulated in
double), a second pass writes ``y``; backward is one pass for ``Σg`` and ``Σg·(x - μ)`` and
one for ``dx`` (equations in ``kernels/cpu/batchnorm2d_impl.h`` and
:meth:`nnx.backend.base.Backend.batchnorm_forward`).  What backward needs is ``x`` itself
(no normalised copy ``x̂`` is stored) with ``μ`` and ``1/σ``.

The channels are split over ``NNX_NUM_THREADS`` chunks; a channel's sums are never split, so
the results are the same for every thread count.
"""
from __future__ import annotations

import numpy as np

from . import cpu_tasks, native
from .cpu_conv import min_task_items

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class BatchNormSaved:
    """What the C forward saves for its backward: the C-ordered input, ``μ`` and ``1/σ``."""
    __slots__ = ("x", "mean", "inv_std")

    def __init__(self, x, mean, inv_std):
        self.x, self.mean, self.inv_std = x, mean, inv_std


def supported(x, *params) -> bool:
    """True when the C kernel handles ``x`` (float32/64, at least ``(N, C)``, parameters of
    the same dtype) and the C kernels are available."""
    dt = np.dtype(x.dtype)
    return (dt in _DTYPES and x.ndim >= 2 and x.size > 0
            and all(p is None or p.dtype == dt for p in params)
            and native.library("batchnorm2d") is not None)


def _geometry(x):
    n, c = x.shape[0], x.shape[1]
    return n, c, x.size // (n * c)


def _vec(a, dt):
    return None if a is None else np.ascontiguousarray(a, dtype=dt)


def forward(x, weight, bias, mean, var, eps, relu=False):
    """``(y, mean, var, saved)``; batch statistics when ``mean is None`` (else the given
    running statistics, copied).  ``relu``: ``y = max(bn(x), 0)`` (a following ReLU fused)."""
    x = np.ascontiguousarray(x)
    n, c, s = _geometry(x)
    dt = x.dtype
    use_batch = mean is None
    if use_batch:
        mean, var = np.empty(c, dt), np.empty(c, dt)
    else:
        mean, var = np.array(mean, dtype=dt), np.array(var, dtype=dt)   # copies: saved
    weight, bias = _vec(weight, dt), _vec(bias, dt)
    inv_std = np.empty(c, dt)
    y = np.empty(x.shape, dt)
    task = native.task("batchnorm2d", "batchnorm_forward", dt)
    eps_bits = int(np.float64(eps).view(np.int64))       # the task's args are 64-bit ints
    args = cpu_tasks.pack(x, y, n, c, s, weight, bias, mean, var, inv_std, eps_bits,
                          int(use_batch), int(bool(relu)))
    cpu_tasks.run(task, args, c, min_task_items(n * s))
    return y, mean, var, BatchNormSaved(x, mean, inv_std)


def backward(dy, saved, weight, use_batch, need_dx=True, relu_y=None):
    """``(dx or None, dweight, dbias)``: ``dweight = Σ g·x̂``, ``dbias = Σ g`` per channel
    (also without affine parameters: the caller drops them).  ``relu_y``: the output of a
    ``relu=True`` forward; then ``g = dy·[relu_y > 0]``."""
    x = saved.x
    dt = x.dtype
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"batchnorm backward: dy has shape {tuple(dy.shape)}, expected "
                         f"{tuple(x.shape)}")
    dy = np.ascontiguousarray(dy, dtype=dt)
    n, c, s = _geometry(x)
    weight = _vec(weight, dt)
    dx = np.empty(x.shape, dt) if need_dx else None
    dweight, dbias = np.empty(c, dt), np.empty(c, dt)
    task = native.task("batchnorm2d", "batchnorm_backward", dt, any_mode=True)
    if relu_y is not None:
        relu_y = np.ascontiguousarray(relu_y, dtype=dt)
        if relu_y.shape != x.shape:
            raise ValueError(f"batchnorm backward: relu_y has shape {tuple(relu_y.shape)}, "
                             f"expected {tuple(x.shape)}")
    args = cpu_tasks.pack(x, dy, dx, n, c, s, weight, saved.mean, saved.inv_std, dweight,
                          dbias, int(use_batch), relu_y)
    if cpu_tasks.run(task, args, c, min_task_items(n * s)):
        raise MemoryError("batchnorm backward: out of memory for its work buffer")
    return dx, dweight, dbias
