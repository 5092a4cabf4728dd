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
    assert M.accuracy(Y, P) == pytest.approx(5 / 8)
    logits = np.eye(3)[P] * 3.0 - 1.0
    assert M.accuracy(backend.asarray(Y), backend.asarray(logits)) == pytest.approx(5 / 8)
    assert isinstance(M.accuracy(Y, P), float)
    # (N, C, T) scores against (N, T) labels
    scores = np.zeros((2, 3, 4))
    labels = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    scores[np.arange(2)[:, None], labels, np.arange(4)[None, :]] = 1.0
    assert M.accuracy(labels, scores) == 1.0


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
    assert M.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
    for ours, theirs in ((M.precision, sk.precision_score), (M.recall, sk.recall_score),
                         (M.f1_score, sk.f1_score)):
        assert ours(y, p) == pytest.approx(theirs(y, p, average="macro", zero_division=0))
    np.testing.assert_array_equal(M.confusion_matrix(y, p, 4), sk.confusion_matrix(y, p))


def test_regression_metrics(backend):
    pred = backend.asarray(np.array([1.0, 2.0, 4.0]))
    target = np.array([1.0, 3.0, 2.0])
    assert M.mse(target, pred) == pytest.approx(5 / 3)
    assert M.mae(target, pred) == pytest.approx(1.0)
    assert M.rmse(target, pred) == pytest.approx(np.sqrt(5 / 3))
    assert isinstance(M.mse(target, pred), float)


def test_errors():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        M.accuracy(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="average"):
        M.precision(Y, P, average="samples")
    with pytest.raises(TypeError, match="integer"):
        M.accuracy(np.array([0, 1]), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        M.mse(np.zeros(3), np.zeros(4))
    assert nnx.metrics is M


# ------------------------------------------------------------------ issue 13
def test_argument_order_is_y_true_then_y_pred():
    logits = np.eye(3)[P] * 2.0
    assert M.accuracy(Y, logits) == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match=r"takes \(y_true, y_pred\).*swap"):
        M.accuracy(logits, Y)                       # the old (pred, labels) order
    with pytest.raises(ValueError, match=r"swap"):
        M.f1_score(logits, Y)
    import inspect
    for fn in (M.accuracy, M.precision, M.recall, M.f1_score, M.confusion_matrix, M.mse,
               M.mae, M.rmse, M.top_k_accuracy):
        first = list(inspect.signature(fn).parameters)[:2]
        assert first[0] == "y_true" and first[1] in ("y_pred", "y_score"), fn.__name__


def test_weighted_and_micro_by_hand():
    f1 = np.array([2 / 3, 2 / 3, 1 / 2])            # per class, supports 3, 3, 2
    assert M.f1_score(Y, P, average="weighted") == pytest.approx((3 * f1[:2].sum() + 0)
                                                                 / 8 + 2 * f1[2] / 8)
    for fn in (M.precision, M.recall, M.f1_score):  # single-label: micro = accuracy
        assert fn(Y, P, average="micro") == pytest.approx(5 / 8)


@pytest.mark.parametrize("average", ["micro", "weighted", "macro"])
def test_averages_against_sklearn(rng, average):
    sk = pytest.importorskip("sklearn.metrics")
    for trial in range(5):
        c = int(rng.integers(2, 7))
        y = rng.integers(0, c, 150)
        p = np.where(rng.random(150) < 0.5, y, rng.integers(0, c, 150))
        if trial == 0:
            p[p == c - 1] = 0                       # a class never predicted
        for ours, theirs in ((M.precision, sk.precision_score), (M.recall, sk.recall_score),
                             (M.f1_score, sk.f1_score)):
            assert ours(y, p, average=average) == pytest.approx(
                theirs(y, p, average=average, zero_division=0), rel=1e-12, abs=1e-15)


def test_top_k_accuracy(rng, backend):
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5]])
    y = np.array([2, 1, 0, 0])
    # ranks of the true class: 2nd, 2nd, tie for 2nd (class 1 wins: higher index), 3rd
    assert M.top_k_accuracy(y, scores, k=1) == 0.0
    assert M.top_k_accuracy(y, backend.asarray(scores), k=2) == pytest.approx(0.5)
    assert M.top_k_accuracy(y, scores, k=3) == 1.0 and M.top_k_accuracy(y, scores, k=9) == 1.0
    z = rng.standard_normal((200, 10))
    labels = rng.integers(0, 10, 200)
    assert M.top_k_accuracy(labels, z, k=1) == M.accuracy(labels, z)
    with pytest.raises(ValueError, match="outside"):
        M.top_k_accuracy(np.array([0, 3]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k must be"):
        M.top_k_accuracy(y, scores, k=0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        M.top_k_accuracy(scores, y)


def test_top_k_accuracy_against_sklearn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    for k in (1, 2, 3, 5):
        scores = rng.standard_normal((300, 6))
        scores[:50] = np.round(scores[:50])          # ties: the same tie-break as sklearn
        y = rng.integers(0, 6, 300)
        assert M.top_k_accuracy(y, scores, k=k) == pytest.approx(
            sk.top_k_accuracy_score(y, scores, k=k, labels=np.arange(6)), abs=1e-15)
