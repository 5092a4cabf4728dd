"""Classification and regression metrics against hand counts (and sklearn if present)."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import metrics as M

Y = np.array([0, 0, 1, 1, 1, 2, 2, 0])
P = np.array([0, 1, 1, 1, 2, 2, 0, 0])
# confusion (rows true, cols pred): class0: [2,1,0]  class1: [0,2,1]  class2: [1,0,1]
CM = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 1]])


def test_confusion_matrix():
    m = M.confusion_matrix(Y, P, num_classes=3)
    np.testing.assert_array_equal(m, CM)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(M.confusion_matrix(Y, P, num_classes=4)[:3, :3], CM)
    np.testing.assert_array_equal(M.confusion_matrix(Y, P), CM)


def test_accuracy_labels_and_logits(backend):
    assert M.accuracy(P, Y) == pytest.approx(5 / 8)
    logits = np.eye(3)[P] * 3.0 - 1.0
    assert M.accuracy(backend.asarray(logits), backend.asarray(Y)) == pytest.approx(5 / 8)
    assert isinstance(M.accuracy(P, Y), float)
    # (N, C, T) scores against (N, T) labels
    scores = np.zeros((2, 3, 4))
    labels = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    scores[np.arange(2)[:, None], labels, np.arange(4)[None, :]] = 1.0
    assert M.accuracy(scores, labels) == 1.0


def test_precision_recall_f1_by_hand():
    prec = np.array([2 / 3, 2 / 3, 1 / 2])   # column sums 3, 3, 2
    rec = np.array([2 / 3, 2 / 3, 1 / 2])    # row sums 3, 3, 2
    f1 = 2 * prec * rec / (prec + rec)
    np.testing.assert_allclose(M.precision(Y, P, average=None), prec)
    np.testing.assert_allclose(M.recall(Y, P, average=None), rec)
    np.testing.assert_allclose(M.f1_score(Y, P, average=None), f1)
    assert M.precision(Y, P) == pytest.approx(prec.mean())
    assert M.recall(Y, P) == pytest.approx(rec.mean())
    assert M.f1_score(Y, P) == pytest.approx(f1.mean())
    assert M.f1 is M.f1_score


def test_zero_division_is_zero():
    y = np.array([0, 0, 1])
    p = np.array([0, 0, 0])   # class 1 never predicted
    np.testing.assert_allclose(M.precision(y, p, average=None), [2 / 3, 0.0])
    np.testing.assert_allclose(M.recall(y, p, average=None), [1.0, 0.0])
    np.testing.assert_allclose(M.f1_score(y, p, average=None), [0.8, 0.0])


def test_against_sklearn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    assert M.accuracy(p, y) == pytest.approx(sk.accuracy_score(y, p))
    for ours, theirs in ((M.precision, sk.precision_score), (M.recall, sk.recall_score),
                         (M.f1_score, sk.f1_score)):
        assert ours(y, p) == pytest.approx(theirs(y, p, average="macro", zero_division=0))
    np.testing.assert_array_equal(M.confusion_matrix(y, p, 4), sk.confusion_matrix(y, p))


def test_regression_metrics(backend):
    pred = backend.asarray(np.array([1.0, 2.0, 4.0]))
    target = np.array([1.0, 3.0, 2.0])
    assert M.mse(pred, target) == pytest.approx(5 / 3)
    assert M.mae(pred, target) == pytest.approx(1.0)
    assert M.rmse(pred, target) == pytest.approx(np.sqrt(5 / 3))
    assert isinstance(M.mse(pred, target), float)


def test_errors():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        M.accuracy(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="average"):
        M.precision(Y, P, average="micro")
    with pytest.raises(TypeError, match="integer"):
        M.accuracy(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        M.mse(np.zeros(3), np.zeros(4))
    assert nnx.metrics is M
