"""Reference (array-module) implementation of the fused LSTM and GRU cell operations.

Pure element-wise math on the array module of the inputs (NumPy here; the same code runs on
CuPy arrays, which makes it a convenient fallback/oracle for the CUDA kernels).  Nothing is
promoted: float32 in gives float32 out.  Gate orders follow PyTorch (see ``base.py``):
LSTM ``(i, f, g, o)``, GRU ``(r, z, n)``.

``saved`` objects are tuples of arrays that only these functions interpret.
"""
from __future__ import annotations

import numpy as np


def _xp(a):
    """The array module of ``a`` (CuPy arrays are accepted so this can serve as a fallback)."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def _sigmoid(xp, x):
    """Stable logistic: never evaluates ``exp`` of a positive number, so no overflow."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------------------------- LSTM
def lstm_cell_forward(gates, c_prev):
    """``gates (N,4H)`` = pre-activations (i, f, g, o); ``c_prev (N,H)``.

    ``i,f,o = σ(·)``, ``g = tanh(·)``, ``c = f⊙c_prev + i⊙g``, ``h = o⊙tanh(c)``.
    Returns ``(h, c, saved)`` with ``saved = (i, f, g, o, c_prev, tanh(c))``.
    """
    xp = _xp(gates)
    H = gates.shape[1] // 4
    sg = _sigmoid(xp, gates[:, :2 * H])
    i, f = sg[:, :H], sg[:, H:]
    g = xp.tanh(gates[:, 2 * H:3 * H])
    o = _sigmoid(xp, gates[:, 3 * H:])
    c = f * c_prev + i * g
    tc = xp.tanh(c)
    h = o * tc
    return h, c, (i, f, g, o, c_prev, tc)


def lstm_cell_backward(dh, dc, saved):
    """Back through one LSTM cell.  With ``δc = dc + dh⊙o⊙(1 - tanh²c)``::

        d i = δc⊙g⊙i(1-i)     d f = δc⊙c_prev⊙f(1-f)
        d g = δc⊙i⊙(1-g²)     d o = dh⊙tanh(c)⊙o(1-o)     dc_prev = δc⊙f

    Returns ``(dgates (N,4H), dc_prev (N,H))``.  ``dh`` or ``dc`` may be ``None`` (zero).
    """
    i, f, g, o, c_prev, tc = saved
    xp = _xp(i)
    if dh is None:
        dh = xp.zeros_like(tc)
    dcell = dh * o * (1 - tc * tc)
    if dc is not None:
        dcell += dc
    N, H = tc.shape
    dgates = xp.empty((N, 4 * H), dtype=tc.dtype)
    dgates[:, :H] = dcell * g * i * (1 - i)
    dgates[:, H:2 * H] = dcell * c_prev * f * (1 - f)
    dgates[:, 2 * H:3 * H] = dcell * i * (1 - g * g)
    dgates[:, 3 * H:] = dh * tc * o * (1 - o)
    return dgates, dcell * f


# ---------------------------------------------------------------------------------- GRU
def gru_cell_forward(gi, gh, h_prev):
    """``gi = x W_ih^T + b_ih``, ``gh = h_prev W_hh^T + b_hh`` (both ``(N,3H)``, order r,z,n).

    ``r = σ(gi_r + gh_r)``, ``z = σ(gi_z + gh_z)``, ``n = tanh(gi_n + r⊙gh_n)``,
    ``h = (1-z)⊙n + z⊙h_prev``.  Returns ``(h, saved)``, ``saved = (r, z, n, gh_n, h_prev)``.
    """
    xp = _xp(gi)
    H = gi.shape[1] // 3
    rz = _sigmoid(xp, gi[:, :2 * H] + gh[:, :2 * H])
    r, z = rz[:, :H], rz[:, H:]
    gh_n = gh[:, 2 * H:]
    n = xp.tanh(gi[:, 2 * H:] + r * gh_n)
    h = n + z * (h_prev - n)
    return h, (r, z, n, gh_n, h_prev)


def gru_cell_backward(dh, saved):
    """Back through one GRU cell.  With ``a_n = dh⊙(1-z)⊙(1-n²)``::

        dgi_r = dgh_r = a_n⊙gh_n⊙r(1-r)
        dgi_z = dgh_z = dh⊙(h_prev - n)⊙z(1-z)
        dgi_n = a_n,   dgh_n = a_n⊙r,   dh_prev(direct) = dh⊙z

    Returns ``(dgi, dgh, dh_prev_direct)``; the caller adds ``dgh @ W_hh`` to ``dh_prev``.
    """
    r, z, n, gh_n, h_prev = saved
    xp = _xp(r)
    N, H = n.shape
    an = dh * (1 - z) * (1 - n * n)
    dgi = xp.empty((N, 3 * H), dtype=n.dtype)
    dgi[:, :H] = an * gh_n * r * (1 - r)
    dgi[:, H:2 * H] = dh * (h_prev - n) * z * (1 - z)
    dgi[:, 2 * H:] = an
    dgh = dgi.copy()
    dgh[:, 2 * H:] *= r
    return dgi, dgh, dh * z
