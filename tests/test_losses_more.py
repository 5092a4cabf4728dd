"""NLLLoss, CrossEntropyLoss(weight=), HuberLoss, SmoothL1Loss, KLDivLoss: the layer harness
(float64 gradcheck of the prediction's gradient, called twice, dtype, strides, CPU vs
simulated CUDA), PyTorch as an oracle; and the upstream-gradient argument of every loss's
``backward`` (``crit.backward(loss)`` is an error, not a silent rescaling)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from layer_harness import check_layer
from nnx import nn
from nnx.nn.loss import _Loss
from nnx.nn.sequence_loss import SequenceCrossEntropyLoss, SequenceMSELoss
from tolerances import gamma

REDUCTIONS = ["mean", "sum", "none"]


def _harness(make, inputs, cuda_too):
    check_layer(lambda dt: make(), inputs, check_inputs=[0],
                skip=() if cuda_too else ("cpu_vs_cuda",))


def _torch_compare(backend, crit, tcrit, x, target, rtol):
    """Loss value and ``dL/dx`` for a random upstream gradient, against PyTorch (float64)."""
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tl = tcrit(tx, torch.tensor(target))
    R = np.random.default_rng(9).standard_normal(tuple(tl.shape))
    tl.backward(torch.tensor(R))
    out = crit(backend.asarray(x), backend.asarray(target))
    grad = crit.backward(backend.asarray(R) if R.ndim else float(R))
    for what, got, want in (("loss", out, tl.detach()), ("grad", grad, tx.grad)):
        got, want = backend.to_numpy(got), want.numpy()
        assert got.shape == want.shape, what
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-300),
                                   err_msg=what)


# ---------------------------------------------------------------------- class losses
def _class_case(rng, shape, ignore=None):
    x = rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    if ignore is not None:
        labels.flat[0] = ignore
    return x, labels


CLASS_CASES = [  # shape, constructor keywords (weight: a random positive one)
    ((5, 4), dict()),
    ((5, 4), dict(weight=True)),
    ((3, 4, 2), dict(weight=True, ignore_index=1)),
    ((6, 3), dict(ignore_index=-100)),
]


def _class_kw(kw, c):
    kw = dict(kw)
    if kw.get("weight"):
        kw["weight"] = np.random.default_rng(4).uniform(0.2, 2.0, c)
    return kw


def _torch_class_kw(kw):
    """The same keywords for PyTorch (the weight as a tensor)."""
    torch = pytest.importorskip("torch")
    return dict(kw, weight=torch.tensor(kw["weight"])) if "weight" in kw else kw


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, kw", CLASS_CASES)
def test_nll_harness(backend, rng, reduction, shape, kw):
    x, y = _class_case(rng, shape, kw.get("ignore_index"))
    _harness(lambda: nn.NLLLoss(reduction=reduction, **_class_kw(kw, shape[1])), (x, y),
             reduction == "mean")


CE_WEIGHTED = [dict(weight=True), dict(weight=True, label_smoothing=0.15),
               dict(weight=True, ignore_index=0, label_smoothing=0.3)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", CE_WEIGHTED)
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_weighted_cross_entropy_harness(backend, rng, reduction, kw, shape):
    x, y = _class_case(rng, shape, kw.get("ignore_index"))
    _harness(lambda: nn.CrossEntropyLoss(reduction=reduction, **_class_kw(kw, shape[1])),
             (x * 3, y), reduction == "mean")


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, kw", CLASS_CASES)
def test_nll_against_torch(backend, rng, reduction, shape, kw):
    torch = pytest.importorskip("torch")
    x, y = _class_case(rng, shape, kw.get("ignore_index"))
    kw = _class_kw(kw, shape[1])
    tkw = _torch_class_kw(kw)
    # sums over at most N·d rows (and the weights' sum)
    _torch_compare(backend, nn.NLLLoss(reduction=reduction, **kw),
                   torch.nn.NLLLoss(reduction=reduction, **tkw), x, y, 4 * gamma(x.size, np.float64))


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", CE_WEIGHTED + [dict(label_smoothing=0.2, ignore_index=2)])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2)])
def test_weighted_cross_entropy_against_torch(backend, rng, reduction, kw, shape):
    torch = pytest.importorskip("torch")
    x, y = _class_case(rng, shape, kw.get("ignore_index"))
    kw = _class_kw(kw, shape[1])
    tkw = _torch_class_kw(kw)
    # log-sum-exp over C classes, the class-weighted sums over C, the sums over N·d rows
    _torch_compare(backend, nn.CrossEntropyLoss(reduction=reduction, **kw),
                   torch.nn.CrossEntropyLoss(reduction=reduction, **tkw), x * 3, y,
                   8 * gamma(x.size, np.float64))


def test_weighted_mean_divides_by_the_weights_of_the_counted_rows(backend):
    # hand-computed: two rows, labels 0 and 1 (row 2 ignored), weights 2 and 0.5
    x = backend.asarray(np.log(np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])))
    y = backend.asarray(np.array([0, 1, -100]))
    crit = nn.NLLLoss(weight=np.array([2.0, 0.5]))
    want = (2 * -np.log(0.5) + 0.5 * -np.log(0.8)) / 2.5
    assert float(crit(x, y)) == pytest.approx(want, rel=1e-14)
    assert set(crit.state_dict()) == {"weight"}            # a buffer, as PyTorch's
    assert float(nn.CrossEntropyLoss(np.array([2.0, 0.5]))(x, y)) == pytest.approx(want,
                                                                                   rel=1e-14)


def test_class_loss_errors(backend):
    x, y = np.zeros((2, 3)), np.array([0, 3])
    with pytest.raises(ValueError, match=r"NLLLoss: label 3 is outside \[0, 3\)"):
        nn.NLLLoss()(x, y)
    with pytest.raises(ValueError, match="weight has 2 entries for 3 classes"):
        nn.CrossEntropyLoss(weight=np.ones(2))(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="1-D float array"):
        nn.NLLLoss(weight=np.ones((2, 2)))
    with pytest.raises(TypeError, match="integer class labels"):
        nn.NLLLoss()(x, np.array([0.0, 1.0]))


# ---------------------------------------------------------------------- Huber, SmoothL1
def _regression_pair(rng, kink):
    pred = rng.standard_normal((4, 3))
    # |diff| spread on both sides of the kink but away from it (finite differences)
    mag = np.where(rng.random((4, 3)) < 0.5, rng.uniform(0.1, 0.8, (4, 3)),
                   rng.uniform(1.2, 3.0, (4, 3))) * kink
    return pred, pred + rng.choice([-1, 1], (4, 3)) * mag


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, kw, kink", [("HuberLoss", dict(delta=1.0), 1.0),
                                            ("HuberLoss", dict(delta=0.5), 0.5),
                                            ("SmoothL1Loss", dict(beta=1.0), 1.0),
                                            ("SmoothL1Loss", dict(beta=2.0), 2.0),
                                            ("SmoothL1Loss", dict(beta=0.0), 1.0)])
def test_huber_smooth_l1(backend, rng, reduction, name, kw, kink):
    x, y = _regression_pair(rng, kink)
    _harness(lambda: getattr(nn, name)(reduction=reduction, **kw), (x, y),
             reduction == "mean")


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, kw", [("HuberLoss", dict(delta=0.7)),
                                      ("SmoothL1Loss", dict(beta=1.5)),
                                      ("SmoothL1Loss", dict(beta=0.0))])
def test_huber_smooth_l1_against_torch(backend, rng, reduction, name, kw):
    torch = pytest.importorskip("torch")
    x, y = _regression_pair(rng, 1.0)
    # element-wise, then one sum of 12 terms
    _torch_compare(backend, getattr(nn, name)(reduction=reduction, **kw),
                   getattr(torch.nn, name)(reduction=reduction, **kw), x, y,
                   4 * gamma(x.size, np.float64))


def test_huber_errors(backend):
    with pytest.raises(ValueError, match="delta must be positive"):
        nn.HuberLoss(delta=0)
    with pytest.raises(ValueError, match="beta must be non-negative"):
        nn.SmoothL1Loss(beta=-1)


# ---------------------------------------------------------------------- KLDivLoss
def _kl_pair(rng, log_target):
    logq = rng.standard_normal((4, 5))
    logq -= np.log(np.exp(logq).sum(axis=1, keepdims=True))
    p = rng.dirichlet(np.ones(5), 4)
    p[0, 1] = 0.0                       # a zero target probability: contributes 0
    return logq, (np.log(p + 1e-3) if log_target else p)


KL_REDUCTIONS = ["batchmean", "sum", "none", "mean"]


@pytest.mark.filterwarnings("ignore:KLDivLoss")
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(backend, rng, reduction, log_target):
    x, t = _kl_pair(rng, log_target)
    _harness(lambda: nn.KLDivLoss(reduction=reduction, log_target=log_target), (x, t),
             reduction == "batchmean")


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:reduction")
@pytest.mark.filterwarnings("ignore:KLDivLoss")
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_against_torch(backend, rng, reduction, log_target):
    torch = pytest.importorskip("torch")
    x, t = _kl_pair(rng, log_target)
    _torch_compare(backend, nn.KLDivLoss(reduction=reduction, log_target=log_target),
                   torch.nn.KLDivLoss(reduction=reduction, log_target=log_target), x, t,
                   4 * gamma(x.size, np.float64))


def test_kl_div_batchmean_and_mean(backend, rng):
    x, p = _kl_pair(rng, False)
    kl = float(nn.KLDivLoss(reduction="batchmean")(x, p))
    rows = [sum(pi * (np.log(pi) - xi) for pi, xi in zip(pr, xr) if pi > 0)
            for pr, xr in zip(p, x)]
    assert kl == pytest.approx(np.mean(rows), rel=1e-13)      # the KL divergence per sample
    with pytest.warns(UserWarning, match="batchmean"):
        mean = float(nn.KLDivLoss()(x, p))
    assert mean == pytest.approx(kl / 5, rel=1e-13)           # ÷ all 20 elements
    with pytest.raises(ValueError, match="reduction"):
        nn.KLDivLoss(reduction="batchsum")


# ---------------------------------------------------------------------- backward(loss)
def _every_loss(backend, rng):
    """(criterion, prediction, target) for each loss class (no warnings)."""
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    labels = rng.integers(0, 3, 4)
    p = rng.uniform(0.1, 0.9, (4, 3))
    return [(nn.MSELoss(), x, y), (nn.L1Loss(), x, y), (nn.BCELoss(), p, p[::-1].copy()),
            (nn.BCEWithLogitsLoss(), x, p), (nn.CrossEntropyLoss(), x, labels),
            (nn.CrossEntropyLoss(weight=np.ones(3)), x, labels), (nn.NLLLoss(), x, labels),
            (nn.HuberLoss(), x, y), (nn.SmoothL1Loss(), x, y),
            (nn.KLDivLoss(reduction="batchmean"), x, p),
            (SequenceMSELoss(), x[None], y[None]),
            (SequenceCrossEntropyLoss(), x[None], labels[None])]


def test_every_loss_is_covered():
    covered = {type(c).__name__ for c, _, _ in _every_loss(None, np.random.default_rng(0))}
    subclasses, todo = set(), list(_Loss.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if not cls.__name__.startswith("_"):
            subclasses.add(cls.__name__)
    assert subclasses <= covered, subclasses - covered


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_of_the_loss_itself_is_an_error(backend, rng, reduction):
    """``crit.backward(loss)`` would scale every gradient by the loss value: it raises,
    naming the fix; ``backward()`` and ``backward(1.0)`` give ``dL/dpred``."""
    for crit, x, y in _every_loss(backend, rng):
        if reduction == "none" and hasattr(crit, "reduction") and \
                crit.reduction != "batchmean":
            crit.reduction = "none"
        loss = crit(backend.asarray(x), backend.asarray(y))
        name = type(crit).__name__
        with pytest.raises(TypeError, match=rf"{name}.backward\(grad\) takes the upstream "
                                            rf"gradient.*call {name}.backward\(\) instead"):
            crit.backward(loss)
        g1 = backend.to_numpy(crit.backward(retain_graph=True))   # the record is intact
        g2 = backend.to_numpy(crit.backward(None if reduction == "none" else 1.0))
        np.testing.assert_array_equal(g1, g2)        # same code path: exact
        assert "upstream gradient" in type(crit).backward.__doc__


def test_an_upstream_gradient_scales(backend, rng):
    # a real upstream gradient (here 3: L_total = 3·loss) still works, and a copy of the
    # loss's value is an upstream gradient like any other (only the returned array is refused)
    crit = nn.MSELoss()
    x, y = backend.asarray(rng.standard_normal((3, 2))), backend.asarray(rng.standard_normal((3, 2)))
    loss = crit(x, y)
    g = backend.to_numpy(crit.backward(3.0, retain_graph=True))
    np.testing.assert_allclose(g, 3 * backend.to_numpy(crit.backward(retain_graph=True)),
                               rtol=4 * np.finfo(float).eps)
    np.testing.assert_allclose(backend.to_numpy(crit.backward(float(loss))),
                               float(loss) * g / 3, rtol=8 * np.finfo(float).eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit(x, y)                                   # no warning from the check
