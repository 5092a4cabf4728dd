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

    def accumulate(self, g, owned: bool = False) -> None:
        """Add ``g`` to ``grad`` (``grad = g`` on first use).

        The first gradient is copied, because ``grad`` is later updated in place (the next
        accumulation, ``zero_grad(set_to_none=False)``, optimizers) and ``g`` may be read or
        written by someone else.  ``owned=True`` says the caller hands ``g`` over: a fresh
        array it computed for this call and keeps no other reference to (e.g. Linear's
        ``δᵀ x``).  A C-contiguous owned ``g`` of the parameter's dtype and shape then
        becomes ``grad`` itself: no copy (one kernel launch per parameter and step less on
        a GPU).  Never pass ``owned=True`` for an array that is, or is a view of, anything
        another consumer holds (an upstream gradient, a saved input, a reused buffer)."""
        if not self.requires_grad:
            return
        if self.grad is None:
            if (owned and g.dtype == self.data.dtype and g.shape == self.data.shape
                    and g.flags.c_contiguous):
                self.grad = g
            else:
                self.grad = g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"
