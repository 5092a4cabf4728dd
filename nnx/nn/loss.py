"""Loss functions.  ``loss = crit(pred, target)`` returns a 0-d array of the active backend
(``reduction="mean"|"sum"``) or the per-element losses (``"none"``); ``crit.backward()``
returns ``dL/dpred`` (optionally scaled by an upstream gradient)."""
from __future__ import annotations

import numpy as np

from .. import backend as B
from .activation import sigmoid
from .inputs import as_array, check_float
from .module import Module

_REDUCTIONS = ("mean", "sum", "none")


class _Loss(Module):
    # keyword-only: PyTorch's positional slots hold other things (CrossEntropyLoss(weight),
    # MSELoss(size_average)), so a positional argument must not land in ``reduction``
    def __init__(self, *, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def _pair(self, pred, target):
        name = type(self).__name__
        pred = check_float(as_array(pred), name)
        target = as_array(target)
        if target.shape != pred.shape:
            raise ValueError(f"{name}: prediction shape {tuple(pred.shape)} and target shape "
                             f"{tuple(target.shape)} differ")
        return pred, target.astype(pred.dtype, copy=False)

    def _reduce(self, per_elem):
        if self.reduction == "mean":
            return _zero_d(per_elem.mean())
        if self.reduction == "sum":
            return _zero_d(per_elem.sum())
        return per_elem

    def _scale(self, n, grad):
        """Upstream gradient for each element: grad/n for a mean, grad for a sum."""
        return grad / n if self.reduction == "mean" else grad

    def _saved(self):
        return self.ctx.saved


class MSELoss(_Loss):
    """``L = (1/N) Σ (ŷ - y)²`` (mean over all elements);  ``dL/dŷ = (2/N)(ŷ - y)``."""

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        diff = pred - target
        self.ctx.saved = diff
        return self._reduce(diff * diff)

    def backward(self, grad=1.0):
        diff = self._saved()
        return 2 * diff * self._scale(diff.size, _grad(grad, diff))


class L1Loss(_Loss):
    """``L = (1/N) Σ |ŷ - y|``;  ``dL/dŷ = sign(ŷ - y)/N`` (0 where ŷ = y)."""

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        diff = pred - target
        self.ctx.saved = diff
        return self._reduce(B.get().xp.abs(diff))

    def backward(self, grad=1.0):
        diff = self._saved()
        return B.get().xp.sign(diff) * self._scale(diff.size, _grad(grad, diff))


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities ``p``::

        L = -(1/N) Σ [ y log p + (1 - y) log(1 - p) ],   dL/dp = (p - y) / (p (1 - p) N)

    As PyTorch, each log is clamped to ≥ -100 so that p ∈ {0, 1} gives a finite loss; the
    gradient uses ``p(1-p)`` clamped to ≥ 1e-12 for the same reason.
    """

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        xp = B.get().xp
        if bool(((pred < 0) | (pred > 1)).any()):
            raise ValueError("BCELoss expects probabilities in [0, 1]; for logits use "
                             "BCEWithLogitsLoss")
        with np.errstate(divide="ignore"):
            logp = xp.maximum(xp.log(pred), -100)
            log1mp = xp.maximum(xp.log1p(-pred), -100)
        self.ctx.saved = (pred, target)
        return self._reduce(-(target * logp + (1 - target) * log1mp))

    def backward(self, grad=1.0):
        p, y = self._saved()
        xp = B.get().xp
        denom = xp.maximum(p * (1 - p), 1e-12)
        return (p - y) / denom * self._scale(p.size, _grad(grad, p))


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy on logits ``x``, in the stable form::

        L = (1/N) Σ [ max(x, 0) - x y + log(1 + e^{-|x|}) ],   dL/dx = (σ(x) - y)/N
    """

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        xp = B.get().xp
        self.ctx.saved = (pred, target)
        per = xp.maximum(pred, 0) - pred * target + xp.log1p(xp.exp(-xp.abs(pred)))
        return self._reduce(per)

    def backward(self, grad=1.0):
        x, y = self._saved()
        return (sigmoid(x) - y) * self._scale(x.size, _grad(grad, x))


class CrossEntropyLoss(_Loss):
    r"""Softmax cross-entropy on logits ``z (N, C)`` (or ``(N, C, d1, ...)``) and integer
    class labels ``y (N,)`` (or ``(N, d1, ...)``)::

        q = (1 - s)·onehot(y) + s/C                         (label smoothing s)
        L_n = -Σ_c q_c log softmax(z_n)_c = logsumexp(z_n) - Σ_c q_c z_nc
        dL_n/dz_n = softmax(z_n) - q

    ``reduction="mean"`` divides by the number of rows whose label is not ``ignore_index``
    (PyTorch's convention), so ignored (padded) rows add nothing to loss or gradient.  When
    every row is ignored the mean is 0 (PyTorch: 0/0 = nan); the gradient is 0 in both.
    Forward and backward each run as one fused backend operation.
    """

    def __init__(self, *, reduction: str = "mean", label_smoothing: float = 0.0,
                 ignore_index: int = -100):
        super().__init__(reduction=reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        be = B.get()
        xp = be.xp
        logits = check_float(as_array(logits), "CrossEntropyLoss")
        target = as_array(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropyLoss expects integer class labels, got dtype "
                            f"{target.dtype}")
        if logits.ndim < 2:
            raise ValueError(f"CrossEntropyLoss expects logits of shape (N, C, ...), got "
                             f"{tuple(logits.shape)}")
        n, c = logits.shape[0], logits.shape[1]
        if target.shape != (n,) + logits.shape[2:]:
            raise ValueError(f"CrossEntropyLoss: logits {tuple(logits.shape)} need labels of "
                             f"shape {(n,) + tuple(logits.shape[2:])}, got {tuple(target.shape)}")
        orig_shape = logits.shape
        if logits.ndim > 2:  # (N, C, d...) -> (N*d..., C)
            logits = xp.moveaxis(logits, 1, -1).reshape(-1, c)
        logits = xp.ascontiguousarray(logits)
        labels = target.reshape(-1).astype(xp.int64, copy=False)
        valid = labels != self.ignore_index
        if bool(((labels < 0) | (labels >= c))[valid].any()):
            bad = int(be.to_numpy(labels[valid & ((labels < 0) | (labels >= c))])[0])
            raise ValueError(f"CrossEntropyLoss: label {bad} is outside [0, {c}) classes")
        safe = xp.where(valid, labels, 0)
        per = be.softmax_cross_entropy_forward(logits, safe, self.label_smoothing)
        per = per * valid
        count = int(valid.sum())
        self.ctx.saved = (logits, safe, valid, count, orig_shape)
        if self.reduction == "mean":
            return _zero_d(per.sum() / max(count, 1))
        if self.reduction == "sum":
            return _zero_d(per.sum())
        return per.reshape((n,) + tuple(orig_shape[2:]))

    def backward(self, grad=1.0):
        be = B.get()
        xp = be.xp
        logits, labels, valid, count, orig_shape = self._saved()
        g = _grad(grad, logits)
        if self.reduction == "none":
            row_scale = g.reshape(-1) * valid
        else:
            row_scale = valid.astype(logits.dtype) * (g / max(count, 1)
                                                      if self.reduction == "mean" else g)
        d = be.softmax_cross_entropy_backward(logits, labels, self.label_smoothing,
                                              row_scale.astype(logits.dtype, copy=False))
        if len(orig_shape) > 2:
            c = orig_shape[1]
            d = xp.moveaxis(d.reshape((orig_shape[0],) + tuple(orig_shape[2:]) + (c,)), -1, 1)
            d = xp.ascontiguousarray(d)
        return d


def _zero_d(value):
    """A reduction as a 0-d array of the backend (NumPy reductions return scalars)."""
    return B.get().xp.asarray(value)


def _grad(grad, like):
    """Upstream gradient as a backend scalar/array of ``like``'s dtype."""
    be = B.get()
    if getattr(grad, "ndim", 0) == 0 and not be.is_native(grad):
        return like.dtype.type(grad)
    return be.asarray(grad).astype(like.dtype, copy=False)
