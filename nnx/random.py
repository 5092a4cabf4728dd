"""Seeding.  Parameter initialisation draws from one host-side NumPy generator, so that the
same seed gives the same weights on every backend; dropout and augmentation draw from the
active backend's own generator."""
from __future__ import annotations

import numpy as np

_host_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the initialisation generator and the active backend's generator."""
    global _host_rng
    from . import backend
    _host_rng = np.random.default_rng(seed)
    backend.get().manual_seed(seed)


def host_rng() -> np.random.Generator:
    """The generator used for parameter initialisation (host memory)."""
    return _host_rng


def get_rng_state() -> dict:
    from . import backend
    return {"host": _host_rng.bit_generator.state, "backend": backend.get().rng_state()}


def set_rng_state(state: dict) -> None:
    from . import backend
    _host_rng.bit_generator.state = state["host"]
    if "backend" in state:
        backend.get().set_rng_state(state["backend"])
