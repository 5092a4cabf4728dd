"""Small helpers shared by layers: input validation and conversion to the active backend."""
from __future__ import annotations

import numpy as np

from .. import backend as B


def as_input(x, dtype, layer: str):
    """Move ``x`` to the active backend and check its dtype against the layer's ``dtype``.

    NumPy input is transferred; a float array of another precision is an error (silent
    promotion would hide a float64/float32 mix-up)."""
    be = B.get()
    if not be.is_native(x):
        x = be.asarray(x)
    if x.dtype != dtype:
        if x.dtype.kind in "iub":
            raise TypeError(f"{layer} expects floating-point input of dtype {np.dtype(dtype)}, "
                            f"got {x.dtype}; convert with x.astype('{np.dtype(dtype)}')")
        raise TypeError(f"{layer} has {np.dtype(dtype)} parameters but got {x.dtype} input; "
                        f"convert the input or the model (model.to(dtype=...))")
    return x


def as_array(x):
    """Move ``x`` to the active backend without dtype checks (parameter-free layers)."""
    be = B.get()
    return x if be.is_native(x) else be.asarray(x)


def check_float(x, layer: str):
    if x.dtype.kind != "f":
        raise TypeError(f"{layer} expects floating-point input, got {x.dtype}")
    return x


def pair(v, name: str) -> tuple:
    """An int or a 2-sequence as a pair of ints (kernel sizes, strides, paddings)."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t
