"""Inverted dropout."""
from __future__ import annotations

from .. import backend as B
from .inputs import as_array, check_float
from .module import Module


class Dropout(Module):
    """Training: ``y = x ⊙ m / (1 - p)`` with ``m_i ~ Bernoulli(1 - p)`` drawn from the active
    backend's generator (``backend.random``); ``dL/dx = dL/dy ⊙ m / (1 - p)``.
    Evaluation (or ``p = 0``): ``y = x``, ``dL/dx = dL/dy``.  ``p = 1`` zeroes everything."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        x = check_float(as_array(x), "Dropout")
        if not self.training or self.p == 0.0:
            self.ctx.scale = None     # identity
            return x
        be = B.get()
        if self.p == 1.0:
            scale = be.xp.zeros_like(x)
        else:
            keep = be.random(x.shape, dtype=x.dtype) >= x.dtype.type(self.p)
            scale = keep * x.dtype.type(1.0 / (1.0 - self.p))   # mask/(1-p), x's dtype
        self.ctx.scale = scale        # each call draws (and keeps) its own mask
        return x * scale

    def backward(self, dy):
        scale = self.ctx.scale
        return dy if scale is None else dy * scale

    def extra_repr(self):
        return f"p={self.p}"
