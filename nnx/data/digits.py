"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), an offline data set
for quick runs: ``pip install nnx[digits]`` (scikit-learn) provides it."""
from __future__ import annotations

import numpy as np

from .errors import DataError

DIGITS_CLASSES = tuple(str(i) for i in range(10))


def load_digits(dtype="uint8", test_size: int = 360, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)`` with images of shape ``(N, 1, 8, 8)``.

    ``dtype="uint8"`` scales the 0..16 grey levels to 0..255 (``round(v*255/16)``), so the
    same :class:`~nnx.data.Normalize` as for CIFAR-10 applies; ``"float32"``/``"float64"``
    gives ``v/16`` in [0, 1].  The split is a fixed permutation drawn from
    ``numpy.random.default_rng(seed)``: 1437 training and 360 test images by default, the
    same on every machine.  Labels are ``int64``.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install 'nnx[digits]' "
                        "(or pip install scikit-learn)") from None
    bunch = _sk_load()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = len(labels)
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")
    dt = np.dtype(dtype)
    if dt == np.uint8:
        x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    elif dt.kind == "f":
        x = (images / 16.0).astype(dt)
    else:
        raise ValueError(f"dtype must be uint8, float32 or float64, got {dt}")
    x = x[:, None, :, :]
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    return (np.ascontiguousarray(x[train]), labels[train],
            np.ascontiguousarray(x[test]), labels[test])


__all__ = ["load_digits", "DIGITS_CLASSES"]
