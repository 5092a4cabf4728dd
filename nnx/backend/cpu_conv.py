"""NumPy convolution and pooling kernels (the reference for every backend).

No Python loop runs over pixels, channels or the batch: every routine loops at most over the
``KH*KW`` kernel offsets ``(i, j)`` and moves whole strided sub-arrays at each offset.  For
offset ``(i, j)`` the input pixels used by all outputs form the strided slice::

    xpad[..., i*dh : i*dh + sh*(OH-1) + 1 : sh,  j*dw : j*dw + sw*(OW-1) + 1 : sw]

which has shape ``(..., OH, OW)``.  For a fixed offset that map (output -> input pixel) is
injective, so adjoint/backward passes may use ``+=`` on the slice without index collisions;
overlapping windows accumulate across offsets.

Layouts (see ``base.py``): ``cols (C*KH*KW, N*OH*OW)`` with row ``(c*KH+i)*KW+j`` and column
``(n*OH+oh)*OW+ow``.  We write into the view ``cols.reshape(C, KH, KW, N, OH, OW)`` from the
channel-major padded input ``(C, N, Hp, Wp)``, so the innermost copies run along ``OW``.
Dtypes are preserved (float32 stays float32).
"""
from __future__ import annotations

import numpy as np


def out_size(size, k, s, p, d=1):
    """``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


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
    xt = x.transpose(1, 0, 2, 3)
    if ph or pw:
        # one pass that both pads and makes the channel-major layout contiguous
        xpad = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        xpad[:, :, ph:ph + h, pw:pw + w] = xt
    else:
        xpad = xt
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        hs = _window(i, dh, sh, oh)
        for j in range(kw):
            cols[:, i, j] = xpad[:, :, hs, _window(j, dw, sw, ow)]
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
    xpad = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        hs = _window(i, dh, sh, oh)
        for j in range(kw):
            xpad[:, :, hs, _window(j, dw, sw, ow)] += c6[:, i, j]
    dx = np.empty((n, c, h, w), dtype=cols.dtype)
    dx.transpose(1, 0, 2, 3)[...] = xpad[:, :, ph:ph + h, pw:pw + w]
    return dx


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
