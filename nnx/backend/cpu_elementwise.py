"""The CPU backend's ReLU passes (and the sum of two gradients) as C tasks
(``kernels/cpu/elementwise.c``) on nnx's C pool.

``relu``, ``relu_backward``, ``add_relu``, ``bias_relu`` and ``add`` are memory-bound passes
that run between the convolutions of every block (``add``: the tape summing the gradients a
residual block's two branches send to its input).  In NumPy each is one or two ufunc passes (plus a
boolean temporary for the backward), split over Python's thread pool; here each is one pass in
C, split over the C pool at a cost of microseconds.  Same values as NumPy, element for element
(``kernels/cpu/elementwise.c`` gives the formulas); every function returns None when the C
path does not apply (another dtype, non-contiguous or broadcast operands, C kernels off), and
the caller then runs its NumPy code.
"""
from __future__ import annotations

import numpy as np

from . import cpu_conv, cpu_tasks, native

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _ok(*arrays) -> bool:
    dt = arrays[0].dtype
    return (dt in _DTYPES and all(a.dtype == dt and a.flags.c_contiguous for a in arrays)
            and all(a.shape == arrays[0].shape for a in arrays))


def _min_elems() -> int:
    # a memory-bound pass: chunks 4x the convolutions' minimum (cpu_conv.min_task_items)
    return cpu_conv.min_task_items(1) * 4


def _run(name, n, *arrays_and_ints, min_items=None):
    task = native.task("elementwise", name, arrays_and_ints[0].dtype)
    args = cpu_tasks.pack(*arrays_and_ints)
    cpu_tasks.run(task, args, n, _min_elems() if min_items is None else min_items)


def _elementwise(name, *inputs):
    """``out = f(inputs...)`` element by element by the C task ``name``, or None."""
    if not (_ok(*inputs) and native.library("elementwise") is not None):
        return None
    out = np.empty_like(inputs[-1])
    _run(name, out.size, *inputs, out)
    return out


def add(a, b):
    """``a + b`` (a new array), or None."""
    return _elementwise("add", a, b)


def relu(x):
    """``max(x, 0)``, or None."""
    return _elementwise("relu", x)


def relu_backward(y, gy):
    """``gy * (y > 0)``, or None."""
    return _elementwise("relu_backward", y, gy)


def add_relu(a, b):
    """``max(a + b, 0)``, or None."""
    return _elementwise("add_relu", a, b)


def bias_relu(x, b):
    """``max(x + b[c], 0)`` for ``x`` of shape ``(N, C, *)`` and ``b`` of shape ``(C,)``, or
    None."""
    if not (x.ndim >= 2 and b.ndim == 1 and b.shape[0] == x.shape[1] and _ok(x)
            and b.dtype == x.dtype and native.library("elementwise") is not None):
        return None
    b = np.ascontiguousarray(b)
    out = np.empty_like(x)
    planes = x.shape[0] * x.shape[1]
    s = x.size // planes if planes else 0
    _run("bias_relu", planes, x, b, out, x.shape[1], s,
         min_items=-(-_min_elems() // max(1, s)))
    return out
