"""Residual connections and parallel branches: composites whose backward is the tape's."""
from __future__ import annotations

from .. import backend as B
from . import functional as F
from .container import Identity
from .module import Module


class Add(Module):
    """Sum of parallel branches: ``y = Σ_k f_k(x)``; ``dL/dx = Σ_k J_kᵀ dL/dy`` (each branch
    receives the same upstream gradient, since ∂y/∂f_k = I)."""

    def __init__(self, *branches):
        super().__init__()
        if not branches:
            raise ValueError("Add needs at least one branch")
        for i, b in enumerate(branches):
            self.add_module(str(i), b)

    def forward(self, x):
        out = None
        for b in self._modules.values():
            y = b(x)
            if out is None:
                out = y
            else:
                _check_same_shape(self, out, y)
                out = F.add(out, y)
        return out


class Residual(Add):
    """``y = body(x) + shortcut(x)`` (``shortcut`` is the identity by default);
    ``dL/dx = body.backward(dL/dy) + shortcut.backward(dL/dy)`` (from the tape).

    ``relu=True``: ``y = max(body(x) + shortcut(x), 0)`` (a ResNet block's output) in one
    pass with one output buffer; both branches then receive ``δ = dL/dy · [y > 0]``."""

    def __init__(self, body, shortcut=None, relu=False):
        Module.__init__(self)
        self.body = body
        self.shortcut = Identity() if shortcut is None else shortcut
        self.relu = bool(relu)

    def forward(self, x):
        if not self.relu:
            return super().forward(x)
        a, b = self.body(x), self.shortcut(x)
        _check_same_shape(self, a, b)
        return _AddReLU.apply(a, b)

    def extra_repr(self):
        return "relu=True" if self.relu else ""


class _AddReLU(F.Function):
    """``y = max(a + b, 0)``;  ``da = db = δ·[y > 0]``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.y = y = B.get().add_relu(a, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        g = B.get().relu_backward(ctx.y, dy)
        return g, g


def _check_same_shape(layer, a, b):
    if a.shape != b.shape:
        raise ValueError(f"{type(layer).__name__}: branch outputs have different shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
