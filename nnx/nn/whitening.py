r"""Patch-whitening initialisation of a convolution from the statistics of images.

Airbench's first layer (Jordan, 2024, after Page's and tysam-code's CIFAR-10 speed runs) is a
``k x k`` convolution without padding whose filters whiten the image patches.  With ``p`` the
``d = C·k·k`` values of one patch (all patches at stride 1 of the given images)::

    Σ = (1/n) Σ_patches p pᵀ                      (uncentred second moment, d x d)
    Σ = V Λ Vᵀ,    λ_1 ≥ λ_2 ≥ ... ≥ λ_d          (eigen-decomposition)
    w_i = v_i / √(λ_i + ε),    weight = [w_1 .. w_d, -w_1 .. -w_d]   (2d filters)

so the first ``d`` outputs have (uncentred) unit second moment and are uncorrelated, and the
last ``d`` are their negatives (the layer is followed by a GELU, which keeps both signs).

Eigenvectors are defined up to sign; LAPACK's choice varies between libraries, and a
flipped ``v_i`` only swaps output channels ``i`` and ``d + i``.  We fix the sign so that the
entry of largest magnitude of each ``v_i`` is positive, which makes the weights reproducible
on every backend.  Σ is accumulated and decomposed in float64 on the host (the published
script uses float32 patches; the eigenvectors of Σ are only accurate to about
``u·‖Σ‖ / gap``, so float64 keeps them well defined for close eigenvalues).
"""
from __future__ import annotations

import numpy as np

from .. import backend as B


def patch_covariance(images, kernel_size, chunk: int = 512):
    """``Σ = (1/n) Σ p pᵀ`` over all ``kernel_size`` patches (stride 1, no padding) of the
    ``(N, C, H, W)`` ``images``, in float64 (``d = C·kh·kw``, patch order ``(c, i, j)``)."""
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    x = B.get().to_numpy(images) if not isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        raise ValueError(f"patch_covariance expects images (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    if h < kh or w < kw or n == 0:
        raise ValueError(f"patch_covariance: {kh}x{kw} patches need at least one image of at "
                         f"least that size, got shape {x.shape}")
    d = c * kh * kw
    sigma = np.zeros((d, d))
    for start in range(0, n, chunk):      # bounded memory: chunk·(H-kh+1)(W-kw+1)·d values
        xb = np.asarray(x[start:start + chunk], dtype=np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(xb, (kh, kw), axis=(2, 3))
        patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)   # (N·oh·ow, C·kh·kw)
        sigma += patches.T @ patches
    return sigma / (n * (h - kh + 1) * (w - kw + 1))


def whitening_filters(images, kernel_size, eps: float = 5e-4):
    """The ``(2d, C, kh, kw)`` float64 filters ``[V/√(Λ+ε), -V/√(Λ+ε)]`` (see the module)."""
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    c = images.shape[1]
    eigenvalues, eigenvectors = np.linalg.eigh(patch_covariance(images, (kh, kw)))
    order = np.argsort(eigenvalues)[::-1]                 # descending
    lam, v = eigenvalues[order], eigenvectors[:, order]   # columns are eigenvectors
    peak = v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])]
    v = v * np.where(peak < 0, -1.0, 1.0)                 # largest entry positive
    w = (v / np.sqrt(lam + eps)).T.reshape(-1, c, kh, kw)
    return np.concatenate([w, -w])


def whitening_init_(conv, images, eps: float = 5e-4):
    """Fill ``conv.weight`` (``(2·C·kh·kw, C, kh, kw)``) with :func:`whitening_filters` of
    ``images``; the bias is left alone.  Returns ``conv``."""
    weight = conv.weight.data
    out, c, kh, kw = weight.shape
    if out != 2 * c * kh * kw or images.ndim != 4 or images.shape[1] != c:
        raise ValueError(f"whitening_init_: a weight of shape {tuple(weight.shape)} needs "
                         f"{2 * c * kh * kw} output channels and images with {c} channels "
                         f"(got images of shape {tuple(images.shape)})")
    filters = whitening_filters(images, (kh, kw), eps)
    weight[...] = B.get().asarray(filters.astype(weight.dtype))
    return conv


__all__ = ["patch_covariance", "whitening_filters", "whitening_init_"]
