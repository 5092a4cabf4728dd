"""Default floating dtype for new parameters (float32 unless changed)."""
from __future__ import annotations

import numpy as np

_default = np.dtype(np.float32)


def set_default_dtype(dtype) -> None:
    global _default
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dt}")
    _default = dt


def get_default_dtype() -> np.dtype:
    return _default


def resolve(dtype) -> np.dtype:
    return _default if dtype is None else np.dtype(dtype)
