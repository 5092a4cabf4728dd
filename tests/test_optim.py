"""Optimizers, clipping and schedulers: hand-computed updates (3 steps), PyTorch as an
optional oracle, and state_dict round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx.nn import Parameter
from nnx.optim import SGD, Adam, AdamW, RMSprop, clip_grad_norm_, clip_grad_value_
from nnx.optim import lr_scheduler as S

P0 = np.array([[0.5, -1.0, 2.0], [0.25, 3.0, -0.75]])
GRADS = [np.array([[0.1, -0.2, 0.3], [1.0, -0.5, 0.05]]),
         np.array([[-0.3, 0.4, 0.2], [0.6, 0.1, -0.9]]),
         np.array([[0.7, 0.0, -0.1], [-0.2, 0.3, 0.4]])]


def run_nnx(make_opt, be, steps=3, grads=GRADS):
    p = Parameter(be.asarray(P0.copy()))
    opt = make_opt([p])
    for g in grads[:steps]:
        p.grad = be.asarray(g.copy())
        opt.step()
    return be.to_numpy(p.data)


# ------------------------------------------------------------------ hand-computed references
def ref_sgd(lr, momentum=0.0, dampening=0.0, nesterov=False, wd=0.0):
    p, buf = P0.copy(), None
    for grad in GRADS:
        g = grad + wd * p
        if momentum:
            buf = g if buf is None else momentum * buf + (1 - dampening) * g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        p = p - lr * d
    return p


def ref_adam(lr, b1, b2, eps, wd=0.0, decoupled=False):
    p = P0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, grad in enumerate(GRADS, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
            g = grad
        else:
            g = grad + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def ref_rmsprop(lr, alpha, eps, wd=0.0, momentum=0.0, centered=False):
    p = P0.copy()
    s, a, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for grad in GRADS:
        g = grad + wd * p
        s = alpha * s + (1 - alpha) * g * g
        if centered:
            a = alpha * a + (1 - alpha) * g
            den = np.sqrt(s - a * a) + eps
        else:
            den = np.sqrt(s) + eps
        if momentum:
            buf = momentum * buf + g / den
            p = p - lr * buf
        else:
            p = p - lr * g / den
    return p


def test_sgd_plain_by_hand(backend):
    # θ_3 = θ_0 - lr (g_0 + g_1 + g_2), written out
    expected = P0 - 0.1 * (GRADS[0] + GRADS[1] + GRADS[2])
    np.testing.assert_allclose(run_nnx(lambda ps: SGD(ps, lr=0.1), backend), expected,
                               rtol=1e-12, atol=1e-12)


def test_sgd_momentum_pytorch_form_by_hand(backend):
    b, lr = 0.9, 0.1
    buf1 = GRADS[0]                      # first step: buf = g (no dampening)
    buf2 = b * buf1 + GRADS[1]
    buf3 = b * buf2 + GRADS[2]
    expected = P0 - lr * (buf1 + buf2 + buf3)
    got = run_nnx(lambda ps: SGD(ps, lr=lr, momentum=b), backend)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, ref_sgd(lr, b), rtol=1e-12)


def test_sgd_ema_momentum_by_hand(backend):
    # the seeds' EMA: v_0 = 0, v_{t+1} = b v_t + (1-b) g_t, θ -= lr v_{t+1}
    b, lr = 0.8, 0.05
    m1 = (1 - b) * GRADS[0]
    m2 = b * m1 + (1 - b) * GRADS[1]
    m3 = b * m2 + (1 - b) * GRADS[2]
    expected = P0 - lr * (m1 + m2 + m3)
    got = run_nnx(lambda ps: SGD(ps, lr=lr, momentum=b, ema_momentum=True), backend)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # PyTorch's dampening=b differs: its first buffer is g_0, undamped
    torch_form = run_nnx(lambda ps: SGD(ps, lr=lr, momentum=b, dampening=b), backend)
    np.testing.assert_allclose(torch_form, ref_sgd(lr, b, dampening=b), rtol=1e-12)
    assert not np.allclose(got, torch_form)


def test_sgd_dampening_by_hand(backend):
    # PyTorch's rule: buf_1 = g_0 (no dampening on the first step), then b buf + (1-d) g
    b, d, lr = 0.9, 0.5, 0.1
    buf1 = GRADS[0]
    buf2 = b * buf1 + (1 - d) * GRADS[1]
    buf3 = b * buf2 + (1 - d) * GRADS[2]
    got = run_nnx(lambda ps: SGD(ps, lr=lr, momentum=b, dampening=d), backend)
    np.testing.assert_allclose(got, P0 - lr * (buf1 + buf2 + buf3), rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("kw", [dict(momentum=0.9, dampening=0.5),
                                dict(momentum=0.7, dampening=0.7, weight_decay=0.05),
                                dict(momentum=0.9, dampening=0.2, maximize=True)])
def test_sgd_dampening_matches_torch(backend, rng, kw):
    torch = pytest.importorskip("torch")
    grads = [rng.standard_normal(P0.shape) for _ in range(6)]
    tp = torch.nn.Parameter(torch.tensor(P0.copy()))
    topt = torch.optim.SGD([tp], lr=0.1, **kw)
    for g in grads:
        tp.grad = torch.tensor(g.copy())
        topt.step()
    got = run_nnx(lambda ps: SGD(ps, lr=0.1, **kw), backend, steps=6, grads=grads)
    # six element-wise steps on O(1) values: a few float64 ulps apart at most
    np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_sgd_ema_momentum_refuses_dampening_and_nesterov():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="ema_momentum.*dampening"):
        SGD([p], lr=0.1, momentum=0.9, dampening=0.9, ema_momentum=True)
    with pytest.raises(ValueError, match="ema_momentum.*nesterov"):
        SGD([p], lr=0.1, momentum=0.9, nesterov=True, ema_momentum=True)
    opt = SGD([p], lr=0.1, momentum=0.9, ema_momentum=True)
    with pytest.raises(ValueError, match="dampening"):   # nor through a later param group
        opt.add_param_group({"params": [Parameter(np.zeros(1))], "dampening": 0.5})
    assert len(opt.param_groups) == 1


def test_sgd_ema_momentum_state_dict_round_trip(backend):
    p = Parameter(backend.asarray(P0.copy()))
    opt = SGD([p], lr=0.05, momentum=0.8, ema_momentum=True)
    p.grad = backend.asarray(GRADS[0].copy())
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["ema_momentum"] is True
    np.testing.assert_allclose(sd["state"][0]["momentum_buffer"], 0.2 * GRADS[0], rtol=1e-15)
    q = Parameter(backend.asarray(backend.to_numpy(p.data).copy()))
    opt2 = SGD([q], lr=0.05, momentum=0.8)   # the EMA flag comes back from the state dict
    opt2.load_state_dict(sd)
    for param, o in ((p, opt), (q, opt2)):
        param.grad = backend.asarray(GRADS[1].copy())
        o.step()
    np.testing.assert_array_equal(backend.to_numpy(q.data), backend.to_numpy(p.data))


def test_sgd_nesterov_and_weight_decay_by_hand(backend):
    b, lr, wd = 0.9, 0.1, 0.01
    p = P0.copy()
    g = GRADS[0] + wd * p
    buf = g
    p = p - lr * (g + b * buf)
    g = GRADS[1] + wd * p
    buf = b * buf + g
    p = p - lr * (g + b * buf)
    g = GRADS[2] + wd * p
    buf = b * buf + g
    p = p - lr * (g + b * buf)
    got = run_nnx(lambda ps: SGD(ps, lr=lr, momentum=b, nesterov=True, weight_decay=wd),
                  backend)
    np.testing.assert_allclose(got, p, rtol=1e-12, atol=1e-12)
    got = run_nnx(lambda ps: SGD(ps, lr=lr, weight_decay=wd), backend)
    np.testing.assert_allclose(got, ref_sgd(lr, wd=wd), rtol=1e-12)


def test_adam_by_hand(backend):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    # step 1 by hand: m̂ = g, v̂ = g², so θ_1 = θ_0 - lr g/(|g| + eps)
    one = run_nnx(lambda ps: Adam(ps, lr=lr), backend, steps=1)
    np.testing.assert_allclose(one, P0 - lr * GRADS[0] / (np.abs(GRADS[0]) + eps), rtol=1e-12)
    got = run_nnx(lambda ps: Adam(ps, lr=lr, betas=(b1, b2), eps=eps), backend)
    np.testing.assert_allclose(got, ref_adam(lr, b1, b2, eps), rtol=1e-12)
    got = run_nnx(lambda ps: Adam(ps, lr=lr, weight_decay=0.1), backend)
    np.testing.assert_allclose(got, ref_adam(lr, b1, b2, eps, wd=0.1), rtol=1e-12)


def test_adamw_by_hand(backend):
    lr, wd = 0.01, 0.1
    one = run_nnx(lambda ps: AdamW(ps, lr=lr, weight_decay=wd), backend, steps=1)
    np.testing.assert_allclose(
        one, P0 * (1 - lr * wd) - lr * GRADS[0] / (np.abs(GRADS[0]) + 1e-8), rtol=1e-12)
    got = run_nnx(lambda ps: AdamW(ps, lr=lr, weight_decay=wd), backend)
    np.testing.assert_allclose(got, ref_adam(lr, 0.9, 0.999, 1e-8, wd, True), rtol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"centered": True}, {"momentum": 0.9},
                                {"centered": True, "momentum": 0.5, "weight_decay": 0.1}])
def test_rmsprop_by_hand(backend, kw):
    lr, alpha, eps = 0.01, 0.99, 1e-8
    if not kw:  # step 1 by hand: s = (1-α) g², θ -= lr g / (sqrt(s) + eps)
        one = run_nnx(lambda ps: RMSprop(ps, lr=lr), backend, steps=1)
        g = GRADS[0]
        np.testing.assert_allclose(one, P0 - lr * g / (np.sqrt((1 - alpha) * g * g) + eps),
                                   rtol=1e-12)
    got = run_nnx(lambda ps: RMSprop(ps, lr=lr, alpha=alpha, eps=eps, **kw), backend)
    np.testing.assert_allclose(got, ref_rmsprop(lr, alpha, eps, kw.get("weight_decay", 0.0),
                                                kw.get("momentum", 0.0),
                                                kw.get("centered", False)), rtol=1e-12)


TORCH_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, eps=1e-6)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.05)),
]


@pytest.mark.torch
@pytest.mark.parametrize("name,kw", TORCH_CASES)
def test_against_torch(backend, name, kw):
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.tensor(P0.copy()))
    topt = getattr(torch.optim, name)([tp], **kw)
    for g in GRADS:
        tp.grad = torch.tensor(g.copy())
        topt.step()
    got = run_nnx(lambda ps: getattr(nnx.optim, name)(ps, **kw), backend)
    np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_param_groups_and_skip_none(backend):
    a = Parameter(backend.asarray(np.ones(3)))
    b = Parameter(backend.asarray(np.ones(2)))
    c = Parameter(backend.asarray(np.ones(2)))
    opt = SGD([{"params": [a]}, {"params": (q for q in [b, c]), "lr": 1.0}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    a.grad = backend.asarray(np.full(3, 2.0))
    b.grad = backend.asarray(np.full(2, 2.0))
    opt.step()  # c.grad is None -> untouched
    np.testing.assert_allclose(backend.to_numpy(a.data), 0.8)
    np.testing.assert_allclose(backend.to_numpy(b.data), -1.0)
    np.testing.assert_allclose(backend.to_numpy(c.data), 1.0)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(backend.to_numpy(a.grad), 0)
    assert c.grad is None
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_generator_of_module_parameters(backend):
    nnx.manual_seed(0)
    model = nnx.nn.Sequential(nnx.nn.Linear(3, 4), nnx.nn.ReLU(), nnx.nn.Linear(4, 1))
    opt = Adam(model.parameters(), lr=1e-2)
    assert len(opt.param_groups[0]["params"]) == 4


def test_bad_arguments():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="learning rate"):
        SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Parameter"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(2)], lr=0.1)
    assert SGD([p]).defaults["lr"] == 1e-3            # PyTorch 2.x's default


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: AdamW(ps, lr=0.01),
    lambda ps: RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
])
def test_state_dict_round_trip_continues_identically(backend, make):
    p = Parameter(backend.asarray(P0.copy()))
    opt = make([p])
    for g in GRADS[:2]:
        p.grad = backend.asarray(g.copy())
        opt.step()
    sd = opt.state_dict()
    for st in sd["state"].values():  # host arrays, keyed by parameter index
        for v in st.values():
            assert not hasattr(v, "shape") or isinstance(v, np.ndarray)
    assert list(sd["state"]) == [0] and sd["param_groups"][0]["params"] == [0]
    saved_p = backend.to_numpy(p.data).copy()
    # continue the original
    p.grad = backend.asarray(GRADS[2].copy())
    opt.step()
    expected = backend.to_numpy(p.data)
    # fresh parameter + optimizer from the state dict
    q = Parameter(backend.asarray(saved_p.copy()))
    opt2 = make([q])
    opt2.load_state_dict(sd)
    q.grad = backend.asarray(GRADS[2].copy())
    opt2.step()
    np.testing.assert_array_equal(backend.to_numpy(q.data), expected)  # same update, same inputs


def test_load_state_dict_errors():
    p = Parameter(np.zeros((2, 3)))
    opt = Adam([p])
    p.grad = np.ones((2, 3))
    opt.step()
    sd = opt.state_dict()
    other = Adam([Parameter(np.zeros(5))])
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*shape \(5,\)"):
        other.load_state_dict(sd)
    two = Adam([Parameter(np.zeros(1)), Parameter(np.zeros(1))])
    with pytest.raises(ValueError, match="1 parameters in the state but 2"):
        two.load_state_dict(sd)


# ------------------------------------------------------------------ clipping
def test_clip_grad_norm(backend):
    a = Parameter(backend.asarray(np.zeros(2)))
    b = Parameter(backend.asarray(np.zeros(1)))
    none = Parameter(backend.asarray(np.zeros(3)))
    a.grad = backend.asarray(np.array([3.0, 0.0]))
    b.grad = backend.asarray(np.array([4.0]))
    total = clip_grad_norm_([a, b, none], max_norm=1.0)
    assert isinstance(total, float) and total == pytest.approx(5.0)
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(backend.to_numpy(a.grad), [3 * coef, 0.0])
    np.testing.assert_allclose(backend.to_numpy(b.grad), [4 * coef])
    # below the threshold: unchanged
    total = clip_grad_norm_(iter([a, b]), max_norm=10.0)
    assert total == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(backend.to_numpy(b.grad), [4 * coef])
    # inf and 1 norms
    a.grad = backend.asarray(np.array([-3.0, 1.0]))
    b.grad = backend.asarray(np.array([2.0]))
    assert clip_grad_norm_([a, b], 100.0, norm_type=math.inf) == pytest.approx(3.0)
    assert clip_grad_norm_([a, b], 100.0, norm_type=1) == pytest.approx(6.0)
    assert clip_grad_norm_([none], 1.0) == 0.0


@pytest.mark.torch
def test_clip_grad_norm_against_torch(rng):
    torch = pytest.importorskip("torch")
    grads = [rng.standard_normal((4, 3)), rng.standard_normal(7)]
    for norm_type in (2.0, 1.0, 3.0, math.inf):
        ps = [Parameter(np.zeros_like(g)) for g in grads]
        for p, g in zip(ps, grads):
            p.grad = g.copy()
        tps = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
        for p, g in zip(tps, grads):
            p.grad = torch.tensor(g.copy())
        total = clip_grad_norm_(ps, 0.5, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tps, 0.5, norm_type)
        assert total == pytest.approx(float(ttotal), rel=1e-12)
        for p, tp in zip(ps, tps):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_value(backend):
    a = Parameter(backend.asarray(np.zeros(4)))
    a.grad = backend.asarray(np.array([-3.0, -0.5, 0.2, 7.0]))
    clip_grad_value_([a], 1.0)
    np.testing.assert_allclose(backend.to_numpy(a.grad), [-1.0, -0.5, 0.2, 1.0])


# ------------------------------------------------------------------ schedulers
def _lrs(sched, opt, n):
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == out[-1]
    return out


def test_schedulers_by_hand():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=1.0)
    assert _lrs(S.StepLR(opt, step_size=2, gamma=0.5), opt, 5) == [1, 1, .5, .5, .25, .25]
    opt = SGD([p], lr=1.0)
    got = _lrs(S.CosineAnnealingLR(opt, T_max=4, eta_min=0.0), opt, 4)
    np.testing.assert_allclose(got, [1, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                     (1 + math.cos(3 * math.pi / 4)) / 2, 0], atol=1e-15)
    opt = SGD([p], lr=1.0)
    np.testing.assert_allclose(_lrs(S.LinearWarmup(opt, warmup_steps=4), opt, 5),
                               [0, .25, .5, .75, 1, 1])


TORCH_SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.3), "SGD", 10),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01), "SGD", 20),
    ("LinearLR", dict(start_factor=0.1, end_factor=1.0, total_iters=4), "SGD", 8),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.2, total_iters=5), "Adam", 8),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=20), "SGD", 19),
    ("OneCycleLR", dict(max_lr=0.5, epochs=3, steps_per_epoch=5, anneal_strategy="linear",
                        three_phase=True), "Adam", 14),
    ("OneCycleLR", dict(max_lr=[0.5], total_steps=10, cycle_momentum=False), "SGD", 9),
]


@pytest.mark.torch
@pytest.mark.parametrize("name,kw,opt_name,n", TORCH_SCHEDULES)
def test_schedulers_against_torch(name, kw, opt_name, n):
    torch = pytest.importorskip("torch")
    okw = {"lr": 0.1, "momentum": 0.9} if opt_name == "SGD" else {"lr": 0.1}
    tp = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    topt = getattr(torch.optim, opt_name)([tp], **okw)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    p = Parameter(np.zeros(1))
    opt = getattr(nnx.optim, opt_name)([p], **okw)
    sched = getattr(S, name)(opt, **kw)
    mkey = "momentum" if opt_name == "SGD" else "betas"
    for _ in range(n + 1):
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-10,
                                   atol=1e-14)
        np.testing.assert_allclose(np.ravel(opt.param_groups[0][mkey]),
                                   np.ravel(topt.param_groups[0][mkey]), rtol=1e-10)
        tp.grad = torch.ones(1, dtype=torch.float64)
        p.grad = np.ones(1)
        topt.step()
        opt.step()
        tsched.step()
        sched.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-9)


def test_onecycle_past_end_raises():
    opt = SGD([Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


def test_scheduler_state_dict_round_trip():
    import json
    opt = SGD([Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=30)
    for _ in range(7):
        sched.step()
    sd = json.loads(json.dumps(sched.state_dict()))  # JSON-able
    opt_sd = opt.state_dict()
    last = sched.get_last_lr()
    expected = [sched.step() or sched.get_last_lr()[0] for _ in range(5)]
    opt2 = SGD([Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched2 = S.OneCycleLR(opt2, max_lr=1.0, total_steps=30)
    opt2.load_state_dict(opt_sd)
    sched2.load_state_dict(sd)
    assert sched2.get_last_lr() == last
    assert opt2.param_groups[0]["momentum"] == opt_sd["param_groups"][0]["momentum"]
    got = [sched2.step() or sched2.get_last_lr()[0] for _ in range(5)]
    assert got == expected
