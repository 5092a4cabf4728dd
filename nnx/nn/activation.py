"""Element-wise activations and softmax.  Each call saves only what its derivative needs
(in ``self.ctx``, the call's own context)."""
from __future__ import annotations

import math
import warnings

from .. import backend as B
from .inputs import as_array, check_float
from .module import Module
from .special import normal_cdf


class _Activation(Module):
    def _input(self, x):
        return check_float(as_array(x), type(self).__name__)


class ReLU(Module):
    """``y = max(x, 0)``;  ``dL/dx = dL/dy ⊙ 𝟙[x > 0]`` (seeds: the indicator function).

    ``inplace=True`` (PyTorch's flag) overwrites ``x`` with ``y`` instead of allocating a new
    array; use it only where nothing else needs ``x`` (e.g. right after a Conv2d or Linear,
    whose backward does not read its output)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        x = check_float(as_array(x), "ReLU")
        if self.inplace and getattr(x.flags, "writeable", True):
            y = B.get().xp.maximum(x, 0, out=x)
        else:
            y = B.get().relu(x)
        self.ctx.y = y
        return y

    def backward(self, dy):
        return B.get().relu_backward(self.ctx.y, dy)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(_Activation):
    """``y = x if x > 0 else a·x``;  ``dL/dx = dL/dy ⊙ (1 if x > 0 else a)``."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        self.ctx.x = x = self._input(x)
        xp = B.get().xp
        return xp.where(x > 0, x, x * self.negative_slope)

    def backward(self, dy):
        x = self.ctx.x
        xp = B.get().xp
        return xp.where(x > 0, dy, dy * self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Activation):
    """``y = 1 / (1 + e^{-x})``;  ``dL/dx = dL/dy ⊙ y(1 - y)``."""

    def forward(self, x):
        y = self.ctx.y = sigmoid(self._input(x))
        return y

    def backward(self, dy):
        y = self.ctx.y
        return dy * y * (1 - y)


class Tanh(_Activation):
    """``y = tanh(x)``;  ``dL/dx = dL/dy ⊙ (1 - y²)`` via the backend's fused
    ``tanh_backward`` (one pass on the GPU)."""

    def forward(self, x):
        y = self.ctx.y = B.get().xp.tanh(self._input(x))
        return y

    def backward(self, dy):
        return B.get().tanh_backward(self.ctx.y, dy)


class Arctan(_Activation):
    """``y = arctan(x)``;  ``dL/dx = dL/dy / (1 + x²)``."""

    def forward(self, x):
        self.ctx.x = x = self._input(x)
        return B.get().xp.arctan(x)

    def backward(self, dy):
        x = self.ctx.x
        return dy / (1 + x * x)


class _AlongDim(_Activation):
    """A normalisation along ``dim`` (``None``: PyTorch's implicit choice, with its warning);
    ``forward`` saves the output ``y`` and the axis used."""

    _fn = None   # the function of (x, dim)

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        x = self._input(x)
        dim = self.ctx.dim = self.dim if self.dim is not None else _implicit_softmax_dim(x.ndim)
        y = self.ctx.y = type(self)._fn(x, dim)
        return y

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """``y_i = e^{x_i} / Σ_j e^{x_j}`` along ``dim`` (computed with the max subtracted);
    ``dL/dx = y ⊙ (dL/dy - Σ_j y_j dL/dy_j)``.  For classification prefer
    ``CrossEntropyLoss`` on logits, which fuses this with the loss.

    ``dim=None`` is PyTorch's deprecated implicit choice, with its warning: axis 0 for 0-, 1-
    and 3-D inputs, axis 1 otherwise.  Pass ``dim`` explicitly."""

    _fn = staticmethod(lambda x, dim: softmax(x, dim))

    def backward(self, dy):
        y = self.ctx.y
        return y * (dy - (dy * y).sum(axis=self.ctx.dim, keepdims=True))


class LogSoftmax(_AlongDim):
    """``y_i = x_i - log Σ_j e^{x_j}`` along ``dim`` (with the max subtracted);
    ``dL/dx = dL/dy - softmax(x) Σ_j dL/dy_j``, ``softmax(x) = e^y``.  Followed by
    ``NLLLoss`` it is ``CrossEntropyLoss``.  ``dim=None``: as :class:`Softmax`."""

    _fn = staticmethod(lambda x, dim: log_softmax(x, dim))

    def backward(self, dy):
        y = self.ctx.y
        return dy - B.get().xp.exp(y) * dy.sum(axis=self.ctx.dim, keepdims=True)


_GELU_C = math.sqrt(2 / math.pi)


class GELU(_Activation):
    r"""Gaussian error linear unit (PyTorch's GELU).  ``approximate="none"`` (exact)::

        y = x Φ(x),   Φ(x) = ½ (1 + erf(x/√2))       dy/dx = Φ(x) + x φ(x),  φ = e^{-x²/2}/√(2π)

    ``approximate="tanh"``, with ``u = √(2/π) (x + 0.044715 x³)`` and ``t = tanh(u)``::

        y = ½ x (1 + t)                               dy/dx = ½ (1 + t) + ½ x (1 - t²) du/dx

    The exact form evaluates ``Φ`` with :func:`nnx.nn.special.normal_cdf` (NumPy has no
    ``erf``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        self.ctx.x = x = self._input(x)
        xp = B.get().xp
        if self.approximate == "tanh":
            t = self.ctx.t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
            return 0.5 * x * (1 + t)
        cdf = self.ctx.cdf = normal_cdf(x)
        return x * cdf

    def backward(self, dy):
        x = self.ctx.x
        xp = B.get().xp
        if self.approximate == "tanh":
            t = self.ctx.t
            du = _GELU_C * (1 + 3 * 0.044715 * x * x)
            return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return dy * (self.ctx.cdf + x * pdf)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


def _implicit_softmax_dim(ndim: int) -> int:
    dim = 0 if ndim in (0, 1, 3) else 1
    warnings.warn(f"Softmax(dim=None) picks dim={dim} for a {ndim}-D input (PyTorch's "
                  f"deprecated implicit choice); pass dim explicitly", UserWarning, stacklevel=3)
    return dim


def sigmoid(x):
    """Numerically stable logistic function (no overflow for large |x|)."""
    xp = B.get().xp
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softmax(x, dim=-1):
    xp = B.get().xp
    e = xp.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def log_softmax(x, dim=-1):
    xp = B.get().xp
    z = x - x.max(axis=dim, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=dim, keepdims=True))
