r"""Per-time-step losses for padded sequence batches.

Both take a step mask ``m`` of shape ``(T, N)`` (``(N, T)`` with ``batch_first=True``) —
boolean, or non-negative float weights — or integer ``lengths (N,)`` (step ``t`` of sequence
``n`` is valid iff ``t < lengths[n]``).  Masked steps add nothing to the loss or gradient and
``reduction="mean"`` averages over the valid steps only.
"""
from __future__ import annotations

import numpy as np

from .. import backend as B
from .inputs import as_array, check_float
from .loss import _Loss, _grad, _zero_d


def _step_weights(name, shape_tn, batch_first, mask, lengths, dtype):
    """Return the step weights as a time-major ``(T, N)`` array of ``dtype`` (or None)."""
    be = B.get()
    xp = be.xp
    T, N = shape_tn
    if mask is not None and lengths is not None:
        raise ValueError(f"{name}: pass mask or lengths, not both")
    if mask is not None:
        mask = as_array(mask)
        want = (N, T) if batch_first else (T, N)
        if tuple(mask.shape) != want:
            layout = "(N, T)" if batch_first else "(T, N)"
            raise ValueError(f"{name}: mask must have shape {layout} = {want}, got "
                             f"{tuple(mask.shape)}")
        w = mask.T if batch_first else mask
        return xp.ascontiguousarray(w).astype(dtype)
    if lengths is not None:
        lengths = as_array(lengths)
        if lengths.dtype.kind not in "iu" or tuple(lengths.shape) != (N,):
            raise ValueError(f"{name}: lengths must be integers of shape ({N},), got "
                             f"{lengths.dtype} {tuple(lengths.shape)}")
        return (xp.arange(T)[:, None] < lengths[None, :]).astype(dtype)
    return None


class SequenceMSELoss(_Loss):
    r"""Masked per-step mean squared error.  ``pred``, ``target``: ``(T, N, *F)``
    (``(N, T, *F)`` with ``batch_first``); weights ``m_tn`` broadcast over ``F``
    (``|F|`` = number of feature elements per step)::

        L = Σ_tn m_tn Σ_f (ŷ_tnf - y_tnf)² / (|F| Σ_tn m_tn)        ("mean")
        dL/dŷ_tnf = 2 m_tn (ŷ_tnf - y_tnf) / (|F| Σ_tn m_tn)

    ``"sum"`` drops the denominator; ``"none"`` returns ``m ⊙ (ŷ - y)²`` element-wise.
    Without a mask it is ``MSELoss``.  ``forward(pred, target, mask=None, lengths=None)``;
    ``backward(grad=1.0) -> dL/dpred``.
    """

    def __init__(self, reduction: str = "mean", batch_first: bool = False):
        super().__init__(reduction=reduction)
        self.batch_first = bool(batch_first)

    def forward(self, pred, target, mask=None, lengths=None):
        pred, target = self._pair(pred, target)
        if pred.ndim < 2:
            raise ValueError(f"SequenceMSELoss expects predictions (T, N, ...) or (N, T, ...), "
                             f"got shape {tuple(pred.shape)}")
        tn = (pred.shape[1], pred.shape[0]) if self.batch_first else pred.shape[:2]
        w = _step_weights("SequenceMSELoss", tn, self.batch_first, mask, lengths, pred.dtype)
        diff = pred - target
        feat = int(np.prod(pred.shape[2:], dtype=np.int64))
        if w is None:
            wb, count = None, diff.size
        else:
            wb = w.T if self.batch_first else w
            wb = wb.reshape(wb.shape + (1,) * (pred.ndim - 2))
            count = float(w.sum()) * feat
        self.ctx.saved = (diff, wb, count)
        per = diff * diff if wb is None else wb * diff * diff
        if self.reduction == "mean":
            return _zero_d(per.sum() / max(count, 1e-12) if wb is not None else per.mean())
        return _zero_d(per.sum()) if self.reduction == "sum" else per

    def backward(self, grad=1.0):
        diff, wb, count = self._saved()
        g = _grad(grad, diff)
        d = 2 * diff if wb is None else 2 * wb * diff
        if self.reduction == "mean":
            return d * (g / max(count, 1e-12))
        return d * g


class SequenceCrossEntropyLoss(_Loss):
    r"""Masked per-step softmax cross-entropy.  ``logits (T, N, C)`` (``(N, T, C)`` with
    ``batch_first``), integer ``labels (T, N)`` (``(N, T)``), step weights ``m_tn``::

        ℓ_tn = logsumexp(z_tn) - Σ_c q_c z_tnc        (q: one-hot, label-smoothed if s > 0)
        L = Σ_tn m_tn ℓ_tn / Σ_tn m_tn                 ("mean": over valid steps)
        dL/dz_tn = m_tn (softmax(z_tn) - q) / Σ m

    Labels equal to ``ignore_index`` are masked too (their value is never read).
    ``"sum"`` drops the denominator; ``"none"`` returns ``m ⊙ ℓ`` in the labels' layout.
    ``forward(logits, labels, mask=None, lengths=None)``; ``backward(grad=1.0) -> dL/dlogits``.
    Forward/backward are the backend's fused softmax-cross-entropy operations.
    """

    def __init__(self, reduction: str = "mean", batch_first: bool = False,
                 label_smoothing: float = 0.0, ignore_index: int = -100):
        super().__init__(reduction=reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.batch_first = bool(batch_first)
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = ignore_index

    def forward(self, logits, labels, mask=None, lengths=None):
        be = B.get()
        xp = be.xp
        name = "SequenceCrossEntropyLoss"
        logits = check_float(as_array(logits), name)
        labels = as_array(labels)
        if logits.ndim != 3:
            raise ValueError(f"{name} expects logits (T, N, C) or (N, T, C), got shape "
                             f"{tuple(logits.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{name} expects integer class labels, got dtype {labels.dtype}")
        if tuple(labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"{name}: logits {tuple(logits.shape)} need labels of shape "
                             f"{tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        A, Bn, C = logits.shape
        tn = (Bn, A) if self.batch_first else (A, Bn)
        w = _step_weights(name, tn, self.batch_first, mask, lengths, logits.dtype)
        if w is not None and self.batch_first:
            w = w.T  # back to the logits' own layout
        lab = labels.reshape(-1).astype(xp.int64, copy=False)
        valid = lab != self.ignore_index
        w = valid.astype(logits.dtype) if w is None else w.reshape(-1) * valid
        active = valid & (w != 0)
        if bool(((lab < 0) | (lab >= C))[active].any()):
            bad = int(be.to_numpy(lab[active & ((lab < 0) | (lab >= C))])[0])
            raise ValueError(f"{name}: label {bad} is outside [0, {C}) classes")
        safe = xp.where(active, lab, 0)
        z = xp.ascontiguousarray(logits.reshape(-1, C))
        per = be.softmax_cross_entropy_forward(z, safe, self.label_smoothing) * w
        total = float(w.sum())
        self.ctx.saved = (z, safe, w, total, logits.shape)
        if self.reduction == "mean":
            return _zero_d(per.sum() / max(total, 1e-12))
        if self.reduction == "sum":
            return _zero_d(per.sum())
        return per.reshape(A, Bn)

    def backward(self, grad=1.0):
        be = B.get()
        z, safe, w, total, shape = self._saved()
        g = _grad(grad, z)
        if self.reduction == "none":
            row_scale = g.reshape(-1) * w
        elif self.reduction == "mean":
            row_scale = w * (g / max(total, 1e-12))
        else:
            row_scale = w * g
        d = be.softmax_cross_entropy_backward(z, safe, self.label_smoothing,
                                              row_scale.astype(z.dtype, copy=False))
        return d.reshape(shape)
