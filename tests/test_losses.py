"""The losses through the layer harness (gradchecks of the prediction's gradient, called
twice, dtype, strides, CPU vs CUDA), PyTorch comparisons; stability and errors."""
from __future__ import annotations

import numpy as np
import pytest

from layer_harness import check_layer
from nnx import nn

REDUCTIONS = ["mean", "sum", "none"]


def check_loss(make, pred_and_target, second, first_config):
    """The harness for a loss: only the prediction (argument 0) gets a gradient."""
    check_layer(lambda dt: make(), pred_and_target, second=second, check_inputs=[0],
                skip=() if first_config else ("cpu_vs_cuda",))


def _regression_pair(rng):
    pred = rng.standard_normal((4, 3))
    target = pred + rng.choice([-1, 1], (4, 3)) * rng.uniform(0.1, 1.0, (4, 3))  # no kinks
    return pred, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cls", [nn.MSELoss, nn.L1Loss])
def test_regression_losses(backend, rng, cls, reduction):
    check_loss(lambda: cls(reduction=reduction), _regression_pair(rng), _regression_pair(rng),
               reduction == "mean")


def _bce_pair(rng):
    return rng.uniform(0.05, 0.95, (5, 2)), rng.uniform(0, 1, (5, 2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce(backend, rng, reduction):
    check_loss(lambda: nn.BCELoss(reduction=reduction), _bce_pair(rng), _bce_pair(rng),
               reduction == "mean")


def _logits_pair(rng):
    return rng.standard_normal((3, 4)) * 3, (rng.random((3, 4)) > 0.5).astype(np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits(backend, rng, reduction):
    check_loss(lambda: nn.BCEWithLogitsLoss(reduction=reduction), _logits_pair(rng),
               _logits_pair(rng), reduction == "mean")


CE_CASES = [
    dict(),
    dict(label_smoothing=0.1),
    dict(ignore_index=2),
    dict(ignore_index=-100, label_smoothing=0.2),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", CE_CASES)
@pytest.mark.parametrize("shape", [(5, 4), (1, 4), (2, 4, 3)])
def test_cross_entropy(backend, rng, reduction, kw, shape):
    z = rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    if "ignore_index" in kw and labels.size > 1:
        labels.flat[0] = kw["ignore_index"]
    check_loss(lambda: nn.CrossEntropyLoss(reduction=reduction, **kw), (z, labels), None,
               reduction == "mean" and not kw and shape == (2, 4, 3))


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", CE_CASES)
def test_cross_entropy_against_torch(backend, rng, reduction, kw):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((4, 5, 3))
    labels = rng.integers(0, 5, (4, 3))
    labels[0, 0] = kw.get("ignore_index", -100) if "ignore_index" in kw else labels[0, 0]
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(labels), reduction=reduction, **kw)
    R = rng.standard_normal(tl.shape)
    tl.backward(torch.tensor(R))
    crit = nn.CrossEntropyLoss(reduction=reduction, **kw)
    out = crit(backend.asarray(z), backend.asarray(labels))
    np.testing.assert_allclose(backend.to_numpy(out), tl.detach().numpy(), rtol=1e-10)
    grad = crit.backward(backend.asarray(R) if R.ndim else float(R))
    np.testing.assert_allclose(backend.to_numpy(grad), tz.grad.numpy(), rtol=1e-10,
                               atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["MSELoss", "L1Loss", "BCELoss", "BCEWithLogitsLoss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elementwise_losses_against_torch(backend, rng, name, reduction):
    torch = pytest.importorskip("torch")
    x = rng.uniform(0.05, 0.95, (3, 4)) if name == "BCELoss" else rng.standard_normal((3, 4))
    y = rng.uniform(0, 1, (3, 4))
    tx = torch.tensor(x, requires_grad=True)
    tl = getattr(torch.nn, name)(reduction=reduction)(tx, torch.tensor(y))
    R = rng.standard_normal(tl.shape)
    tl.backward(torch.tensor(R))
    crit = getattr(nn, name)(reduction=reduction)
    out = crit(backend.asarray(x), backend.asarray(y))
    np.testing.assert_allclose(backend.to_numpy(out), tl.detach().numpy(), rtol=1e-10)
    grad = crit.backward(backend.asarray(R) if R.ndim else float(R))
    np.testing.assert_allclose(backend.to_numpy(grad), tx.grad.numpy(), rtol=1e-10)


def test_huge_logits_are_stable(backend):
    z = backend.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32))
    labels = backend.asarray(np.array([1, 1]))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = float(crit(z, labels))
    g = backend.to_numpy(crit.backward())
    assert np.isfinite(loss) and np.isfinite(g).all()
    # row 0: 0.9*(1e4 - -1e4) + 0.1*(lse - mean z) = 18000 + 1000; row 1: 0 + 0.1*(1e4 - 5e3/3)
    assert loss == pytest.approx((19000 + 0.1 * (1e4 - 5e3 / 3)) / 2, rel=1e-4)
    bce = nn.BCEWithLogitsLoss()
    x = backend.asarray(np.array([1e4, -1e4, 1e4], dtype=np.float32))
    y = backend.asarray(np.array([0.0, 1.0, 1.0], dtype=np.float32))
    loss = float(bce(x, y))
    assert np.isfinite(loss) and loss == pytest.approx(2e4 / 3, rel=1e-5)
    assert np.isfinite(backend.to_numpy(bce.backward())).all()
    p = backend.asarray(np.array([0.0, 1.0], dtype=np.float32))
    t = backend.asarray(np.array([1.0, 0.0], dtype=np.float32))
    b = nn.BCELoss()
    assert float(b(p, t)) == pytest.approx(100.0)   # log clamped at -100, as PyTorch
    assert np.isfinite(backend.to_numpy(b.backward())).all()


def test_cross_entropy_huge_logits_value(backend):
    z = backend.asarray(np.array([[1e4, 0.0, -1e4]]))
    crit = nn.CrossEntropyLoss()
    assert float(crit(z, backend.asarray(np.array([1])))) == pytest.approx(1e4)
    assert float(crit(z, backend.asarray(np.array([0])))) == pytest.approx(0.0, abs=1e-12)


def test_all_ignored_gives_zero(backend):
    z = backend.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    crit = nn.CrossEntropyLoss()
    loss = crit(z, backend.asarray(np.array([-100, -100, -100])))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(backend.to_numpy(crit.backward()), 0.0)


def test_clear_errors(backend):
    z = backend.asarray(np.zeros((3, 4), np.float32))
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="label 4 is outside"):
        ce(z, backend.asarray(np.array([0, 4, 1])))
    with pytest.raises(ValueError, match="label -2 is outside"):
        ce(z, backend.asarray(np.array([0, -2, 1])))
    with pytest.raises(TypeError, match="integer class labels"):
        ce(z, backend.asarray(np.array([0.0, 1.0, 1.0])))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\).*\(2,\)"):
        ce(z, backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"\(N, C"):
        ce(backend.asarray(np.zeros(4, np.float32)), backend.asarray(np.array([0])))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        nn.MSELoss()(z, backend.asarray(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="probabilities"):
        nn.BCELoss()(backend.asarray(np.array([1.5])), backend.asarray(np.array([1.0])))
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()


@pytest.mark.parametrize("crit", [nn.MSELoss(), nn.L1Loss(), nn.BCEWithLogitsLoss(),
                                  nn.MSELoss(reduction="sum")])
def test_reduced_loss_is_a_0d_backend_array(backend, rng, crit):
    x = rng.random((3, 4)).astype(np.float32)
    loss = crit(x, rng.random((3, 4)).astype(np.float32))
    assert backend.is_native(loss) and loss.ndim == 0 and loss.dtype == np.float32
    ce = nn.CrossEntropyLoss()(x, np.array([0, 3, 1]))
    assert backend.is_native(ce) and ce.ndim == 0
    assert float(ce) > 0
