"""A trainable array and its accumulated gradient."""
from __future__ import annotations

from .. import backend as B


class Parameter:
    """``data`` holds the value (an array of the active backend); ``grad`` is ``None`` until
    a backward pass accumulates into it (``grad += dL/d data``)."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        self.data = B.get().asarray(data)
        self.grad = None
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        """Freeze (``False``) or unfreeze: a frozen parameter accumulates no gradient."""
        self.requires_grad = bool(requires_grad)
        return self

    def accumulate(self, g) -> None:
        """Add ``g`` to ``grad`` (allocating it on first use)."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad = g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"
