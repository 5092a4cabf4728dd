"""``ModuleList`` and ``ModuleDict``: containers that register their modules (so
``parameters()``, ``state_dict()``, ``to()`` and ``train()`` reach them) but, as in PyTorch,
have no ``forward`` of their own: the owning module's ``forward`` calls their entries."""
from __future__ import annotations

import operator
from collections import abc

from .module import Module


class ModuleList(Module):
    """A list of modules, registered under the names ``"0"``, ``"1"``, ... (PyTorch's
    ``state_dict`` keys, e.g. ``blocks.2.weight``)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx) -> int:
        idx = operator.index(idx)
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for a ModuleList of length {n}")
        return idx % n

    def _renumber(self, mods) -> None:
        for name in list(self._modules):
            delattr(self, name)
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return self._modules[str(self._index(idx))]

    def __setitem__(self, idx, module) -> None:
        self.add_module(str(self._index(idx)), module)

    def __delitem__(self, idx) -> None:
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            del mods[idx]
        else:
            del mods[self._index(idx)]
        self._renumber(mods)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        return type(self)([*self, *other])

    def append(self, module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        if not isinstance(modules, abc.Iterable):
            raise TypeError(f"ModuleList.extend should be called with an iterable of "
                            f"modules, got {type(modules).__name__}")
        for m in list(modules):
            self.append(m)
        return self

    def insert(self, index: int, module) -> None:
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._renumber(mods)

    def pop(self, idx=-1):
        module = self[idx]
        del self[idx]
        return module


class ModuleDict(Module):
    """An ordered dict of modules, registered under their keys (insertion order)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        if key not in self._modules:
            raise KeyError(key)
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def clear(self) -> None:
        for key in list(self._modules):
            delattr(self, key)

    def pop(self, key: str) -> Module:
        module = self[key]
        del self[key]
        return module

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules) -> None:
        """Add ``modules``: a mapping, or an iterable of ``(key, module)`` pairs."""
        if isinstance(modules, (abc.Mapping, ModuleDict)):
            pairs = modules.items()
        elif isinstance(modules, abc.Iterable):
            pairs = []
            for j, pair in enumerate(modules):
                if not isinstance(pair, abc.Iterable) or isinstance(pair, (str, Module)) \
                        or len(pair := tuple(pair)) != 2:
                    raise ValueError(f"ModuleDict.update: element #{j} should be a "
                                     f"(key, module) pair")
                pairs.append(pair)
        else:
            raise TypeError(f"ModuleDict.update should be called with a mapping or an "
                            f"iterable of (key, module) pairs, got {type(modules).__name__}")
        for key, module in pairs:
            self[key] = module
