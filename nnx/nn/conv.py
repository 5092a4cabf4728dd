"""2-D convolution (PyTorch's Conv2d); the arithmetic is the backend's conv2d_forward/backward."""
from __future__ import annotations

import math

import numpy as np

from .. import backend as B
from .. import dtypes, init
from ..backend.base import out_size
from .inputs import as_input, pair as _pair
from .module import Module
from .parameter import Parameter



class Conv2d(Module):
    r"""Cross-correlation of ``x (N, C, H, W)`` with ``W (O, C/g, KH, KW)`` (PyTorch's Conv2d)::

        y[n,o,oh,ow] = b[o] + Σ_{c∈group(o), i, j} W[o,c,i,j] · xpad[n, c, oh·sh + i·dh, ow·sw + j·dw]
        OH = (H + 2·ph - dh·(KH-1) - 1) // sh + 1      (same for OW)

    With ``δ = dL/dy`` the gradients are (seeds: ∂L/∂W[o,c,u,v] = Σ δ[o,i,j]·X[c, i+u, j+v])::

        dL/dW[o,c,i,j] = Σ_{n,oh,ow} δ[n,o,oh,ow] · xpad[n, c, oh·sh + i·dh, ow·sw + j·dw]
        dL/db[o]       = Σ_{n,oh,ow} δ[n,o,oh,ow]
        dL/dx          = the adjoint: each δ·W product added back at the pixel it read

    How the backend computes them is its business (``Backend.conv2d_forward/backward``):

    * generic (and the CUDA backend): ``cols = im2col(x)`` of shape ``(C·KH·KW, N·OH·OW)``,
      ``Y_g = W_g.reshape(O/g, -1) @ cols_g``, ``dW_g = D_g @ cols_gᵀ``,
      ``dx = col2im(W_gᵀ @ D_g)`` (layout in ``nnx/backend/base.py``);
    * CPU, stride 1 and ``groups == 1``: the C kernels' direct convolution
      (``nnx/backend/cpu_direct.py``), with im2col + GEMM as the fallback
      (``NNX_CPU_KERNELS=0``).  Both run in batch chunks on ``NNX_NUM_THREADS`` threads.

    ``backward_params(dy)`` (used by ``Sequential.backward(dy, input_grad=False)``) skips
    ``dL/dx`` and its col2im.

    Initialisation is PyTorch's: kaiming_uniform(a=√5) for W, i.e. ``U(±1/√fan_in)``, and
    ``b ~ U(±1/√fan_in)`` with ``fan_in = (C/g)·KH·KW``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=None):
        super().__init__()
        _set_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                      groups)
        kh, kw = self.kernel_size
        _init_parameters(self, (self.out_channels, self.in_channels // self.groups, kh, kw),
                         bias, dtype)

    def _geometry(self):
        """``(kernel_size, stride, padding, dilation)`` as pairs (Conv1d: unit height)."""
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _weight4(self):
        """The weight as ``(O, C/g, KH, KW)`` (Conv1d: a view with a unit height)."""
        return self.weight.data

    def output_shape(self, input_shape):
        """``(N, O, OH, OW)`` for an input of shape ``(N, C, H, W)``."""
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self._geometry()
        return (n, self.out_channels, out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw))

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects a 4-D input (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} input channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        _, _, oh, ow = Conv2d.output_shape(self, x.shape)
        if oh < 1 or ow < 1:
            (kh, kw), _, (ph, pw), (dh, dw) = self._geometry()
            raise ValueError(
                f"{type(self).__name__}: kernel {kh}x{kw} (dilation {dh}x{dw}, effective "
                f"{dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}) is larger than the padded input "
                f"{x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw}")

    def forward(self, x, relu=False):
        """``relu=True`` returns ``max(y, 0)`` from the same pass (a following ReLU fused
        in: see :class:`~nnx.nn.container.Sequential`); backward masks ``dy`` with
        ``[y > 0]`` inside the backend's bias-gradient pass."""
        x = as_input(x, self.weight.data.dtype, "Conv2d")
        self._check(x)
        bias = None if self.bias is None else self.bias.data
        y, saved = B.get().conv2d_forward(x, self._weight4(), bias, *self._geometry()[1:],
                                          self.groups, relu=relu)
        self.ctx.saved, self.ctx.x_shape = saved, tuple(x.shape)
        self.ctx.relu_y = y if relu else None
        return y

    def backward(self, dy):
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """Accumulate ``dL/dW`` and ``dL/db`` only (no ``dL/dx``)."""
        self._backward(dy, need_dx=False)
        return None

    def _backward(self, dy, need_dx):
        saved, x_shape = self.ctx.saved, self.ctx.x_shape
        expected = Conv2d.output_shape(self, x_shape)
        if tuple(dy.shape) != tuple(expected):
            raise ValueError(f"Conv2d.backward: dy has shape {tuple(dy.shape)}, expected "
                             f"{tuple(expected)} (the output of its forward)")
        dx, dw, db = B.get().conv2d_backward(dy, saved, self._weight4(), self.bias is not None,
                                             need_dx, *self._geometry()[1:], self.groups,
                                             relu_y=getattr(self.ctx, "relu_y", None))
        if db is not None:
            self.bias.accumulate(db, owned=True)  # fresh from the backend
        self.weight.accumulate(dw.reshape(self.weight.data.shape), owned=True)
        return dx

    def extra_repr(self):
        return _conv_repr(self)


def _set_geometry(m, in_channels, out_channels, kernel_size, stride, padding, dilation,
                  groups):
    """Validate and set a 2-D convolution's channels and geometry (each as a pair)."""
    name = type(m).__name__
    m.in_channels, m.out_channels = int(in_channels), int(out_channels)
    m.kernel_size = _pair(kernel_size, "kernel_size")
    m.stride = _pair(stride, "stride")
    m.padding = _pair(padding, "padding")
    m.dilation = _pair(dilation, "dilation")
    m.groups = int(groups)
    if m.groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    for what, n in (("in_channels", m.in_channels), ("out_channels", m.out_channels)):
        if n % m.groups:
            raise ValueError(f"{name}: {what}={n} is not divisible by groups={m.groups}")
    if min(m.kernel_size) < 1 or min(m.stride) < 1 or min(m.dilation) < 1:
        raise ValueError(f"{name}: kernel_size, stride and dilation must be positive")
    if min(m.padding) < 0:
        raise ValueError(f"{name}: padding must be non-negative, got {m.padding}")


def _init_parameters(m, weight_shape, bias, dtype):
    """PyTorch's initialisation: kaiming_uniform(a=√5) for the weight, ``U(±1/√fan_in)``
    for the bias, ``fan_in`` = the product of the weight's dimensions after the first."""
    xp = B.get().xp
    dt = dtypes.resolve(dtype)
    m.weight = Parameter(xp.empty(weight_shape, dtype=dt))
    init.kaiming_uniform_(m.weight, a=math.sqrt(5))
    if bias:
        fan_in = int(np.prod(weight_shape[1:]))
        m.bias = Parameter(xp.empty((m.out_channels,), dtype=dt))
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(m.bias, -bound, bound)
    else:
        m.bias = None


def _conv_repr(m, extra=()):
    """``in, out, kernel_size=..., stride=...`` and the options that differ from their
    defaults (``extra``: more ``(name, default)`` pairs)."""
    s = f"{m.in_channels}, {m.out_channels}, kernel_size={m.kernel_size}, stride={m.stride}"
    for name, default in (("padding", 0),) + tuple(extra) + (("dilation", 1),):
        value = getattr(m, name)
        if set(value) != {default}:
            s += f", {name}={value}"
    if m.groups != 1:
        s += f", groups={m.groups}"
    if m.bias is None:
        s += ", bias=False"
    return s


def _single(v, name: str) -> int:
    """An int or a 1-sequence as an int (Conv1d's kernel size, stride, ...)."""
    if isinstance(v, int):
        return v
    t = tuple(int(a) for a in v)
    if len(t) != 1:
        raise ValueError(f"{name} must be an int or a 1-tuple, got {v!r}")
    return t[0]


class Conv1d(Conv2d):
    r"""Cross-correlation of ``x (N, C, L)`` with ``W (O, C/g, K)`` (PyTorch's Conv1d)::

        y[n,o,l] = b[o] + Σ_{c∈group(o), k} W[o,c,k] · xpad[n, c, l·s + k·d]
        L_out = (L + 2·p - d·(K-1) - 1) // s + 1

    It *is* :class:`Conv2d` on ``x`` viewed as ``(N, C, 1, L)`` with a ``(1, K)`` kernel
    (stride ``(1, s)``, padding ``(0, p)``, dilation ``(1, d)``): the same backend
    arithmetic, gradients (``dL/dW``, ``dL/db``, ``dL/dx``: Conv2d's, with the unit height
    dropped) and initialisation (``fan_in = (C/g)·K``).  The attributes ``kernel_size``,
    ``stride``, ``padding``, ``dilation`` are 1-tuples and ``weight`` is ``(O, C/g, K)``, as
    PyTorch's, so state dicts move between the two."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=None):
        k, s = _single(kernel_size, "kernel_size"), _single(stride, "stride")
        p, d = _single(padding, "padding"), _single(dilation, "dilation")
        super().__init__(in_channels, out_channels, (1, k), (1, s), (0, p), (1, d), groups,
                         bias, dtype)
        self.weight = Parameter(self.weight.data[:, :, 0, :].copy())
        self.kernel_size, self.stride, self.padding, self.dilation = (k,), (s,), (p,), (d,)

    def _geometry(self):
        (k,), (s,), (p,), (d,) = self.kernel_size, self.stride, self.padding, self.dilation
        return (1, k), (1, s), (0, p), (1, d)

    def _weight4(self):
        return self.weight.data[:, :, None, :]

    def output_shape(self, input_shape):
        """``(N, O, L_out)`` for an input of shape ``(N, C, L)``."""
        n, o, _, length = super().output_shape((input_shape[0], input_shape[1], 1,
                                                input_shape[2]))
        return n, o, length

    def forward(self, x):
        x = as_input(x, self.weight.data.dtype, "Conv1d")
        if x.ndim != 3:
            raise ValueError(f"Conv1d expects a 3-D input (N, C, L), got shape "
                             f"{tuple(x.shape)}")
        return super().forward(x[:, :, None, :])[:, :, 0, :]

    def backward(self, dy):
        return self._backward(dy[:, :, None, :], need_dx=True)[:, :, 0, :]

    def backward_params(self, dy):
        """Accumulate ``dL/dW`` and ``dL/db`` only (no ``dL/dx``)."""
        self._backward(dy[:, :, None, :], need_dx=False)
        return None
