"""Loss functions.  ``loss = crit(pred, target)`` returns a 0-d array of the active backend
(``reduction="mean"|"sum"``) or the per-element losses (``"none"``); ``crit.backward()``
returns ``dL/dpred``.  Its optional argument is the *upstream* gradient
``dL_total/d(loss)`` (1 by default), not the loss: ``crit.backward(loss)`` would scale every
gradient by the loss value, so passing the array the loss returned is an error."""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .. import backend as B
from .activation import log_softmax, sigmoid
from .inputs import as_array, check_float
from .module import Module

_REDUCTIONS = ("mean", "sum", "none")


_BACKWARD_DOC = """``dL/dpred`` of the last call, for the upstream gradient ``grad``.

        ``grad`` is ``dL_total/d(loss)``: ``None`` (the default) means 1, i.e. the loss is
        the quantity being minimised.  With ``reduction="none"`` it may be an array of the
        loss's shape (one upstream gradient per element).  It is *not* the loss itself:
        ``crit.backward(loss)`` (PyTorch's ``loss.backward()`` spelled the nnx way by
        mistake) would scale every gradient by the loss value, and raises.  Write
        ``crit.backward()``."""


def _refuses_own_value(impl):
    """Wrap a loss's ``backward``: passing the very array its forward returned is the
    classic mistake (PyTorch's ``loss.backward()`` habit), so it raises."""

    @functools.wraps(impl)
    def backward(self, grad=None, **kwargs):
        if grad is not None and grad is getattr(self.__dict__["ctx"], "returned", None):
            name = type(self).__name__
            raise TypeError(f"{name}.backward(grad) takes the upstream gradient "
                            f"dL_total/d(loss) (default 1), not the loss itself: passing the "
                            f"loss would scale every gradient by its value; call "
                            f"{name}.backward() instead")
        return impl(self, grad, **kwargs)
    backward.__doc__ = _BACKWARD_DOC
    backward.__refuses_own_value__ = True
    return backward


def _records_result(impl):
    """Wrap a loss's ``forward`` so that its call's context keeps the returned array (for
    the check of :func:`_refuses_own_value`)."""

    @functools.wraps(impl)
    def forward(self, *args, **kwargs):
        out = impl(self, *args, **kwargs)
        self.ctx.returned = out
        return out
    forward.__records_result__ = True
    return forward


class _Loss(Module):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)          # wraps backward with the record checks
        fwd, bwd = cls.__dict__.get("forward"), cls.__dict__.get("backward")
        if fwd is not None and not getattr(fwd, "__records_result__", False):
            cls.forward = _records_result(fwd)
        if bwd is not None and not getattr(bwd, "__refuses_own_value__", False):
            cls.backward = _refuses_own_value(bwd)

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

    def backward(self, grad=None):
        diff = self._saved()
        return 2 * diff * self._scale(diff.size, _grad(grad, diff))


class L1Loss(_Loss):
    """``L = (1/N) Σ |ŷ - y|``;  ``dL/dŷ = sign(ŷ - y)/N`` (0 where ŷ = y)."""

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        diff = pred - target
        self.ctx.saved = diff
        return self._reduce(B.get().xp.abs(diff))

    def backward(self, grad=None):
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

    def backward(self, grad=None):
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

    def backward(self, grad=None):
        x, y = self._saved()
        return (sigmoid(x) - y) * self._scale(x.size, _grad(grad, x))


class _ClassLoss(_Loss):
    """Shared by the losses on class labels (PyTorch's ``_WeightedLoss``): the optional
    per-class ``weight`` (a buffer, as in PyTorch's state_dict), ``ignore_index``, and the
    checks and flattening of ``input (N, C, d1, ...)`` with labels ``(N, d1, ...)``."""

    def __init__(self, weight=None, *, reduction="mean", ignore_index=-100):
        super().__init__(reduction=reduction)
        self.ignore_index = int(ignore_index)
        if weight is None:
            self.weight = None
        else:
            w = B.get().asarray(weight)
            if w.ndim != 1 or w.dtype.kind != "f":
                raise ValueError(f"{type(self).__name__}: weight must be a 1-D float array of "
                                 f"one weight per class, got {w.dtype} {tuple(w.shape)}")
            self.register_buffer("weight", w)

    def _rows(self, input, target, defer_device_check=False):
        """``(x (M, C) contiguous, labels (M,) int64, input shape)`` with ``M = N·d1·…``.

        A label outside ``[0, C)`` that is not ``ignore_index`` raises ``ValueError``.  Host
        labels (NumPy arrays, lists; every label on the CPU backend) are checked on the host
        before upload, which costs no synchronisation.  Labels already on the device are
        checked with one host read, or not at all with ``defer_device_check`` (the caller's
        fused kernel then flags them on the device: see :meth:`CrossEntropyLoss.check_labels`)."""
        name = type(self).__name__
        be = B.get()
        xp = be.xp
        x = check_float(as_array(input), name)
        host = np.asarray(target) if xp is np or not be.is_native(target) else None
        target = as_array(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"{name} expects integer class labels, got dtype {target.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{name} expects input of shape (N, C, ...), got "
                             f"{tuple(x.shape)}")
        n, c = x.shape[0], x.shape[1]
        if target.shape != (n,) + x.shape[2:]:
            raise ValueError(f"{name}: input {tuple(x.shape)} needs labels of shape "
                             f"{(n,) + tuple(x.shape[2:])}, got {tuple(target.shape)}")
        if self.weight is not None and self.weight.shape != (c,):
            raise ValueError(f"{name}: weight has {self.weight.shape[0]} entries for {c} "
                             f"classes")
        shape = tuple(x.shape)
        if x.ndim > 2:  # (N, C, d...) -> (N*d..., C)
            x = xp.moveaxis(x, 1, -1).reshape(-1, c)
        x = xp.ascontiguousarray(x)
        labels = target.reshape(-1).astype(xp.int64, copy=False)
        if host is not None:           # before it meets the device: no synchronisation
            _check_labels(name, host.reshape(-1), c, self.ignore_index)
        elif not defer_device_check:
            _check_labels(name, labels, c, self.ignore_index)
        return x, labels, shape

    def _masked(self, labels):
        """``(safe labels, valid mask)``: ignored labels replaced by 0 in ``safe``."""
        valid = labels != self.ignore_index
        return B.get().xp.where(valid, labels, 0), valid

    def _class_weights(self, dtype):
        return None if self.weight is None else self.weight.astype(dtype, copy=False)

    def _finish(self, per, valid, denom, shape):
        """Reduce the per-row losses (already 0 on ignored rows): the mean divides by
        ``denom`` (the number of valid rows, or the sum of their class weights)."""
        if self.reduction == "mean":
            return _zero_d(per.sum() / _nonzero(denom))
        if self.reduction == "sum":
            return _zero_d(per.sum())
        return per.reshape((shape[0],) + shape[2:])

    def _row_scale(self, grad, valid, denom, dtype):
        """``dL/d(per-row loss)``: the upstream gradient, ÷ ``denom`` for a mean, 0 on
        ignored rows."""
        g = _grad(grad, B.get().xp.empty(0, dtype))
        if self.reduction == "none":
            return (g.reshape(-1) * valid).astype(dtype, copy=False)
        if self.reduction == "mean":
            g = g / _nonzero(denom)
        return (valid * g).astype(dtype, copy=False)

    @staticmethod
    def _back_to_input(d, shape):
        """``(M, C)`` row gradients back to the input's ``(N, C, d1, ...)`` layout."""
        if len(shape) == 2:
            return d
        xp = B.get().xp
        d = xp.moveaxis(d.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1)
        return xp.ascontiguousarray(d)


class NLLLoss(_ClassLoss):
    r"""Negative log-likelihood of integer labels ``y`` under log-probabilities
    ``x (N, C)`` or ``(N, C, d1, ...)`` (e.g. the output of ``LogSoftmax(dim=1)``)::

        L_n = -w_{y_n} · x[n, y_n]       (0 where y_n == ignore_index)
        mean:  L = Σ_n L_n / Σ_{n not ignored} w_{y_n}        sum: L = Σ_n L_n
        dL/dx[n, c] = -w_{y_n} · 𝟙[c = y_n] · (1 / Σ w for the mean)

    ``w`` is ``weight`` (one per class; all 1 by default).  When every row is ignored the
    mean is 0 (PyTorch: 0/0 = nan); the gradient is 0 in both."""

    def forward(self, input, target):
        x, labels, shape = self._rows(input, target)
        labels, valid = self._masked(labels)
        xp = B.get().xp
        rows = xp.arange(x.shape[0])
        w = self._class_weights(x.dtype)
        wy = valid.astype(x.dtype) if w is None else w[labels] * valid
        per = -x[rows, labels] * wy
        denom = wy.sum()
        self.ctx.saved = (x.shape, labels, wy, valid, denom, shape)
        return self._finish(per, valid, denom, shape)

    def backward(self, grad=None):
        x_shape, labels, wy, valid, denom, shape = self._saved()
        xp = B.get().xp
        scale = self._row_scale(grad, valid, denom, wy.dtype)
        d = xp.zeros(x_shape, dtype=wy.dtype)
        d[xp.arange(x_shape[0]), labels] = -wy * scale
        return self._back_to_input(d, shape)


class CrossEntropyLoss(_ClassLoss):
    r"""Softmax cross-entropy on logits ``z (N, C)`` (or ``(N, C, d1, ...)``) and integer
    class labels ``y (N,)`` (or ``(N, d1, ...)``), with class weights ``w`` (``weight``; all
    1 by default) and label smoothing ``s``, as PyTorch::

        ℓ_nc = -log softmax(z_n)_c = logsumexp(z_n) - z_nc
        L_n  = (1 - s) · w_{y_n} · ℓ_{n,y_n}  +  (s/C) · Σ_c w_c ℓ_nc      (0 if ignored)
        mean:  L = Σ_n L_n / Σ_{n not ignored} w_{y_n}        sum: L = Σ_n L_n
        dL_n/dz_n = (1 - s) · w_{y_n} · (p_n - onehot(y_n)) + (s/C) · (Σ_c w_c · p_n - w)

    with ``p_n = softmax(z_n)``.  With ``w = 1`` this is ``-Σ_c q_c log p_nc`` for
    ``q = (1 - s)·onehot(y) + s/C``, and the mean divides by the number of rows whose label
    is not ``ignore_index`` (PyTorch's convention), so ignored (padded) rows add nothing to
    loss or gradient.  When every row is ignored the mean is 0 (PyTorch: 0/0 = nan); the
    gradient is 0 in both.  Without ``weight``, forward (per-row loss, ``ignore_index``, the
    count of valid rows and the reduction) and backward each run as fused backend operations
    (two kernels and one on CUDA) and the host never waits; with it, as a few array operations
    of the backend.

    Out-of-range labels raise ``ValueError`` naming the label.  Labels given on the host (and
    every label on the CPU backend) are checked at the call.  Labels already on the CUDA
    device are not read back at the call (that would make the host wait at every step): the
    kernel makes such a row's loss NaN and records the label on the device, and
    :meth:`check_labels` (one host read) raises the error; the trainer calls it when the loss
    it reads every few steps is not finite.
    """

    def __init__(self, weight=None, *, reduction: str = "mean", label_smoothing: float = 0.0,
                 ignore_index: int = -100):
        super().__init__(weight, reduction=reduction, ignore_index=ignore_index)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, target):
        be = B.get()
        s = self.label_smoothing
        if self.weight is None:
            z, labels, shape = self._rows(logits, target, defer_device_check=True)
            out, count = be.cross_entropy_loss_forward(z, labels, s, self.ignore_index,
                                                       self.reduction,
                                                       self._label_status(be, shape[1]))
            self.ctx.saved = (z, labels, None, count, shape, None)
            return out.reshape((shape[0],) + shape[2:]) if self.reduction == "none" else out
        z, labels, shape = self._rows(logits, target)
        labels, valid = self._masked(labels)
        w, xp = self._class_weights(z.dtype), be.xp
        logp = log_softmax(z, dim=1)
        wy = w[labels] * valid
        nll = -logp[xp.arange(z.shape[0]), labels]
        per = (1 - s) * wy * nll - (s / z.shape[1]) * (logp @ w) * valid
        denom = wy.sum()
        self.ctx.saved = (logp, labels, valid, denom, shape, wy)
        return self._finish(per, valid, denom, shape)

    def backward(self, grad=None):
        be = B.get()
        a, labels, valid, denom, shape, wy = self._saved()
        s = self.label_smoothing
        if wy is None:      # a = the logits; denom = the device count of valid rows
            d = be.cross_entropy_loss_backward(
                a, labels, s, self.ignore_index, _grad(grad, a),
                denom if self.reduction == "mean" else None)
        else:               # a = log softmax(z)
            scale = self._row_scale(grad, valid, denom, a.dtype)
            xp = be.xp
            w = self._class_weights(a.dtype)
            p = xp.exp(a)
            d = p * ((1 - s) * wy)[:, None]
            d[xp.arange(a.shape[0]), labels] -= (1 - s) * wy
            if s:
                d += (s / a.shape[1]) * (w.sum() * p - w)
            d *= scale[:, None]
        return self._back_to_input(d, shape)

    def _label_status(self, be, classes):
        """The device record of out-of-range labels (see :meth:`check_labels`): an int64
        ``[count, first label]`` kept per backend and device, allocated on the first call."""
        key = (be.name, getattr(getattr(be, "device", None), "id", None))
        kept = self.__dict__.get("_label_flags")
        if kept is None or kept[0] != key:
            kept = (key, be.asarray(np.zeros(2, np.int64)))
            self._label_flags = kept
        self._label_classes = classes
        return kept[1]

    def check_labels(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range label that a call since the
        last check met on the device (not PyTorch API: PyTorch checks at each call, which
        on a GPU makes the host wait).  One host read; does nothing when no call recorded
        one.  Labels from the host are checked at the call instead (see the class doc)."""
        kept = self.__dict__.get("_label_flags")
        if kept is None:
            return
        count, label = (int(v) for v in B.get().to_numpy(kept[1]))
        if count:
            kept[1][...] = 0
            raise ValueError(f"{type(self).__name__}: label {label} is outside "
                             f"[0, {self._label_classes}) classes ({count} such label(s) "
                             f"since the last check)")


class HuberLoss(_Loss):
    r"""Huber loss of ``d = ŷ - y`` with threshold ``δ = delta`` (PyTorch's HuberLoss)::

        ℓ = ½ d²               if |d| < δ        dℓ/dŷ = d
        ℓ = δ (|d| - ½ δ)      otherwise         dℓ/dŷ = δ · sign(d)

    reduced by ``reduction`` (mean over all elements by default)."""

    def __init__(self, *, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction)
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be positive, got {delta}")
        self.delta = float(delta)

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        diff = self.ctx.saved = pred - target
        return self._reduce(_huber(diff, self.delta))

    def backward(self, grad=None):
        diff = self._saved()
        return _huber_grad(diff, self.delta) * self._scale(diff.size, _grad(grad, diff))

    def extra_repr(self):
        return f"delta={self.delta}"


class SmoothL1Loss(_Loss):
    r"""Smooth L1 loss of ``d = ŷ - y`` with threshold ``β = beta`` (PyTorch's SmoothL1Loss;
    Huber divided by ``β``)::

        ℓ = ½ d² / β           if |d| < β        dℓ/dŷ = d / β
        ℓ = |d| - ½ β          otherwise         dℓ/dŷ = sign(d)

    ``beta=0`` is the L1 loss."""

    def __init__(self, *, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction=reduction)
        if not beta >= 0:
            raise ValueError(f"SmoothL1Loss: beta must be non-negative, got {beta}")
        self.beta = float(beta)

    def forward(self, pred, target):
        pred, target = self._pair(pred, target)
        diff = self.ctx.saved = pred - target
        xp = B.get().xp
        per = xp.abs(diff) if self.beta == 0 else _huber(diff, self.beta) / self.beta
        return self._reduce(per)

    def backward(self, grad=None):
        diff = self._saved()
        xp = B.get().xp
        d = xp.sign(diff) if self.beta == 0 else _huber_grad(diff, self.beta) / self.beta
        return d * self._scale(diff.size, _grad(grad, diff))

    def extra_repr(self):
        return f"beta={self.beta}"


def _huber(d, delta):
    a = B.get().xp.abs(d)
    return B.get().xp.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def _huber_grad(d, delta):
    return B.get().xp.clip(d, -delta, delta)


class KLDivLoss(_Loss):
    r"""Kullback-Leibler divergence with the input ``x`` given as log-probabilities and the
    target ``y`` as probabilities (or as log-probabilities ``t`` with ``log_target=True``),
    as PyTorch's KLDivLoss::

        ℓ = y · (log y - x)        (0 where y = 0)        dℓ/dx = -y
        ℓ = e^t · (t - x)          (log_target=True)      dℓ/dx = -e^t

    ``reduction``: ``"batchmean"`` (the mathematically correct KL: sum / batch size ``N``,
    the size of dimension 0), ``"sum"``, ``"none"``, or ``"mean"`` (PyTorch's default:
    the average over *all* elements, i.e. batchmean divided by the size of one sample;
    PyTorch warns about it and so does nnx).  Only ``dL/dx`` is returned."""

    def __init__(self, *, reduction: str = "mean", log_target: bool = False):
        if reduction == "batchmean":
            super().__init__(reduction="sum")
            self.reduction = "batchmean"
        else:
            super().__init__(reduction=reduction)
        self.log_target = bool(log_target)

    def forward(self, input, target):
        x, y = self._pair(input, target)
        xp = B.get().xp
        if self.reduction == "mean":
            warnings.warn("KLDivLoss(reduction='mean') averages over all elements, which is "
                          "not the KL divergence; reduction='batchmean' divides the sum by "
                          "the batch size only (PyTorch's warning)", UserWarning,
                          stacklevel=3)
        if self.log_target:
            py = xp.exp(y)
            per = py * (y - x)
        else:
            py = y
            with np.errstate(divide="ignore", invalid="ignore"):
                ylogy = xp.where(y > 0, y * xp.log(xp.where(y > 0, y, 1)), 0)
            per = ylogy - y * x
        self.ctx.saved = (py, x.shape)
        if self.reduction == "batchmean":
            return _zero_d(per.sum() / (x.shape[0] if x.ndim else 1))
        return self._reduce(per)

    def backward(self, grad=None):
        py, shape = self._saved()
        g = _grad(grad, py)
        if self.reduction == "batchmean":
            g = g / (shape[0] if len(shape) else 1)
        else:
            g = self._scale(py.size, g)
        return -py * g

    def extra_repr(self):
        return f"reduction={self.reduction!r}, log_target={self.log_target}"


def _check_labels(name, labels, classes, ignore_index):
    """Raise ``ValueError`` on the first label outside ``[0, classes)`` that is not
    ``ignore_index`` (a host read when ``labels`` lives on a device)."""
    valid = labels != ignore_index
    outside = valid & ((labels < 0) | (labels >= classes))
    if bool(outside.any()):
        bad = int(B.get().to_numpy(labels[outside])[0])
        raise ValueError(f"{name}: label {bad} is outside [0, {classes}) classes")


def _nonzero(denom):
    """The divisor of a mean over labelled rows: 1 when nothing counts (the mean is then 0)."""
    return denom if float(denom) != 0 else 1


def _zero_d(value):
    """A reduction as a 0-d array of the backend (NumPy reductions return scalars)."""
    return B.get().xp.asarray(value)


def _grad(grad, like):
    """Upstream gradient as a backend scalar/array of ``like``'s dtype (``None``: 1)."""
    be = B.get()
    if grad is None:
        grad = 1.0
    if getattr(grad, "ndim", 0) == 0 and not be.is_native(grad):
        return like.dtype.type(grad)
    return be.asarray(grad).astype(like.dtype, copy=False)
