"""Layer normalisation over the trailing dimensions of each sample (PyTorch's LayerNorm)."""
from __future__ import annotations

from .. import backend as B
from .. import dtypes, init
from .inputs import as_array, as_input, check_float
from .module import Module
from .parameter import Parameter


class LayerNorm(Module):
    r"""Normalise each sample over its last ``D = len(normalized_shape)`` dimensions (the
    ``m`` values of one "row"), then scale and shift element-wise::

        μ = mean(x),  σ² = mean((x - μ)²)    (biased)       s = 1/√(σ² + ε)
        x̂ = (x - μ)·s,    y = γ ⊙ x̂ + β                     (γ, β of shape normalized_shape)

    Backward with ``g = dL/dy`` and ``ĝ = γ ⊙ g``, sums over each row (and the leading
    dimensions for the parameters)::

        dL/dx = s · (ĝ - mean(ĝ) - x̂ · mean(ĝ ⊙ x̂))
        dL/dγ = Σ_rows g ⊙ x̂          dL/dβ = Σ_rows g

    ``elementwise_affine=False`` has no ``γ``, ``β``; ``bias=False`` no ``β`` (PyTorch ≥ 2.1).
    Initialisation: ``γ = 1``, ``β = 0``.  Unlike batch norm, training and evaluation
    compute the same thing (no running statistics)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(n) for n in normalized_shape)
        if not self.normalized_shape or min(self.normalized_shape) < 1:
            raise ValueError(f"LayerNorm: normalized_shape must be non-empty and positive, "
                             f"got {normalized_shape!r}")
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        xp = B.get().xp
        dt = dtypes.resolve(dtype)
        self.weight = self.bias = None
        if self.elementwise_affine:
            self.weight = Parameter(xp.empty(self.normalized_shape, dtype=dt))
            init.ones_(self.weight)
            if bias:
                self.bias = Parameter(xp.empty(self.normalized_shape, dtype=dt))
                init.zeros_(self.bias)

    def _axes(self, x):
        d = len(self.normalized_shape)
        if x.ndim < d or tuple(x.shape[x.ndim - d:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm{self.normalized_shape} expects an input whose last "
                             f"{d} dimension(s) are {self.normalized_shape}, got shape "
                             f"{tuple(x.shape)}")
        return tuple(range(x.ndim - d, x.ndim))

    def forward(self, x):
        if self.weight is not None:
            x = as_input(x, self.weight.data.dtype, "LayerNorm")
        else:
            x = check_float(as_array(x), "LayerNorm")
        self.ctx.axes = axes = self._axes(x)
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y, self.ctx.saved = layer_norm_forward(x, axes, self.eps, w, b)
        return y

    def backward(self, dy):
        w = None if self.weight is None else self.weight.data
        dx, dw, db = layer_norm_backward(dy, self.ctx.saved, self.ctx.axes, w,
                                         self.bias is not None)
        if dw is not None:
            self.weight.accumulate(dw)
        if db is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        if self.elementwise_affine and self.bias is None:
            s += ", bias=False"
        return s


def layer_norm_forward(x, axes, eps, weight=None, bias=None):
    """``(y, saved)`` of :class:`LayerNorm` over ``axes`` (the trailing ones)."""
    xp = B.get().xp
    xc = x - x.mean(axis=axes, keepdims=True)
    s = 1 / xp.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    xhat = xc * s
    if weight is None:
        y = xhat
    else:
        y = xhat * weight
        if bias is not None:
            y += bias
    return y, (xhat, s)


def layer_norm_backward(dy, saved, axes, weight=None, has_bias=False):
    """``(dx, dW or None, db or None)`` of :func:`layer_norm_forward` for ``dy``."""
    xhat, s = saved
    dw = db = None
    if weight is not None:
        rows = tuple(range(dy.ndim - len(axes)))          # the leading dimensions
        dw = (dy * xhat).sum(axis=rows)
        db = dy.sum(axis=rows) if has_bias else None
        dy = dy * weight
    dx = s * (dy - dy.mean(axis=axes, keepdims=True)
              - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    return dx, dw, db
