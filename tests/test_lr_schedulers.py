"""MultiStepLR, ExponentialLR, LambdaLR, CosineAnnealingWarmRestarts, SequentialLR and
ReduceLROnPlateau: by hand, against torch.optim.lr_scheduler over many steps, and through
state_dict / nnx.save round trips."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import nnx
from nnx.nn import Parameter
from nnx.optim import SGD
from nnx.optim import lr_scheduler as S

EPS = np.finfo(np.float64).eps


def _opt(lr=0.1):
    return SGD([Parameter(np.zeros(1))], lr=lr, momentum=0.9)


def _run(sched, opt, n, metrics=None):
    """lrs after construction and after each of ``n`` steps."""
    out = [opt.param_groups[0]["lr"]]
    for t in range(n):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[t])
        out.append(opt.param_groups[0]["lr"])
        assert sched.get_last_lr()[0] == out[-1]
    return out


def test_closed_forms_by_hand():
    opt = _opt(1.0)
    assert _run(S.MultiStepLR(opt, [2, 5, 5], gamma=0.5), opt, 6) == [1, 1, .5, .5, .5,
                                                                       .125, .125]
    opt = _opt(1.0)
    np.testing.assert_allclose(_run(S.ExponentialLR(opt, 0.9), opt, 3), [1, .9, .81, .729],
                               rtol=4 * EPS)
    opt = _opt(2.0)
    assert _run(S.LambdaLR(opt, lambda t: 1 / (t + 1)), opt, 3) == [2, 1, 2 / 3, 0.5]
    opt = _opt(1.0)
    got = _run(S.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2), opt, 7)
    c = lambda tc, ti: (1 + math.cos(math.pi * tc / ti)) / 2      # noqa: E731
    # cycles of 2, 4, 8 steps: restarts at t = 2 and t = 6
    np.testing.assert_allclose(got, [1, c(1, 2), 1, c(1, 4), c(2, 4), c(3, 4), 1, c(1, 8)],
                               atol=4 * EPS)


def test_warmup_then_cosine_composes():
    """Issue 13: warm-up + cosine was pure cosine; SequentialLR runs each from its start."""
    opt = _opt(1.0)
    warm = S.LinearLR(opt, start_factor=0.25, total_iters=3)
    cos = S.CosineAnnealingLR(opt, T_max=4)
    got = _run(S.SequentialLR(opt, [warm, cos], milestones=[3]), opt, 8)
    expect = [0.25, 0.5, 0.75] + [(1 + math.cos(math.pi * u / 4)) / 2 for u in range(5)] + [
        (1 + math.cos(math.pi * 5 / 4)) / 2]
    np.testing.assert_allclose(got, expect, atol=4 * EPS)
    assert got[3] == 1.0                      # the cosine starts from the full lr


def _torch_pair(torch, make, lr=0.1, groups=1):
    tps = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(groups)]
    topt = torch.optim.SGD([{"params": [p]} for p in tps], lr=lr, momentum=0.9)
    opt = SGD([{"params": [Parameter(np.zeros(1))]} for _ in range(groups)], lr=lr,
              momentum=0.9)
    return make(torch.optim.lr_scheduler, topt), topt, make(S, opt), opt


def _lambda(t):
    return 0.97 ** t * (1 + 0.5 * math.sin(t))


# (name, factory, steps): factory(module, optimizer) builds the same schedule in either library
AGAINST_TORCH = [
    ("MultiStepLR", lambda L, o: L.MultiStepLR(o, milestones=[7, 30, 30, 81], gamma=0.6), 120),
    ("ExponentialLR", lambda L, o: L.ExponentialLR(o, gamma=0.98), 200),
    ("LambdaLR", lambda L, o: L.LambdaLR(o, lr_lambda=_lambda), 150),
    ("LambdaLR-groups", lambda L, o: L.LambdaLR(o, [_lambda, lambda t: 1 / (1 + t)]), 60),
    ("WarmRestarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=1e-3), 150),
    ("WarmRestarts-Tmult", lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, T_mult=2), 200),
    ("Sequential-warmup-cosine", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.01, total_iters=10),
            L.CosineAnnealingLR(o, T_max=90, eta_min=1e-4)], milestones=[10]), 120),
    ("Sequential-three", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.5, total_iters=5), L.ExponentialLR(o, 0.9),
            L.StepLR(o, step_size=4, gamma=0.5)], milestones=[5, 25]), 60),
]


@pytest.mark.torch
@pytest.mark.parametrize("name,make,n", AGAINST_TORCH, ids=[a[0] for a in AGAINST_TORCH])
def test_against_torch_over_many_steps(name, make, n):
    torch = pytest.importorskip("torch")
    groups = 2 if name.endswith("groups") else 1
    tsched, topt, sched, opt = _torch_pair(torch, make, groups=groups)
    # PyTorch updates most of these recursively (lr *= ratio each step), nnx in closed form:
    # each recursive step rounds once (<= eps/2 relative), and the cosine ratio's 1 + cos
    # loses at most ~eps / (1 + cos) near the trough, bounded by 1e-10 at T_max = 90; atol
    # covers lr values that reach ~0.
    for t in range(n + 1):
        for g, tg in zip(opt.param_groups, topt.param_groups):
            np.testing.assert_allclose(g["lr"], tg["lr"], rtol=(t + 4) * 4 * EPS + 1e-10 *
                                       name.startswith("Seq"), atol=1e-15, err_msg=f"step {t}")
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-10,
                                   atol=1e-15)
        topt.step()
        opt.step()
        tsched.step()
        sched.step()


@pytest.mark.torch
def test_warm_restarts_fractional_epochs_against_torch():
    torch = pytest.importorskip("torch")
    make = lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.01)  # noqa
    tsched, topt, sched, opt = _torch_pair(torch, make)
    iters = 7
    for epoch in range(12):
        for i in range(iters):                      # PyTorch's per-batch recipe
            tsched.step(epoch + i / iters)
            sched.step(epoch + i / iters)
            np.testing.assert_allclose(opt.param_groups[0]["lr"], topt.param_groups[0]["lr"],
                                       rtol=1e-13, atol=1e-16)
    for _ in range(10):                             # then plain steps continue from there
        tsched.step()
        sched.step()
        assert sched.last_epoch == tsched.last_epoch
        np.testing.assert_allclose(opt.param_groups[0]["lr"], topt.param_groups[0]["lr"],
                                   rtol=1e-13, atol=1e-16)


PLATEAU = [dict(), dict(mode="max", factor=0.5, patience=2), dict(patience=0, cooldown=3),
           dict(threshold=0.05, threshold_mode="abs", patience=1, min_lr=0.004),
           dict(mode="max", threshold_mode="abs", threshold=0.01, patience=3, cooldown=1,
                factor=0.3, min_lr=[1e-3, 5e-3], eps=1e-4)]


@pytest.mark.torch
@pytest.mark.parametrize("kw", PLATEAU)
def test_reduce_on_plateau_against_torch(kw, rng):
    torch = pytest.importorskip("torch")
    groups = 2 if isinstance(kw.get("min_lr"), list) else 1
    tsched, topt, sched, opt = _torch_pair(
        torch, lambda L, o: L.ReduceLROnPlateau(o, **kw), groups=groups)
    # a noisy loss curve with plateaus: improving, flat, worse, improving again
    trend = np.concatenate([np.linspace(2, 1, 30), np.full(40, 1.0), np.linspace(1, 1.2, 20),
                            np.linspace(1.2, 0.5, 30)])
    metrics = trend + 0.02 * rng.standard_normal(len(trend))
    reductions = 0
    for m in metrics:
        before = opt.param_groups[0]["lr"]
        tsched.step(float(m))
        sched.step(m)
        reductions += opt.param_groups[0]["lr"] != before
        # both compute max(lr * factor, min_lr) on the same Python floats: equal exactly
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
        assert (sched.best, sched.num_bad_epochs, sched.cooldown_counter) == (
            tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter)
    assert reductions >= 2                            # the plateaus were exercised


def test_reduce_on_plateau_by_hand_and_errors():
    opt = _opt(1.0)
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, min_lr=0.2)
    got = _run(sched, opt, 7, metrics=[3, 2, 2, 2, 2, 2, 2])
    # bad epochs: t=2 (1), t=3 (2 > patience: halve), t=4 (1), t=5 (halve), t=6, t=7 (floor)
    assert got == [1, 1, 1, 1, .5, .5, .25, .25]
    for m in [0.2] * 4:
        sched.step(m)
    assert opt.param_groups[0]["lr"] == 0.2
    with pytest.raises(ValueError, match="Factor"):
        S.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        S.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="threshold_mode"):
        S.ReduceLROnPlateau(opt, threshold_mode="pct")


def test_sequential_errors():
    opt = _opt()
    a, b = S.ExponentialLR(opt, 0.9), S.StepLR(opt, 2)
    with pytest.raises(ValueError, match="one milestone fewer"):
        S.SequentialLR(opt, [a, b], milestones=[2, 4])
    with pytest.raises(ValueError, match="same optimizer"):
        S.SequentialLR(opt, [a, S.StepLR(_opt(), 2)], milestones=[2])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        S.SequentialLR(opt, [a, S.ReduceLROnPlateau(opt)], milestones=[2])
    with pytest.raises(ValueError, match="T_0"):
        S.CosineAnnealingWarmRestarts(opt, T_0=0)
    with pytest.raises(ValueError, match="lr_lambdas"):
        S.LambdaLR(opt, [_lambda, _lambda])


class _Decay:
    """A callable object: LambdaLR's state_dict keeps its attributes."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, t):
        return self.rate ** t


ROUND_TRIP = [
    lambda o: S.MultiStepLR(o, [3, 6]),
    lambda o: S.ExponentialLR(o, 0.8),
    lambda o: S.LambdaLR(o, _Decay(0.9)),
    lambda o: S.CosineAnnealingWarmRestarts(o, 4, T_mult=3, eta_min=0.01),
    lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=4),
                                 S.CosineAnnealingLR(o, 10)], [4]),
    lambda o: S.ReduceLROnPlateau(o, patience=1, cooldown=1),
]


@pytest.mark.parametrize("k", range(len(ROUND_TRIP)))
def test_state_dict_round_trip_continues_identically(k, tmp_path):
    make = ROUND_TRIP[k]
    plateau = k == len(ROUND_TRIP) - 1
    metrics = [3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    opt = _opt()
    sched = make(opt)
    first = _run(sched, opt, 6, metrics[:6] if plateau else None)
    state = json.loads(json.dumps(sched.state_dict()))          # JSON-able
    rest = _run(sched, opt, 8, metrics[6:] if plateau else None)[1:]
    opt2 = _opt()
    sched2 = make(opt2)
    if k == 2:
        sched2.lr_lambdas[0].rate = 0.5                # restored from the state
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = first[-1]             # the optimizer's own state
    assert _run(sched2, opt2, 8, metrics[6:] if plateau else None)[1:] == rest


@pytest.mark.parametrize("k", [4, 5])
def test_checkpoint_saves_composite_scheduler_state(k, tmp_path):
    from nnx import nn
    make = ROUND_TRIP[k]
    model = nn.Linear(2, 1)
    opt = SGD(model.parameters(), lr=0.1)
    sched = make(opt)
    step = (lambda: sched.step(1.0)) if k == 5 else sched.step
    for _ in range(5):
        step()
    nnx.save(tmp_path / "ck.npz", model, opt, sched, epoch=5)
    expected = [step() or opt.param_groups[0]["lr"] for _ in range(6)]
    model2 = nn.Linear(2, 1)
    opt2 = SGD(model2.parameters(), lr=0.1)
    sched2 = make(opt2)
    step2 = (lambda: sched2.step(1.0)) if k == 5 else sched2.step
    nnx.load(tmp_path / "ck.npz", model2, opt2, sched2)
    assert [step2() or opt2.param_groups[0]["lr"] for _ in range(6)] == expected


LAST_EPOCH = [
    lambda o, **kw: S.MultiStepLR(o, [3, 6], **kw),
    lambda o, **kw: S.ExponentialLR(o, 0.8, **kw),
    lambda o, **kw: S.LambdaLR(o, _Decay(0.9), **kw),
    lambda o, **kw: S.CosineAnnealingWarmRestarts(o, 4, T_mult=3, eta_min=0.01, **kw),
]


@pytest.mark.parametrize("make", LAST_EPOCH, ids=["multistep", "exp", "lambda", "sgdr"])
def test_last_epoch_continues_the_schedule(make):
    opt = _opt()
    ref = _run(make(opt), opt, 12)
    opt2 = _opt()
    opt2.param_groups[0]["initial_lr"] = 0.1
    assert _run(make(opt2, last_epoch=5), opt2, 6) == ref[6:]
