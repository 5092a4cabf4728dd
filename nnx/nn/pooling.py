"""2-D max, average and adaptive (global) average pooling (PyTorch semantics, floor mode)."""
from __future__ import annotations

from .. import backend as B
from .inputs import as_array, check_float, pair as _pair
from .module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        name = type(self).__name__
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be positive and padding "
                             f"non-negative, got kernel_size={self.kernel_size}, "
                             f"stride={self.stride}, padding={self.padding}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} should be at most half of "
                             f"kernel_size {self.kernel_size}")

    def output_shape(self, input_shape):
        *lead, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (*lead, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def _input(self, x):
        name = type(self).__name__
        x = check_float(as_array(x), name)
        if x.ndim != 4:
            raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        _, _, oh, ow = self.output_shape(x.shape)
        if oh < 1 or ow < 1:
            raise ValueError(f"{name}: kernel {self.kernel_size} is larger than the padded "
                             f"input {x.shape[2] + 2 * self.padding[0]}x"
                             f"{x.shape[3] + 2 * self.padding[1]}")
        self.ctx.x_shape = x.shape
        return x

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class MaxPool2d(_Pool2d):
    """``y[n,c,oh,ow] = max_{i,j} xpad[n, c, oh·sh + i, ow·sw + j]`` with ``-inf`` padding;
    ``dL/dx`` routes each ``dL/dy`` to its window's first arg-max (summed where windows
    overlap).  ``stride`` defaults to ``kernel_size``; padding ≤ kernel_size/2."""

    def forward(self, x):
        x = self._input(x)
        y, self.ctx.saved = B.get().maxpool2d_forward(x, self.kernel_size, self.stride,
                                                      self.padding)
        return y

    def backward(self, dy):
        return B.get().maxpool2d_backward(dy, self.ctx.saved, self.ctx.x_shape,
                                          self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """``y[n,c,oh,ow] = Σ_{i,j} xpad[n, c, oh·sh + i, ow·sw + j] / D[oh,ow]`` with zero padding,
    ``D = KH·KW`` if ``count_include_pad`` else the number of non-padding pixels in the
    window; ``dL/dx[p] = Σ_{windows o ∋ p} dL/dy[o] / D[o]``.

    ``count_include_pad`` is keyword-only: PyTorch's fourth positional argument is
    ``ceil_mode``, which nnx does not have."""

    def __init__(self, kernel_size, stride=None, padding=0, *, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        x = self._input(x)
        return B.get().avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                         self.count_include_pad)

    def backward(self, dy):
        return B.get().avgpool2d_backward(dy, self.ctx.x_shape, self.kernel_size, self.stride,
                                          self.padding, self.count_include_pad)

    def extra_repr(self):
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class AdaptiveAvgPool2d(Module):
    """Global average pooling (``output_size = 1``): ``y[n,c,0,0] = mean_{h,w} x[n,c,h,w]``;
    ``dL/dx[n,c,h,w] = dL/dy[n,c,0,0] / (H·W)``.  When ``H, W`` are multiples of the output
    size the windows are uniform and this is ``AvgPool2d(H/OH, W/OW)``; other sizes raise
    ``NotImplementedError``."""

    def __init__(self, output_size):
        super().__init__()
        if output_size is None or isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def _target(self, h, w):
        oh = h if self.output_size[0] is None else int(self.output_size[0])
        ow = w if self.output_size[1] is None else int(self.output_size[1])
        return oh, ow

    def output_shape(self, input_shape):
        *lead, h, w = input_shape
        return (*lead, *self._target(h, w))

    def forward(self, x):
        x = check_float(as_array(x), "AdaptiveAvgPool2d")
        if x.ndim != 4:
            raise ValueError(f"AdaptiveAvgPool2d expects a 4-D input (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        h, w = x.shape[2:]
        oh, ow = self._target(h, w)
        self.ctx.x_shape = x.shape
        if (oh, ow) == (1, 1):
            self.ctx.window = None
            return x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)
        if h % oh or w % ow:
            raise NotImplementedError(
                f"AdaptiveAvgPool2d: output size {(oh, ow)} must divide the input size "
                f"{(h, w)} (non-uniform windows are not implemented); use output_size=1 for "
                "global average pooling")
        k = self.ctx.window = (h // oh, w // ow)
        return B.get().avgpool2d_forward(x, k, k, (0, 0), True)

    def backward(self, dy):
        k, x_shape = self.ctx.window, self.ctx.x_shape
        if k is not None:
            return B.get().avgpool2d_backward(dy, x_shape, k, k, (0, 0), True)
        n, c, h, w = x_shape
        xp = B.get().xp
        return xp.broadcast_to(dy / dy.dtype.type(h * w), (n, c, h, w)).copy()

    def extra_repr(self):
        out = self.output_size
        return f"output_size={out[0] if out[0] == out[1] else out}"
