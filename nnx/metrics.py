"""Evaluation metrics.  Inputs may be NumPy or backend (CuPy) arrays, or lists; results are
Python floats (or NumPy arrays for per-class values and the confusion matrix).

**Argument order: ``(y_true, y_pred)`` everywhere, as scikit-learn** (``y_score`` for
:func:`top_k_accuracy`).  Predictions may be labels ``(N, ...)`` or scores ``(N, C, ...)``
(arg-max over axis 1).  Until issue 13 ``accuracy``, ``mse``, ``mae`` and ``rmse`` took
``(pred, target)``; a call with scores in the first place now raises an error that says
so.

Averages of per-class precision, recall and F1 (``average=``): ``"macro"`` (unweighted mean
over the classes that occur in labels or predictions), ``"weighted"`` (mean weighted by each
class's number of true samples), ``"micro"`` (from the total counts: for single-label
classification micro precision = recall = F1 = accuracy), ``None`` (per class).  An
undefined ratio counts as 0 (scikit-learn's ``zero_division=0``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "top_k_accuracy", "precision", "recall", "f1_score", "confusion_matrix",
           "mse", "mae", "rmse"]


def _host(x) -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _pair(y_true, y_pred, name):
    y_true = _host(y_true)
    y_pred = _host(y_pred)
    if y_true.ndim == y_pred.ndim + 1 and y_true.ndim >= 2:
        raise ValueError(f"{name}(y_true, y_pred): the first argument has the shape of scores "
                         f"{y_true.shape} and the second of labels {y_pred.shape}; nnx.metrics "
                         "takes (y_true, y_pred) as scikit-learn: swap them")
    if y_pred.ndim == y_true.ndim + 1 and y_pred.ndim >= 2:
        y_pred = y_pred.argmax(axis=1)   # scores (N, C, ...) -> labels (N, ...)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{name}: labels have shape {y_true.shape} but predictions give "
                         f"{y_pred.shape}")
    return _as_labels(y_true, "labels", name), _as_labels(y_pred, "predictions", name)


def _as_labels(arr, what, name):
    if arr.dtype.kind == "f" and arr.size and not np.all(arr == np.round(arr)):
        raise TypeError(f"{name}: {what} must be integer class labels (or (N, C) scores "
                        f"for predictions), got non-integer floats")
    return arr.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct predictions.  ``y_pred`` is labels ``(N, ...)`` or
    logits/probabilities ``(N, C, ...)`` (arg-max over axis 1)."""
    labels, pred = _pair(y_true, y_pred, "accuracy")
    if labels.size == 0:
        raise ValueError("accuracy: no samples")
    return float((labels == pred).mean())


def top_k_accuracy(y_true, y_score, k: int = 2) -> float:
    """Fraction of samples whose true class is among the ``k`` highest of ``y_score (N, C)``
    (scikit-learn's ``top_k_accuracy_score``, whose default ``k`` is 2; ties go to the
    higher class index, as there).  ``k >= C`` gives 1."""
    y_true, y_score = _host(y_true), _host(y_score)
    if y_score.ndim != 2 or y_true.shape != y_score.shape[:1]:
        raise ValueError(f"top_k_accuracy(y_true, y_score): expected labels (N,) and scores "
                         f"(N, C), got {y_true.shape} and {y_score.shape}")
    if int(k) != k or k < 1:
        raise ValueError(f"top_k_accuracy: k must be a positive integer, got {k}")
    if y_true.size == 0:
        raise ValueError("top_k_accuracy: no samples")
    y_true = _as_labels(y_true, "labels", "top_k_accuracy")
    c = y_score.shape[1]
    bad = (y_true < 0) | (y_true >= c)
    if bad.any():
        raise ValueError(f"top_k_accuracy: label {int(y_true[bad][0])} is outside [0, {c}) "
                         f"for scores of {c} classes")
    top = np.argsort(y_score, axis=1, kind="mergesort")[:, ::-1][:, :int(k)]
    return float((top == y_true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``M[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64)."""
    t, p = _pair(y_true, y_pred, "confusion_matrix")
    t, p = t.ravel(), p.ravel()
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    for arr, what in ((t, "label"), (p, "prediction")):
        bad = (arr < 0) | (arr >= num_classes)
        if bad.any():
            raise ValueError(f"confusion_matrix: {what} {int(arr[bad][0])} is outside "
                             f"[0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def _prf(y_true, y_pred, num_classes):
    m = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(m).astype(np.float64)
    pred_pos = m.sum(axis=0).astype(np.float64)
    true_pos = m.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred_pos > 0, tp / pred_pos, 0.0)   # 0 where undefined (sklearn's
        rec = np.where(true_pos > 0, tp / true_pos, 0.0)    # zero_division=0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = (true_pos + pred_pos) > 0   # macro averages over classes that occur
    return prec, rec, f1, present, (tp, pred_pos, true_pos)


_AVERAGES = ("macro", "weighted", "micro", None)


def _average(values, present, counts, average, which):
    tp, pred_pos, true_pos = counts
    if average is None:
        return values
    if average == "macro":
        return float(values[present].mean()) if present.any() else 0.0
    if average == "weighted":
        total = true_pos.sum()
        return float((values * true_pos).sum() / total) if total > 0 else 0.0
    if average == "micro":
        p = tp.sum() / pred_pos.sum() if pred_pos.sum() > 0 else 0.0
        r = tp.sum() / true_pos.sum() if true_pos.sum() > 0 else 0.0
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        return float({"precision": p, "recall": r, "f1": f}[which])
    raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")


def precision(y_true, y_pred, num_classes=None, average="macro"):
    """``TP / (TP + FP)`` per class, averaged by ``average`` (``"macro"``, ``"weighted"``,
    ``"micro"`` or ``None`` for the per-class array; see the module docstring).  Undefined
    ratios (no predictions of a class) count as 0."""
    p, _, _, present, counts = _prf(y_true, y_pred, num_classes)
    return _average(p, present, counts, average, "precision")


def recall(y_true, y_pred, num_classes=None, average="macro"):
    """``TP / (TP + FN)`` per class, averaged as :func:`precision`."""
    _, r, _, present, counts = _prf(y_true, y_pred, num_classes)
    return _average(r, present, counts, average, "recall")


def f1_score(y_true, y_pred, num_classes=None, average="macro"):
    """``2 P R / (P + R)`` per class (0 where P + R = 0), averaged as :func:`precision`
    (``"weighted"``: ``Σ_c n_c F1_c / Σ_c n_c`` with ``n_c`` true samples of class ``c``;
    ``"micro"``: F1 of the summed counts)."""
    _, _, f, present, counts = _prf(y_true, y_pred, num_classes)
    return _average(f, present, counts, average, "f1")


f1 = f1_score


def _reg_pair(y_true, y_pred, name):
    y_true, y_pred = _host(y_true).astype(np.float64), _host(y_pred).astype(np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{name}(y_true, y_pred): target shape {y_true.shape} and "
                         f"prediction shape {y_pred.shape} differ")
    if y_true.size == 0:
        raise ValueError(f"{name}: no samples")
    return y_true, y_pred


def mse(y_true, y_pred) -> float:
    """Mean squared error ``mean((y_pred - y_true)²)``."""
    y_true, y_pred = _reg_pair(y_true, y_pred, "mse")
    return float(np.mean((y_pred - y_true) ** 2))


def mae(y_true, y_pred) -> float:
    """Mean absolute error ``mean(|y_pred - y_true|)``."""
    y_true, y_pred = _reg_pair(y_true, y_pred, "mae")
    return float(np.mean(np.abs(y_pred - y_true)))


def rmse(y_true, y_pred) -> float:
    """Root mean squared error ``sqrt(mse)``."""
    return float(np.sqrt(mse(y_true, y_pred)))
