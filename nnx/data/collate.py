"""Merge a list of samples into one batch: PyTorch's ``default_collate`` on NumPy arrays.

``default_collate(samples)`` looks at the first sample and recurses:

* arrays (NumPy, or the active backend's) -> ``stack(samples)``: a new leading batch axis;
* Python ``int`` -> ``int64`` array, ``float`` -> ``float64``, ``bool`` -> ``bool``; NumPy
  scalars keep their dtype;
* ``str``/``bytes`` -> the list unchanged;
* a mapping -> a dict with the same keys, each collated;
* a tuple (also a named tuple) -> a tuple of the collated fields: ``[(x0, y0), (x1, y1)]``
  becomes ``(stack([x0, x1]), array([y0, y1]))`` (PyTorch returns a *list* for plain tuples;
  nnx keeps the tuple);
* a list -> a list of the collated fields.

Samples of a tuple or list must all have the same length.
"""
from __future__ import annotations

import collections.abc
import numbers

import numpy as np


def _is_backend_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def default_collate(batch):
    """Stack a list of samples into a batch (see the module docstring for the rules)."""
    if not isinstance(batch, collections.abc.Sequence) or len(batch) == 0:
        raise TypeError("default_collate: expected a non-empty list of samples, got "
                        f"{type(batch).__name__}" + (" of length 0" if not batch else ""))
    elem = batch[0]
    if isinstance(elem, np.ndarray):
        _same_shape(batch)
        return np.stack(batch)
    if _is_backend_array(elem):
        import cupy
        _same_shape(batch)
        return cupy.stack(batch)
    if isinstance(elem, np.generic):           # NumPy scalar: keep its dtype
        return np.array(batch, dtype=elem.dtype)
    if isinstance(elem, bool):
        return np.array(batch, dtype=np.bool_)
    if isinstance(elem, numbers.Integral):
        return np.array(batch, dtype=np.int64)
    if isinstance(elem, numbers.Real):
        return np.array(batch, dtype=np.float64)
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, collections.abc.Mapping):
        return {k: default_collate([s[k] for s in batch]) for k in elem}
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(s) != size for s in batch):
            raise RuntimeError("default_collate: each sample of the batch should have the "
                               f"same number of fields; got lengths "
                               f"{sorted({len(s) for s in batch})}")
        fields = [default_collate(list(f)) for f in zip(*batch)]
        if isinstance(elem, tuple):
            return type(elem)(*fields) if hasattr(elem, "_fields") else tuple(fields)
        return fields
    raise TypeError(f"default_collate: cannot batch samples of type {type(elem).__name__} "
                    "(arrays, numbers, strings, dicts, tuples and lists can be); pass a "
                    "collate_fn")


def _same_shape(batch):
    shapes = {tuple(a.shape) for a in batch}
    if len(shapes) > 1:
        raise RuntimeError(f"default_collate: samples have different shapes {sorted(shapes)}; "
                           "stacking needs equal shapes (pad them, or pass a collate_fn)")


__all__ = ["default_collate"]
