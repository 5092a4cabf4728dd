"""Evaluation metrics.  Inputs may be NumPy or backend (CuPy) arrays, or lists; results are
Python floats (or NumPy arrays for per-class values and the confusion matrix)."""
from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "precision", "recall", "f1_score", "confusion_matrix", "mse", "mae",
           "rmse"]


def _host(x) -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _pair(y_true, y_pred, name):
    y_true = _host(y_true)
    y_pred = _host(y_pred)
    if y_pred.ndim == y_true.ndim + 1 and y_pred.ndim >= 2:
        y_pred = y_pred.argmax(axis=1)   # scores (N, C, ...) -> labels (N, ...)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{name}: labels have shape {y_true.shape} but predictions give "
                         f"{y_pred.shape}")
    for arr, what in ((y_true, "labels"), (y_pred, "predictions")):
        if arr.dtype.kind == "f" and arr.size and not np.all(arr == np.round(arr)):
            raise TypeError(f"{name}: {what} must be integer class labels (or (N, C) scores "
                            f"for predictions), got non-integer floats")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def accuracy(pred, labels) -> float:
    """Fraction of correct predictions.  ``pred`` is labels ``(N, ...)`` or logits/probabilities
    ``(N, C, ...)`` (arg-max over axis 1)."""
    labels, pred = _pair(labels, pred, "accuracy")
    if labels.size == 0:
        raise ValueError("accuracy: no samples")
    return float((labels == pred).mean())


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
    return prec, rec, f1, present


def _average(values, present, average):
    if average is None:
        return values
    if average == "macro":
        return float(values[present].mean()) if present.any() else 0.0
    raise ValueError(f"average must be 'macro' or None, got {average!r}")


def precision(y_true, y_pred, num_classes=None, average="macro"):
    """``TP / (TP + FP)`` per class; ``average="macro"`` is the unweighted mean over the
    classes that appear in labels or predictions, ``None`` returns the per-class array.
    Undefined ratios (no predictions of a class) count as 0."""
    p, _, _, present = _prf(y_true, y_pred, num_classes)
    return _average(p, present, average)


def recall(y_true, y_pred, num_classes=None, average="macro"):
    """``TP / (TP + FN)`` per class; macro or per-class as :func:`precision`."""
    _, r, _, present = _prf(y_true, y_pred, num_classes)
    return _average(r, present, average)


def f1_score(y_true, y_pred, num_classes=None, average="macro"):
    """``2 P R / (P + R)`` per class (0 where P + R = 0); macro or per-class."""
    _, _, f, present = _prf(y_true, y_pred, num_classes)
    return _average(f, present, average)


f1 = f1_score


def _reg_pair(pred, target, name):
    pred, target = _host(pred).astype(np.float64), _host(target).astype(np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} and target shape "
                         f"{target.shape} differ")
    if pred.size == 0:
        raise ValueError(f"{name}: no samples")
    return pred, target


def mse(pred, target) -> float:
    """Mean squared error ``mean((pred - target)²)``."""
    pred, target = _reg_pair(pred, target, "mse")
    return float(np.mean((pred - target) ** 2))


def mae(pred, target) -> float:
    """Mean absolute error ``mean(|pred - target|)``."""
    pred, target = _reg_pair(pred, target, "mae")
    return float(np.mean(np.abs(pred - target)))


def rmse(pred, target) -> float:
    """Root mean squared error ``sqrt(mse)``."""
    return float(np.sqrt(mse(pred, target)))
