"""Transposed 2-D convolution (PyTorch's ConvTranspose2d): the adjoint of Conv2d, built from
the backend's convolution pieces (no kernel of its own)."""
from __future__ import annotations

from .. import backend as B
from ..backend.base import _grouped_matmul
from .conv import _conv_repr, _init_parameters, _set_geometry
from .inputs import as_input, pair as _pair
from .module import Module


class ConvTranspose2d(Module):
    r"""The transpose (adjoint) of a :class:`Conv2d` that maps ``out_channels`` to
    ``in_channels`` with the same kernel, stride, padding, dilation and groups; ``x (N, C, H,
    W)``, ``W (C, O/g, KH, KW)`` (PyTorch's layout)::

        y[n,o,h,w] = b[o] + Σ_{c∈group(o), i, j, ih·sh - ph + i·dh = h, iw·sw - pw + j·dw = w}
                     W[c,o,i,j] · x[n,c,ih,iw]
        OH = (H - 1)·sh - 2·ph + dh·(KH - 1) + oph + 1      (same for OW; oph: output_padding)

    i.e. each input pixel scatters ``x · W`` into the output.  In the backend's terms:
    ``y = col2im(W_gᵀ @ x_g)`` (Conv2d's input gradient).  With ``δ = dL/dy``::

        dL/dx = conv2d(δ, W)                  (Conv2d's forward, W as a (C, O/g, KH, KW) kernel)
        dL/dW = Conv2d's weight gradient of that convolution for the output gradient x
        dL/db[o] = Σ_{n,h,w} δ[n,o,h,w]

    ``output_padding`` (< stride) adds rows/columns at the bottom/right to select among the
    output sizes that a strided Conv2d maps to the same ``H``.  Initialisation is
    PyTorch's: kaiming_uniform(a=√5) with ``fan_in = (O/g)·KH·KW`` (dimension 1 of ``W``),
    and ``b ~ U(±1/√fan_in)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=None):
        super().__init__()
        _set_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                      groups)
        self.output_padding = _pair(output_padding, "output_padding")
        if not all(0 <= op < s for op, s in zip(self.output_padding, self.stride)):
            raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be "
                             f"non-negative and smaller than the stride {self.stride}")
        kh, kw = self.kernel_size
        _init_parameters(self, (self.in_channels, self.out_channels // self.groups, kh, kw),
                         bias, dtype)

    def output_shape(self, input_shape):
        """``(N, O, OH, OW)`` for an input of shape ``(N, C, H, W)``."""
        n, _, h, w = input_shape
        size = [(i - 1) * s - 2 * p + d * (k - 1) + op + 1
                for i, s, p, d, k, op in zip((h, w), self.stride, self.padding, self.dilation,
                                             self.kernel_size, self.output_padding)]
        return (n, self.out_channels, size[0], size[1])

    def forward(self, x):
        x = as_input(x, self.weight.data.dtype, "ConvTranspose2d")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d expects an input (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        y_shape = self.output_shape(x.shape)
        if min(y_shape[2:]) < 1:
            raise ValueError(f"ConvTranspose2d: the output size {y_shape[2:]} for input "
                             f"{tuple(x.shape)} is not positive (padding too large)")
        be = B.get()
        xp = be.xp
        c = self.in_channels
        x2 = xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c, -1)
        cols = _grouped_matmul(xp, self.weight.data.reshape(c, -1), x2, self.groups, a_t=True)
        y = be.col2im(cols, y_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.bias is not None:
            y += self.bias.data.reshape(1, -1, 1, 1)
        self.ctx.x = x
        return y

    def backward(self, dy):
        be = B.get()
        x = self.ctx.x
        expected = self.output_shape(x.shape)
        if tuple(dy.shape) != expected:
            raise ValueError(f"ConvTranspose2d.backward: dy has shape {tuple(dy.shape)}, "
                             f"expected {expected} (the output of its forward)")
        geometry = (self.stride, self.padding, self.dilation)
        dx, saved = be.conv2d_forward(dy, self.weight.data, None, *geometry, self.groups)
        _, dw, _ = be.conv2d_backward(x, saved, self.weight.data, False, False, *geometry,
                                      self.groups)
        if self.bias is not None:
            self.bias.accumulate(dy.sum(axis=(0, 2, 3)))
        self.weight.accumulate(dw)
        return dx

    def extra_repr(self):
        return _conv_repr(self, extra=(("output_padding", 0),))
