"""Backend registry: pick the array backend with ``NNX_BACKEND=cpu|cuda`` or ``use(name)``.

>>> import nnx
>>> nnx.backend.get().name
'cpu'
"""
from __future__ import annotations

import os

from .base import Backend
from .errors import BackendMismatchError, BackendUnavailableError

_FACTORIES = {}
_INSTANCES: dict[str, Backend] = {}
_active: Backend | None = None


def register(name: str, factory) -> None:
    """Register a backend factory (called lazily the first time ``name`` is used)."""
    _FACTORIES[name] = factory


def _numpy_factory():
    from .numpy_backend import NumpyBackend
    return NumpyBackend()


def _cupy_factory():
    from .cupy_backend import CupyBackend
    return CupyBackend()


register("cpu", _numpy_factory)
register("numpy", _numpy_factory)
register("cuda", _cupy_factory)
register("cupy", _cupy_factory)


def available() -> list[str]:
    """Names of the registered backends (whether or not they can run here)."""
    return sorted(_FACTORIES)


def create(name: str) -> Backend:
    """Return the (cached) backend called ``name`` without making it active."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; choose one of {available()}")
    canonical = {"numpy": "cpu", "cupy": "cuda"}.get(name, name)
    if canonical not in _INSTANCES:
        _INSTANCES[canonical] = _FACTORIES[canonical]()
    return _INSTANCES[canonical]


def use(name: str) -> Backend:
    """Make ``name`` the active backend and return it."""
    global _active
    _active = create(name)
    return _active


def get() -> Backend:
    """The active backend (``NNX_BACKEND`` at import, default ``cpu``)."""
    if _active is None:
        use(os.environ.get("NNX_BACKEND", "cpu").strip().lower() or "cpu")
    return _active


def xp():
    """Shortcut for ``get().xp``."""
    return get().xp


__all__ = ["Backend", "BackendUnavailableError", "BackendMismatchError", "register",
           "available", "create", "use", "get", "xp"]
