"""NumPy convolution and pooling kernels (the reference for every backend).

No Python loop runs over pixels, channels or the batch: every routine loops at most over the
``KH*KW`` kernel offsets ``(i, j)`` and moves whole strided sub-arrays at each offset.  For
offset ``(i, j)`` the input pixels used by all outputs form the strided slice::

    xpad[..., i*dh : i*dh + sh*(OH-1) + 1 : sh,  j*dw : j*dw + sw*(OW-1) + 1 : sw]

which has shape ``(..., OH, OW)``.  For a fixed offset that map (output -> input pixel) is
injective, so adjoint/backward passes may use ``+=`` on the slice without index collisions;
overlapping windows accumulate across offsets.

Layouts (see ``base.py``): ``cols (C*KH*KW, N*OH*OW)`` with row ``(c*KH+i)*KW+j`` and column
``(n*OH+oh)*OW+ow``.  im2col copies, in ONE call, a strided 6-D view ``(C, KH, KW, N, OH, OW)``
of the padded input into ``cols.reshape(C, KH, KW, N, OH, OW)`` (innermost runs along ``OW``);
col2im adds the ``KH*KW`` slices into a channel-major padded buffer ``(C, N, Hp, Wp)``.
The 2x2/stride-2 max pool (the CNNs' case) has a two-pass fast path.
Dtypes are preserved (float32 stays float32).

Batch parallelism (``cpu_parallel``): im2col, col2im, the 2x2 max pool and the convolution
GEMM stages split the batch into ``NNX_NUM_THREADS`` contiguous chunks run on a thread pool;
each chunk writes its own slice, gradient partials are summed in chunk order.
"""
from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import out_size
from .cpu_parallel import blas_limited, can_split_gemm, chunks_for, parallel_chunks

# Per-thread scratch arrays (padding buffers) reused across calls, keyed by shape and dtype:
# im2col's zero border is written once instead of every call.  Scratch arrays never escape to
# callers.  The cache is dropped when it would grow past _SCRATCH_LIMIT bytes.
_SCRATCH_LIMIT = 512 * 2 ** 20
_local = threading.local()


def _scratch(tag, shape, dtype, zero=True):
    """A reusable array for ``tag``; zero-filled when created (callers that rely on parts of
    it staying zero never write there)."""
    cache = getattr(_local, "bufs", None)
    if cache is None:
        cache = _local.bufs = {}
    key = (tag, tuple(shape), np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if sum(b.nbytes for b in cache.values()) + size > _SCRATCH_LIMIT:
            cache.clear()
        buf = cache[key] = (np.zeros if zero else np.empty)(shape, dtype=dtype)
    return buf


# Chunks smaller than this many elements are not worth a hand-off to Python's thread pool
# (~65 us on a 2-vCPU VM: waking a sleeping thread) ...
_MIN_CHUNK_ELEMS = 1 << 17
# ... or to nnx's C pool (kernels/cpu/parallel.c: a few us, its threads spin between calls)
_MIN_TASK_ELEMS = 1 << 13


def min_items(per_item: int) -> int:
    """Minimum batch items per chunk on Python's thread pool when one item has ``per_item``
    elements (of output, or of the input a pass streams through)."""
    return max(1, -(-_MIN_CHUNK_ELEMS // max(1, int(per_item))))


def min_task_items(per_item: int) -> int:
    """The same for a C kernel run on nnx's C pool (:mod:`nnx.backend.cpu_tasks`)."""
    return max(1, -(-_MIN_TASK_ELEMS // max(1, int(per_item))))


def clear_scratch() -> None:
    """Release this thread's scratch buffers."""
    _local.bufs = {}


def _window(i, d, s, n_out):
    """Slice of the padded axis read by kernel offset ``i`` for all ``n_out`` outputs."""
    start = i * d
    return slice(start, start + s * (n_out - 1) + 1, s)


def _geometry(x_shape, kernel, stride, padding, dilation=(1, 1)):
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input "
            f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph}x{pw})")
    return n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


# ------------------------------------------------------------------------- im2col / col2im
def im2col(x, kernel, stride, padding, dilation):
    """``x (N,C,H,W)`` -> ``cols (C*KH*KW, N*OH*OW)`` (zero padding)."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(
        x.shape, kernel, stride, padding, dilation)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)

    def part(a, b):
        xa = x[a:b]
        if ph or pw:
            # zero border kept from the buffer's creation; only the interior is rewritten.
            # The key holds the padding: another (h, w, padding) with the same padded shape
            # writes its interior over this one's border.
            xpad = _scratch(("im2col_pad", ph, pw), (b - a, c, h + 2 * ph, w + 2 * pw),
                            x.dtype)
            xpad[:, :, ph:ph + h, pw:pw + w] = xa
        else:
            xpad = xa
        # all KH*KW offsets as one strided view (C, KH, KW, n, OH, OW) of xpad: one copy call
        sn, sc, sy, sx = xpad.strides
        src = as_strided(xpad, shape=(c, kh, kw, b - a, oh, ow),
                         strides=(sc, dh * sy, dw * sx, sn, sh * sy, sw * sx), writeable=False)
        cols[:, :, :, a:b] = src

    parallel_chunks(n, part, min_items(c * kh * kw * oh * ow))
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    """Adjoint of :func:`im2col`: ``dx[n,c,h,w] = Σ`` of every column entry that read it."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(
        tuple(x_shape), kernel, stride, padding, dilation)
    expected = (c * kh * kw, n * oh * ow)
    if tuple(cols.shape) != expected:
        raise ValueError(f"col2im: cols has shape {tuple(cols.shape)}, expected {expected} "
                         f"for input shape {tuple(x_shape)}")
    c6 = cols.reshape(c, kh, kw, n, oh, ow)
    dx = np.empty((n, c, h, w), dtype=cols.dtype)

    def part(a, b):
        xpad = _scratch("col2im_pad", (c, b - a, h + 2 * ph, w + 2 * pw), cols.dtype)
        xpad.fill(0)
        for i in range(kh):
            hs = _window(i, dh, sh, oh)
            for j in range(kw):
                xpad[:, :, hs, _window(j, dw, sw, ow)] += c6[:, i, j, a:b]
        dx[a:b].transpose(1, 0, 2, 3)[...] = xpad[:, :, ph:ph + h, pw:pw + w]

    parallel_chunks(n, part, min_items(c * kh * kw * oh * ow))
    return dx


# ------------------------------------------------------------------------- conv GEMM stages
def _gemm_chunks(n, per_item):
    """Chunks for the convolution GEMM stages: split only when BLAS can be held at one
    thread per chunk (threadpoolctl), else one whole, BLAS-threaded product."""
    if not can_split_gemm():
        return 1
    return chunks_for(n, min_items(per_item))


def _gemm_parallel(n, per_item, fn):
    if _gemm_chunks(n, per_item) <= 1:
        return [fn(0, n)]
    with blas_limited():
        return parallel_chunks(n, fn, min_items(per_item))


# Column matrices with at most this many rows use per-image GEMMs (0: never): measured
# faster for a first layer (3·3·3 = 27 rows), slower for wide ones (bench/NOTES.md).
PER_IMAGE_MAX_ROWS = 64


def conv_forward_gemm(w2, cols, bias, n, oh, ow, per_image):
    """``y (N,O,OH,OW) = w2 (O,K) @ cols (K, N*OH*OW)`` (+ bias) for ``groups == 1``.

    ``per_image``: one ``(O,K) @ (K,OH*OW)`` product per image, written straight into NCHW;
    else one product per batch chunk and a transposing copy (with the bias) into NCHW."""
    o, k = w2.shape
    p = oh * ow
    out = np.empty((n, o, oh, ow), dtype=cols.dtype)
    out3, cols3 = out.reshape(n, o, p), cols.reshape(k, n, p)

    def part(a, b):
        if per_image:
            np.matmul(w2, cols3[:, a:b].transpose(1, 0, 2), out=out3[a:b])
            if bias is not None:
                out3[a:b] += bias.reshape(1, o, 1)
            return
        y = (w2 @ cols[:, a * p:b * p]).reshape(o, b - a, oh, ow)
        if bias is not None:
            np.add(y.transpose(1, 0, 2, 3), bias.reshape(1, o, 1, 1), out=out[a:b])
        else:
            out[a:b] = y.transpose(1, 0, 2, 3)

    _gemm_parallel(n, o * p, part)
    return out


def conv_backward_gemm(w2, cols, dy, has_bias, need_dx, per_image):
    """Gradients of :func:`conv_forward_gemm` for ``δ = dy (N,O,OH,OW)``: returns
    ``(dW (O,K), db (O,) or None, dcols (K, N*OH*OW) or None)`` with
    ``dW = Σ_n δ_n @ cols_nᵀ``, ``db = Σ δ``, ``dcols = w2ᵀ @ δ``.  Per-chunk partial sums of
    ``dW`` and ``db`` are added in chunk order (deterministic for a given thread count)."""
    n, o, oh, ow = dy.shape
    k = w2.shape[1]
    p = oh * ow
    cols3 = cols.reshape(k, n, p)
    dcols = np.empty_like(cols) if need_dx else None

    def part(a, b):
        if per_image:
            d3 = dy[a:b].reshape(b - a, o, p)
            db = d3.sum(axis=2).sum(axis=0) if has_bias else None
            # Σ_n dy[n] @ cols[n]ᵀ: per-image GEMMs, no transposed copy of dy
            dw = np.matmul(d3, cols3[:, a:b].transpose(1, 2, 0)).sum(axis=0)
            if need_dx:
                np.matmul(w2.T, d3, out=dcols.reshape(k, n, p)[:, a:b].transpose(1, 0, 2))
            return dw, db
        # (n, O, OH, OW) -> (O, n*OH*OW), one copy
        d2 = np.ascontiguousarray(dy[a:b].transpose(1, 0, 2, 3)).reshape(o, -1)
        db = d2.sum(axis=1) if has_bias else None
        # (cols @ d2ᵀ)ᵀ: OpenBLAS runs this orientation ~1.5x faster than d2 @ colsᵀ
        dw = (cols[:, a * p:b * p] @ d2.T).T
        if need_dx:
            np.matmul(w2.T, d2, out=dcols[:, a * p:b * p])
        return dw, db

    parts = _gemm_parallel(n, o * p, part)
    dw, db = parts[0]
    for dwi, dbi in parts[1:]:          # fixed order: chunk 0 + chunk 1 + ...
        dw = dw + dwi
        if has_bias:
            db = db + dbi
    return dw, db, dcols


# ------------------------------------------------------------------------- pooling helpers
def _is_tiling(x_shape, kernel, stride, padding):
    """Windows that exactly tile the input (stride == kernel, no padding, divisible): every
    input pixel belongs to exactly one window, so backward can assign instead of add."""
    _, _, h, w = x_shape
    return (tuple(stride) == tuple(kernel) and tuple(padding) == (0, 0)
            and h % kernel[0] == 0 and w % kernel[1] == 0)


def _check_pool_padding(kernel, padding):
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"pooling padding {tuple(padding)} must be at most half the kernel "
                         f"size {tuple(kernel)}")


def _padded(x, ph, pw, fill):
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    xpad = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    return xpad


def _cropped(dxpad, ph, pw, h, w):
    if ph or pw:
        return np.ascontiguousarray(dxpad[:, :, ph:ph + h, pw:pw + w])
    return dxpad


# ------------------------------------------------------------------------- max pooling
def pool_output_size(x_shape, kernel, stride, padding):
    """``(OH, OW)`` of a pooling window geometry, after checking its padding."""
    _check_pool_padding(kernel, padding)
    return _geometry(tuple(x_shape), kernel, stride, padding)[-2:]


def maxpool2d_forward(x, kernel, stride, padding):
    """``y = max`` over each window, padding counting as ``-inf``.

    ``saved = arg``: ``(N,C,OH,OW)``, the kernel offset ``i*KW + j`` of the first maximum in
    each window (uint8 for kernels of up to 255 elements).  One running max over the
    ``KH*KW`` strided views; offsets are visited in increasing order, so
    ``arg = max(arg, k * [v > y])`` records the latest strict improvement (ties keep the first).
    """
    _check_pool_padding(kernel, padding)
    n, c, h, w, kh, kw, sh, sw, ph, pw, _, _, oh, ow = _geometry(x.shape, kernel, stride,
                                                               padding)
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        return _maxpool2x2_forward(x, oh, ow)
    arg_dtype = np.uint8 if kh * kw <= 256 else np.int32
    xpad = _padded(x, ph, pw, -np.inf)
    y = None
    arg = np.zeros((n, c, oh, ow), dtype=arg_dtype)
    mask = np.empty((n, c, oh, ow), dtype=bool)
    cand = np.empty((n, c, oh, ow), dtype=arg_dtype)
    for i in range(kh):
        hs = _window(i, 1, sh, oh)
        for j in range(kw):
            v = xpad[:, :, hs, _window(j, 1, sw, ow)]
            if y is None:
                y = v.copy()
                continue
            np.greater(v, y, out=mask)
            # multiply-and-max is several times faster than the boolean assignment arg[mask]=k
            np.multiply(mask, arg_dtype(i * kw + j), out=cand)
            np.maximum(arg, cand, out=arg)
            np.maximum(y, v, out=y)
    return y, arg


def maxpool2d_backward(gy, saved, x_shape, kernel, stride, padding):
    """``dx[argmax of window] += gy[window]`` (overlapping windows accumulate)."""
    if isinstance(saved, _Max2x2):
        return _maxpool2x2_backward(gy, saved, tuple(x_shape))
    arg = saved
    n, c, h, w, kh, kw, sh, sw, ph, pw, _, _, oh, ow = _geometry(tuple(x_shape), kernel,
                                                               stride, padding)
    mask = np.empty(arg.shape, dtype=bool)
    if _is_tiling(x_shape, kernel, stride, padding):
        dx = np.empty((n, c, h, w), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                np.equal(arg, i * kw + j, out=mask)
                np.multiply(gy, mask, out=dx[:, :, i::kh, j::kw])
        return dx
    dxpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=gy.dtype)
    tmp = np.empty(gy.shape, dtype=gy.dtype)
    for i in range(kh):
        hs = _window(i, 1, sh, oh)
        for j in range(kw):
            np.equal(arg, i * kw + j, out=mask)
            np.multiply(gy, mask, out=tmp)
            dxpad[:, :, hs, _window(j, 1, sw, ow)] += tmp
    return _cropped(dxpad, ph, pw, h, w)


# ------------------------------------------------------------------------- 2x2 / stride 2 max pool
class _Max2x2:
    """Saved state of the 2x2/stride-2 fast path: ``jbit (N,C,2*OH,OW)`` is True where the
    right pixel of a row pair wins, ``ibit (N,C,OH,OW)`` where the bottom row's max wins."""

    __slots__ = ("ibit", "jbit")

    def __init__(self, ibit, jbit):
        self.ibit, self.jbit = ibit, jbit


def _maxpool2x2_forward(x, oh, ow):
    """Max over each row pair, then over the two row maxima (2 passes instead of 4 strided
    running-max passes).  Strict ``>`` keeps the first maximum in window order
    (0,0), (0,1), (1,0), (1,1), like the general path.  Batch-chunked (disjoint slices)."""
    n, c = x.shape[:2]
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    ibit = np.empty((n, c, oh, ow), dtype=bool)
    jbit = np.empty((n, c, 2 * oh, ow), dtype=bool)

    def part(a, b):
        xc = x[a:b, :, :2 * oh, :2 * ow]
        left, right = xc[..., 0::2], xc[..., 1::2]
        np.greater(right, left, out=jbit[a:b])
        rowmax = np.maximum(left, right)                   # (n, C, 2*OH, OW) contiguous
        top, bottom = rowmax[:, :, 0::2], rowmax[:, :, 1::2]
        np.greater(bottom, top, out=ibit[a:b])
        np.maximum(top, bottom, out=y[a:b])

    parallel_chunks(n, part, min_items(c * 4 * oh * ow))
    return y, _Max2x2(ibit, jbit)


def _maxpool2x2_backward(gy, saved, x_shape):
    n, c, h, w = x_shape
    oh, ow = gy.shape[2:]
    exact = (h, w) == (2 * oh, 2 * ow)
    dx = (np.empty if exact else np.zeros)((n, c, h, w), dtype=gy.dtype)

    def part(a, b):
        g, ibit, jbit = gy[a:b], saved.ibit[a:b], saved.jbit[a:b]
        grow = np.empty((b - a, c, 2 * oh, ow), dtype=gy.dtype)     # dL/d(row max)
        np.multiply(g, ibit, out=grow[:, :, 1::2])
        np.multiply(g, np.logical_not(ibit), out=grow[:, :, 0::2])
        np.multiply(grow, jbit, out=dx[a:b, :, :2 * oh, 1:2 * ow:2])
        np.multiply(grow, np.logical_not(jbit), out=dx[a:b, :, :2 * oh, 0:2 * ow:2])

    parallel_chunks(n, part, min_items(c * 4 * oh * ow))
    return dx


# ------------------------------------------------------------------------- average pooling
def _avg_divisor(h, w, kernel, stride, padding, oh, ow, count_include_pad, dtype):
    """Per-output divisor ``(OH, OW)``: ``KH*KW`` with ``count_include_pad`` (windows never
    leave the padded input without ceil_mode), else the number of real input pixels."""
    kh, kw = kernel
    if count_include_pad:
        return np.asarray(kh * kw, dtype=dtype)

    def counts(size, k, s, p, n_out):
        start = np.arange(n_out) * s - p
        return np.minimum(start + k, size) - np.maximum(start, 0)

    ch = counts(h, kh, stride[0], padding[0], oh)
    cw = counts(w, kw, stride[1], padding[1], ow)
    return (ch[:, None] * cw[None, :]).astype(dtype)


def avgpool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """``y = (Σ_window x) / divisor`` with zero padding (see :func:`_avg_divisor`)."""
    _check_pool_padding(kernel, padding)
    n, c, h, w, kh, kw, sh, sw, ph, pw, _, _, oh, ow = _geometry(x.shape, kernel, stride,
                                                               padding)
    xpad = _padded(x, ph, pw, 0)
    y = None
    for i in range(kh):
        hs = _window(i, 1, sh, oh)
        for j in range(kw):
            v = xpad[:, :, hs, _window(j, 1, sw, ow)]
            if y is None:
                y = v.copy()
            else:
                y += v
    y /= _avg_divisor(h, w, kernel, stride, padding, oh, ow, count_include_pad, x.dtype)
    return y


def avgpool2d_backward(gy, x_shape, kernel, stride, padding, count_include_pad=True):
    """``dx[p] = Σ_{windows o containing p} gy[o] / divisor[o]`` (padding gets nothing)."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, _, _, oh, ow = _geometry(tuple(x_shape), kernel,
                                                               stride, padding)
    g = gy / _avg_divisor(h, w, kernel, stride, padding, oh, ow, count_include_pad, gy.dtype)
    if _is_tiling(x_shape, kernel, stride, padding):
        dx = np.empty((n, c, h, w), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                dx[:, :, i::kh, j::kw] = g
        return dx
    dxpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=gy.dtype)
    for i in range(kh):
        hs = _window(i, 1, sh, oh)
        for j in range(kw):
            dxpad[:, :, hs, _window(j, 1, sw, ow)] += g
    return _cropped(dxpad, ph, pw, h, w)
