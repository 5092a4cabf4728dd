"""``Sequential`` and ``Identity``.  Sequential is an ordinary composite: its backward is the
tape's (``Module.backward``), including ``backward(dy, input_grad=False)``."""
from __future__ import annotations

from .activation import ReLU
from .module import Module
from .pooling import MaxPool2d


class Sequential(Module):
    """``y = f_K(... f_1(f_0(x)))``; backward (recorded by the tape) applies the children's
    backward in reverse, so ``dL/dx = J_0ᵀ J_1ᵀ ... J_Kᵀ dL/dy`` (the seeds' recursive chain
    rule).  ``backward(dy, input_grad=False)`` skips ``dL/dx`` (see :meth:`Module.backward`).

    One exact reordering: a ``ReLU`` directly followed by a ``MaxPool2d`` runs *after* it.
    ReLU is monotone, so ``maxpool(relu(x)) = relu(maxpool(x))`` bit for bit, and the
    gradients agree too: both send ``dL/dy`` to the window's first maximum when it is
    positive, and nowhere otherwise.  The ReLU then touches ``1/(KH·KW)`` of the elements.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _execution_order(self):
        mods = list(self._modules.values())
        for i in range(len(mods) - 1):
            if type(mods[i]) is ReLU and isinstance(mods[i + 1], MaxPool2d):
                mods[i], mods[i + 1] = mods[i + 1], mods[i]
        return mods

    def forward(self, x):
        for m in self._execution_order():
            x = m(x)
        return x


class Identity(Module):
    """``y = x``; ``dL/dx = dL/dy``."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
