"""Whole-batch image transforms on the active backend (NumPy or CuPy arrays, NCHW).

Each transform maps a batch ``x (N, C, H, W)`` to a batch, with array operations of the
backend (``xp``) and random numbers from the backend's generator, so augmentation runs on
the GPU when the ``cuda`` backend is active and is reproducible from ``nnx.manual_seed`` /
``nnx.random.get_rng_state``.  Put the random transforms first (they work on ``uint8``, a
quarter of the memory traffic) and :class:`Normalize` last.
"""
from __future__ import annotations

import numpy as np

from .. import backend as B


def _check_batch(x, name):
    if x.ndim != 4:
        raise ValueError(f"{name} expects a batch of images (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")


class Compose:
    """``Compose([t1, t2])(x) == t2(t1(x))``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class Normalize:
    """Per-channel ``y[:, c] = (x[:, c] / s - mean[c]) / std[c]`` as ``dtype`` (float32),
    with ``s = 255`` for ``uint8`` input and ``s = 1`` for floating input (so ``mean``/``std``
    are on the [0, 1] scale, as in torchvision)."""

    def __init__(self, mean, std, dtype="float32"):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean has {self.mean.size} channels, std has "
                             f"{self.std.size}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")
        self.dtype = np.dtype(dtype)

    def __call__(self, x):
        _check_batch(x, "Normalize")
        if x.shape[1] != self.mean.size:
            raise ValueError(f"Normalize has {self.mean.size} channel statistics but the batch "
                             f"has {x.shape[1]} channels (shape {tuple(x.shape)})")
        be = B.get()
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        # y = x * a + b with a = 1/(s*std), b = -mean/std: one fused multiply-add per pixel.
        a = be.asarray((1.0 / (scale * self.std)).reshape(1, -1, 1, 1), dtype=self.dtype)
        b = be.asarray((-self.mean / self.std).reshape(1, -1, 1, 1), dtype=self.dtype)
        return x.astype(self.dtype) * a + b

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Zero-pad each side by ``padding`` then cut a ``size x size`` window at an offset drawn
    uniformly per image (``randint(0, H + 2p - size + 1)`` per axis)."""

    def __init__(self, size, padding: int = 0):
        self.size = (size, size) if np.isscalar(size) else tuple(size)
        self.padding = int(padding)

    def __call__(self, x):
        _check_batch(x, "RandomCrop")
        be = B.get()
        xp = be.xp
        p = self.padding
        n, c, h, w = x.shape
        th, tw = self.size
        if h + 2 * p < th or w + 2 * p < tw:
            raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image "
                             f"{(h + 2 * p, w + 2 * p)}")
        if p:
            x = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        off = be.randint(0, h + 2 * p - th + 1, (n,)), be.randint(0, w + 2 * p - tw + 1, (n,))
        rows = (off[0][:, None] + xp.arange(th))[:, None, :, None]     # (N, 1, th, 1)
        cols = (off[1][:, None] + xp.arange(tw))[:, None, None, :]     # (N, 1, 1, tw)
        return x[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                 rows, cols]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right (``x[..., ::-1]``) with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x):
        _check_batch(x, "RandomHorizontalFlip")
        be = B.get()
        flip = be.random((x.shape[0],)) < self.p
        return be.xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]
