"""Gradient clipping (in place, on the active backend)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend as B
from ..nn.parameter import Parameter


def _grads(parameters):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> np.float64:
    r"""Scale all gradients together so that their joint norm is at most ``max_norm``::

        total = ( Σ_p ||g_p||_q^q )^{1/q}      (q = norm_type; q = inf: max_p max|g_p|)
        g_p  *= min(1, max_norm / (total + 1e-6))

    Returns ``total`` (before clipping) as a host ``np.float64`` (a Python float with
    ``.item()``; PyTorch returns a 0-d tensor).  A non-finite ``total`` raises with
    ``error_if_nonfinite``; otherwise, as in PyTorch, ``nan`` makes every gradient ``nan``
    and ``inf`` zeroes the finite entries.
    """
    grads = _grads(parameters)
    if not grads:
        return np.float64(0.0)
    xp = B.get().xp
    q = float(norm_type)
    # one reduction per gradient on the device, then a single host transfer
    if math.isinf(q):
        per = xp.stack([xp.abs(g).max().astype(xp.float64) for g in grads])
        total = float(per.max())
    else:
        if q == 2.0:
            per = xp.stack([(g.astype(xp.float64) ** 2).sum() for g in grads])
        else:
            per = xp.stack([(xp.abs(g.astype(xp.float64)) ** q).sum() for g in grads])
        total = float(per.sum()) ** (1.0 / q)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"non-finite ({total}); set error_if_nonfinite=False to ignore")
    coef = float(max_norm) / (total + 1e-6)
    if not coef >= 1.0:          # also when coef is nan (PyTorch's clamp keeps nan)
        with np.errstate(invalid="ignore"):     # inf * 0 = nan, as in PyTorch
            for g in grads:
                g *= g.dtype.type(coef)
    return np.float64(total)


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place."""
    xp = B.get().xp
    c = float(clip_value)
    for g in _grads(parameters):
        xp.clip(g, -c, c, out=g)
