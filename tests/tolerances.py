"""Derived tolerances for comparing two computations of the same quantity.

Bit-identity holds only where nnx fixes the order of every floating-point operation (the same
code path run twice, our C kernels at a fixed thread split, copies and round trips).  Where a
BLAS call, another batch chunking, another SIMD width or another library (PyTorch, a new NumPy)
is involved, the order of the additions changes, and the results may differ in the last bits.
How much is bounded, not guessed:

A sum of ``n`` floating-point terms evaluated in any order is within ``γ_n · Σ|t_i|`` of the
exact sum, ``γ_n = n·u / (1 - n·u)`` with the unit roundoff ``u = eps/2`` (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., §3.1 and eq. (4.4)); a fused multiply-add only
removes roundings.  Two evaluations in different orders therefore differ by at most
``2 · γ_n · Σ|t_i|`` element by element: :func:`reorder_bound`.  For a matrix product
``A @ B`` the magnitudes are ``|A| @ |B|`` (:func:`matmul_abs`).

Through a network, errors of one layer's sums feed the next; :func:`network_rtol` is the
first-order bound (``2 · depth · γ_{n_max}``) used relative to the largest magnitude of the
compared quantity, with ``depth`` the number of reductions on the longest path and ``n_max``
the longest reduction (see its docstring for what it assumes).
"""
from __future__ import annotations

import numpy as np


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, dtype) -> float:
    """``γ_n = n u / (1 - n u)``: the relative error bound of an ``n``-term sum."""
    nu = int(n) * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"γ_n is unbounded for n={n} in {np.dtype(dtype).name}")
    return nu / (1 - nu)


def reorder_bound(n: int, abs_sum, dtype):
    """Largest difference between two orders of summing ``n`` terms whose absolute values
    add up to ``abs_sum`` (scalar or array, element by element)."""
    return 2 * gamma(n, dtype) * np.asarray(abs_sum, dtype=np.float64)


def matmul_abs(a, b) -> np.ndarray:
    """``|a| @ |b|`` in float64: the per-element ``Σ|t_i|`` of ``a @ b``."""
    return np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64))


def assert_within(got, want, bound, err_msg: str = "") -> None:
    """``|got - want| <= bound`` element by element (``bound`` scalar or array); the failure
    message names the worst element and its ratio to the bound."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{err_msg}: shapes {got.shape} and {want.shape}"
    diff = np.abs(got - want)
    bound = np.broadcast_to(np.asarray(bound, np.float64), diff.shape)
    bad = ~(diff <= bound)                    # NaN differences fail too
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, diff / np.maximum(bound, 1e-300),
                                                    -1))), diff.shape)
        raise AssertionError(f"{err_msg}: {int(bad.sum())} of {diff.size} elements differ by "
                             f"more than the derived bound; worst at {i}: |{got[i]} - "
                             f"{want[i]}| = {diff[i]:.3g} > {bound[i]:.3g}")


def network_reductions(model, batch: int, positions: int) -> tuple[int, int]:
    """``(n_max, depth)`` of the sums in one forward + backward of ``model``.

    Each convolution (``Conv2d``, ``Conv1d``, ``ConvTranspose2d``) and ``Linear`` sums ``fan_in`` terms forward and ``fan_out`` terms for
    ``dL/dx``; its weight gradient sums over the batch and the output positions, at most
    ``batch * positions`` (``positions``: the largest spatial size of any activation, the
    input's for networks that never upsample).  ``depth`` counts two reductions (forward and
    backward) per such layer, plus two for the loss's sums over classes and batch.
    """
    from nnx.nn import Conv2d, ConvTranspose2d, Linear
    n_max, depth = 1, 2
    for m in model.modules():
        if isinstance(m, (Conv2d, ConvTranspose2d)):   # (Conv1d is a Conv2d)
            taps = int(np.prod(m.kernel_size))
            fan_in = m.in_channels // m.groups * taps
            fan_out = m.out_channels // m.groups * taps
        elif isinstance(m, Linear):
            fan_in, fan_out = m.in_features, m.out_features
        else:
            continue
        n_max = max(n_max, fan_in, fan_out, batch * positions)
        depth += 2
    return n_max, depth


def network_rtol(model, batch: int, positions: int, dtype) -> float:
    """First-order bound, relative to the largest magnitude of the compared quantity, on how
    far two evaluations of a network's outputs or gradients can drift apart when only the
    order of summation changes: ``2 · depth · γ_{n_max}`` (:func:`network_reductions`).

    It assumes each sum's ``Σ|t_i|`` is no larger than the largest magnitude of the quantity
    at the end (no catastrophic growth through the layers), which holds for the small,
    randomly initialised test networks it is used on; single products are checked against
    the rigorous element-wise :func:`reorder_bound` instead.
    """
    n_max, depth = network_reductions(model, batch, positions)
    return 2 * depth * gamma(n_max, dtype)


def windows_per_input(kernel: int, stride: int) -> int:
    """Most pooling windows (square ``kernel``, ``stride``) that contain one input element:
    ``ceil(kernel / stride)`` per dimension; a pooling backward sums at most that many terms."""
    per_dim = -(-int(kernel) // int(stride))
    return per_dim * per_dim
