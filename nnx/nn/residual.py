"""Residual connections and parallel branches: composites whose backward is the tape's."""
from __future__ import annotations

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
                if y.shape != out.shape:
                    raise ValueError(f"{type(self).__name__}: branch outputs have different "
                                     f"shapes {tuple(out.shape)} and {tuple(y.shape)}")
                out = F.add(out, y)
        return out


class Residual(Add):
    """``y = body(x) + shortcut(x)`` (``shortcut`` is the identity by default);
    ``dL/dx = body.backward(dL/dy) + shortcut.backward(dL/dy)`` (from the tape)."""

    def __init__(self, body, shortcut=None):
        Module.__init__(self)
        self.body = body
        self.shortcut = Identity() if shortcut is None else shortcut
