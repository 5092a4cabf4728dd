"""Containers whose backward composes their children's backward automatically."""
from __future__ import annotations

from .module import Module


class Sequential(Module):
    """``y = f_K(... f_1(f_0(x)))``; backward applies the children's backward in reverse,
    so ``dL/dx = J_0ᵀ J_1ᵀ ... J_Kᵀ dL/dy`` (the seeds' recursive chain rule)."""

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

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy


class Identity(Module):
    """``y = x``; ``dL/dx = dL/dy``."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
