"""The C kernels' convolution and max pooling for the NumPy backend (``kernels/cpu/*.c``).

Direct convolution, groups 1, as in ``kernels/cpu/conv2d_impl.h``: stride 1 with any padding
and dilation, or any stride with dilation 1::

    forward   y = b + W ⋆_s x                    (no im2col matrix: offsets are runs of x)
    dL/dW     = Σ_n dy_n ⋆ x_n,   dL/db = Σ dy
    stride 1: dL/dx = W' ⋆ dy  with  W'[c,o,i,j] = W[o,c,KH-1-i,KW-1-j]
              and padding (dh·(KH-1) - ph, dw·(KW-1) - pw)

The last line is the forward kernel again: the transposed convolution of a stride-1
convolution is a stride-1 convolution with the flipped, channel-swapped kernel.  It needs
``ph ≤ dh·(KH-1)`` (no output reads only padding).  With stride ``(sh, sw)`` the padded
``dL/dx`` splits into ``sh·sw`` phases ``(a, b)`` (rows ``a::sh``, columns ``b::sw``); phase
``(a, b)`` only receives the taps ``W[:, :, a::sh, b::sw]`` and is their stride-1 transposed
convolution of ``dy`` (the line above with that sub-kernel and padding ``(kh_a - 1,
kw_b - 1)``), so every tap is computed once, as in the forward pass.
:func:`conv_supported` says when these kernels apply, callers use im2col + GEMM otherwise.

Max pooling: one pass writes the output and PyTorch-style indices (``h*W + w`` per plane), the
backward scatters into a zeroed ``dx``.

Every routine splits the batch into ``NNX_NUM_THREADS`` chunks (``cpu_parallel``); ctypes
drops the GIL during each C call, so chunks run in parallel.  Weight and bias gradients are
summed per group of images (:func:`weight_grad_group`: a size fixed by the geometry), then
group by group in order, so they do not depend on the thread count.
"""
from __future__ import annotations

import numpy as np

from . import cpu_tasks, native
from .cpu_conv import min_task_items

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def conv_supported(dtype, stride, padding, dilation, kernel, groups) -> bool:
    """True when the C convolution handles this geometry (and the C kernels are available)."""
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    if np.dtype(dtype) not in _DTYPES or groups != 1:
        return False
    if tuple(stride) == (1, 1):
        if ph > dh * (kh - 1) or pw > dw * (kw - 1):
            return False
    elif tuple(dilation) != (1, 1):
        return False
    return native.library("conv2d") is not None


def _forward(x, w, bias, padding, dilation, stride=(1, 1), any_mode=False):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (ph, pw), (dh, dw), (sh, sw) = padding, dilation, stride
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    task = native.task("conv2d", "conv2d_forward", x.dtype, any_mode)
    args = cpu_tasks.pack(x, w, bias, y, n, c, h, wd, o, kh, kw, ph, pw, sh, sw, dh, dw)
    if cpu_tasks.run(task, args, n, min_task_items(o * oh * ow)):
        raise MemoryError("conv2d_forward: out of memory for its work buffers")
    return y


def conv2d_forward(x, w, bias, padding, dilation, stride=(1, 1)):
    """``(y, x)``: ``y (N,O,OH,OW) = conv(x, w) + bias``, and the C-ordered ``x`` it read
    (what :func:`conv2d_backward` needs; no second copy of a strided input)."""
    x = np.ascontiguousarray(x)
    return _forward(x, w, bias, padding, dilation, stride), x


def _transposed_flipped(w):
    """``W'[c, o, i, j] = W[o, c, KH-1-i, KW-1-j]`` (C-ordered)."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _input_grad_strided(dy, w, x_shape, padding, stride):
    """``dL/dx`` of a strided convolution (dilation 1), phase by phase (module docstring).
    Phase ``(a, b)``'s row ``u`` is padded row ``a + sh·u``, i.e. ``dx`` row ``a + sh·u - ph``:
    each phase is written straight into ``dx`` without its padding rows and columns (no padded
    buffer, no crop copy; a C task per phase, split over the images).  Positions no phase
    reaches are zeroed first (by the first phase's task), and only when there are any."""
    n, c, h, wd = x_shape
    (ph, pw), (sh, sw) = padding, stride
    oh, ow = dy.shape[2], dy.shape[3]
    # the phases with taps (a kernel smaller than the stride has phases without), and
    # whether together they reach every row and every column of dx
    row_phases = [(a, len(range(a, w.shape[2], sh))) for a in range(sh)]
    col_phases = [(b, len(range(b, w.shape[3], sw))) for b in range(sw)]
    row_phases = [(a, k) for a, k in row_phases if k > 0]
    col_phases = [(b, k) for b, k in col_phases if k > 0]
    covered = all(_covers([_phase_span(size + k - 1, a, pad, s, full) for a, k in phases],
                          s, full)
                  for phases, size, pad, s, full in ((row_phases, oh, ph, sh, h),
                                                      (col_phases, ow, pw, sw, wd)))
    dx = np.empty((n, c, h, wd), dtype=dy.dtype)
    zero = not covered
    task = native.task("conv2d", "phase_scatter", dy.dtype, any_mode=True)
    for a, kha in row_phases:
        for b, kwb in col_phases:
            sub = w[:, :, a::sh, b::sw]
            part = _forward(dy, _transposed_flipped(sub), None, (kha - 1, kwb - 1), (1, 1),
                            any_mode=True)
            rows, u0, r0 = _phase_span(part.shape[2], a, ph, sh, h)
            cols, v0, c0 = _phase_span(part.shape[3], b, pw, sw, wd)
            if zero or (rows > 0 and cols > 0):
                args = cpu_tasks.pack(part, dx, c, part.shape[2], part.shape[3], h, wd,
                                      max(rows, 0), max(cols, 0), u0, v0, r0, c0, sh, sw,
                                      int(zero))
                cpu_tasks.run(task, args, n, min_task_items(c * h * wd))
                zero = False
    return dx                   # phase (0, 0) always has taps: the first task did any zeroing


def _covers(spans, s, size):
    """Whether phase spans ``(count, u0, r0)`` (rows ``r0, r0+s, ...``) cover ``[0, size)``."""
    hit = np.zeros(size, dtype=bool)
    for count, _, r0 in spans:
        if count > 0:
            hit[r0:r0 + s * (count - 1) + 1:s] = True
    return bool(hit.all())


def _phase_span(length, a, pad, s, size):
    """``(count, u0, r0)``: the rows ``u0 .. u0+count-1`` of a phase of ``length`` rows
    (phase offset ``a``, stride ``s``) that land inside the unpadded axis ``[0, size)``, and
    the first one's index ``r0 = a + s·u0 - pad`` there."""
    u0 = max(0, -(-(pad - a) // s))                  # first u with a + s*u >= pad
    r0 = a + s * u0 - pad
    count = min(length - u0, -(-(size - r0) // s)) if r0 < size else 0
    return max(0, count), u0, r0


# work buffers of one weight-gradient group (padded images + transposed dy) kept near L2 size
_GROUP_BYTES = 1 << 19
_GROUP_MAX = 16


def weight_grad_group(x_shape, w_shape, dy_shape, dtype) -> int:
    """Images per weight-gradient group: from the per-image sizes only (never from the batch
    or the thread count), so the groups, and the order they are summed in, are fixed."""
    _, c, h, wd = x_shape
    o, _, kh, kw = w_shape
    # padded image (padding <= kernel) + dy transposed to (positions, channels rounded up)
    per_image = (c * (h + 2 * kh) * (wd + 2 * kw) + dy_shape[2] * dy_shape[3] * (o + 32))
    return int(max(1, min(_GROUP_MAX, _GROUP_BYTES // (per_image * np.dtype(dtype).itemsize))))


def _sum_in_order(parts):
    """``parts[0] + parts[1] + ...`` left to right (a fixed order, whatever the threads)."""
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def conv2d_backward(x, w, dy, has_bias, need_dx, padding, dilation, stride=(1, 1)):
    """``(dx or None, dW, db or None)`` of :func:`conv2d_forward` for ``dy``."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (ph, pw), (dh, dw), (sh, sw) = padding, dilation, stride
    x = np.ascontiguousarray(x)          # the C code reads raw C-ordered memory
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    task = native.task("conv2d", "conv2d_backward_weight", x.dtype, any_mode=True)
    group = weight_grad_group(x.shape, w.shape, dy.shape, x.dtype)
    ngroups = max(1, -(-n // group))      # an empty batch: one group of zeros
    dWg = np.empty((ngroups,) + w.shape, dtype=x.dtype)
    dbg = np.empty((ngroups, o), dtype=x.dtype) if has_bias else None

    if n == 0:
        dWg.fill(0)
        if dbg is not None:
            dbg.fill(0)
    else:                                 # items = groups (group i: images i*group ..)
        args = cpu_tasks.pack(x, dy, dWg, dbg, n, group, c, h, wd, o, kh, kw, ph, pw, sh, sw,
                              dh, dw)
        if cpu_tasks.run(task, args, ngroups,
                         -(-min_task_items(o * dy.shape[2] * dy.shape[3]) // group)):
            raise MemoryError("conv2d_backward_weight: out of memory for its work buffers")
    dW = _sum_in_order(dWg)
    db = _sum_in_order(dbg) if has_bias else None
    dx = None
    if need_dx and (sh, sw) == (1, 1):
        dx = _forward(dy, _transposed_flipped(w), None, (dh * (kh - 1) - ph, dw * (kw - 1) - pw),
                      dilation, any_mode=True)
    elif need_dx:
        dx = _input_grad_strided(dy, w, x.shape, padding, stride)
    return dx, dW, db


# ------------------------------------------------------------------------- max pooling
class PoolIndices:
    """What the C max pool saves for its backward: ``h*W + w`` of each window's maximum."""
    __slots__ = ("idx", "dtype")

    def __init__(self, idx, dtype):
        self.idx, self.dtype = idx, dtype


def pool_supported(dtype) -> bool:
    return np.dtype(dtype) in _DTYPES and native.library("maxpool2d") is not None


def maxpool2d_forward(x, kernel, stride, padding, oh, ow):
    """``(y, PoolIndices)``; the caller has checked the geometry (``padding ≤ kernel/2``)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = np.ascontiguousarray(x)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int32)
    task = native.task("maxpool2d", "maxpool2d_forward", x.dtype)
    args = cpu_tasks.pack(x, y, idx, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    if cpu_tasks.run(task, args, n, min_task_items(c * h * w)):
        raise ValueError("maxpool2d: a pooling window lies entirely in the padding")
    return y, PoolIndices(idx, x.dtype)


def maxpool2d_backward(gy, saved, x_shape):
    n, c, h, w = x_shape
    idx = saved.idx
    if tuple(gy.shape) != tuple(idx.shape):
        raise ValueError(f"maxpool2d backward: gy has shape {tuple(gy.shape)}, expected "
                         f"{tuple(idx.shape)}")
    gy = np.ascontiguousarray(gy, dtype=saved.dtype)
    dx = np.empty((n, c, h, w), dtype=gy.dtype)
    task = native.task("maxpool2d", "maxpool2d_backward", gy.dtype, any_mode=True)
    args = cpu_tasks.pack(gy, idx, dx, c, h, w, idx.shape[2], idx.shape[3])
    cpu_tasks.run(task, args, n, min_task_items(c * h * w))
    return dx
