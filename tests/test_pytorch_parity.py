"""Names that follow PyTorch behave like PyTorch: each public class or function that carries a
PyTorch name is compared with its torch counterpart (PyTorch 2.13 CPU as the oracle, float64,
fresh random data, several steps).  Deliberate differences are listed in the README section
"Coming from PyTorch" and tested where they are defined."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import nnx
import nnx.models
from nnx import nn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _torch_peer():
    spec = importlib.util.spec_from_file_location(
        "torch_peer", os.path.join(ROOT, "bench", "torch_peer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ module state_dict
def test_state_dict_keys_in_torch_order(backend):
    # module by module, parameters then buffers: a batch norm's buffers come before the
    # next layer's weights (so code that zips two state_dicts pairs the right tensors)
    nnx.manual_seed(0)
    for model in (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                nn.Flatten(), nn.Linear(4, 2)),
                  nnx.models.get("resnet", width=4)):
        twin = _torch_peer().torch_twin(model, torch)
        assert list(model.state_dict()) == list(twin.state_dict())
        for (k, v), (tk, tv) in zip(model.state_dict().items(), twin.state_dict().items()):
            np.testing.assert_array_equal(v, tv.numpy(), err_msg=k)


# ------------------------------------------------------------------ optimizers
def _sgd_cases():
    out = []
    for momentum in (0.0, 0.9):
        for dampening in (0.0, 0.3):
            for nesterov in (False, True):
                if nesterov and (momentum == 0 or dampening != 0):
                    continue                 # torch refuses these too
                for weight_decay in (0.0, 0.01):
                    for maximize in (False, True):
                        out.append(dict(lr=0.05, momentum=momentum, dampening=dampening,
                                        nesterov=nesterov, weight_decay=weight_decay,
                                        maximize=maximize))
    return out


OPTIM_CASES = (
    [("SGD", kw) for kw in _sgd_cases()]
    + [("Adam", dict()), ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3)),
       ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
       ("AdamW", dict()),                      # weight_decay default 0.01, decoupled
       ("AdamW", dict(lr=0.01, weight_decay=0.2, eps=1e-3, maximize=True)),
       ("RMSprop", dict()),                    # alpha 0.99, eps 1e-8 outside the sqrt
       ("RMSprop", dict(lr=0.01, alpha=0.9, eps=0.1)),   # a large eps shows its placement
       ("RMSprop", dict(lr=0.01, centered=True)),
       ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.05)),
       ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1,
                        maximize=True))])


@pytest.mark.parametrize("name,kw", OPTIM_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIM_CASES)])
def test_optimizer_trajectory_and_state_match_torch(backend, rng, name, kw):
    shapes, steps = [(4, 3), (5,)], 8
    p0 = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ps = [nn.Parameter(backend.asarray(x.copy())) for x in p0]
    tps = [torch.nn.Parameter(torch.tensor(x.copy())) for x in p0]
    opt, topt = getattr(nnx.optim, name)(ps, **kw), getattr(torch.optim, name)(tps, **kw)
    for gs in grads:
        for p, tp, g in zip(ps, tps, gs):
            p.grad, tp.grad = backend.asarray(g.copy()), torch.tensor(g.copy())
        opt.step()
        topt.step()
    # element-wise updates only: the two differ by rounding (e.g. Adam's sqrt(v/bc2) vs
    # sqrt(v)/sqrt(bc2)), ~1e-16 relative per step; 1e-10 over 8 steps is a wide margin
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(backend.to_numpy(p.data), tp.detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for i, st in tsd["state"].items():        # same buffer names, same values
        assert set(sd["state"][i]) == set(st), (sd["state"][i].keys(), st.keys())
        for k, v in st.items():
            np.testing.assert_allclose(np.asarray(sd["state"][i][k]), v.numpy(),
                                       rtol=1e-10, atol=1e-12, err_msg=k)
    group, tgroup = sd["param_groups"][0], tsd["param_groups"][0]
    shared = set(group) & set(tgroup)
    assert set(group) - set(tgroup) <= {"ema_momentum"}      # nnx's only extra key
    assert {k: group[k] for k in shared} == {k: tgroup[k] for k in shared}


# ------------------------------------------------------------------ signatures
def _public_pairs():
    from nnx import init
    from nnx.optim import lr_scheduler
    pairs = [(f"nn.{n}", getattr(nn, n), getattr(torch.nn, n))
             for n in nn.__all__ if hasattr(torch.nn, n)]
    pairs += [(f"optim.{n}", getattr(nnx.optim, n), getattr(torch.optim, n))
              for n in nnx.optim.__all__ if n != "lr_scheduler" and hasattr(torch.optim, n)]
    pairs += [(f"optim.{n}", getattr(nnx.optim, n), getattr(torch.nn.utils, n))
              for n in ("clip_grad_norm_", "clip_grad_value_")]
    pairs += [(f"lr_scheduler.{n}", getattr(lr_scheduler, n),
               getattr(torch.optim.lr_scheduler, n))
              for n in ("LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "OneCycleLR",
                        "MultiStepLR", "ExponentialLR", "LambdaLR", "SequentialLR",
                        "CosineAnnealingWarmRestarts", "ReduceLROnPlateau")]
    from nnx import data as nnx_data
    import torch.utils.data as tdata
    pairs += [(f"data.{n}", getattr(nnx_data, n), getattr(tdata, n))
              for n in ("DataLoader", "Dataset", "TensorDataset", "Subset", "default_collate")]
    pairs += [(f"init.{n}", getattr(init, n), getattr(torch.nn.init, n))
              for n in ("calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
                        "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                        "kaiming_normal_")]
    return pairs


def _params(fn):
    import inspect
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


# nnx names the array an initialiser fills ``param`` (PyTorch: ``tensor``); nnx has no
# ``device``, so its ``dtype`` (by keyword, please) ends the positional comparison
_RENAMED = {"param": "tensor"}
_LAST = "dtype"


@pytest.mark.parametrize("label,ours,theirs", _public_pairs(),
                         ids=[p[0] for p in _public_pairs()])
def test_signature_defaults_and_positions_match_torch(label, ours, theirs):
    """Every argument nnx shares with PyTorch has PyTorch's default, and a positional
    argument lands in the parameter of the same name as in PyTorch (or raises TypeError:
    nnx makes arguments keyword-only where PyTorch's positional slot means something nnx
    does not have, e.g. CrossEntropyLoss(weight))."""
    import inspect
    mine, ref = _params(ours), _params(theirs)
    if any(p.kind is p.VAR_POSITIONAL for p in ref) and len(ref) <= 2:
        pytest.skip(f"torch.{label} takes (*args, **kwargs); tested by construction elsewhere")
    ref_by_name = {p.name: p for p in ref}
    ref_positional = [p.name for p in ref if p.kind in (p.POSITIONAL_ONLY,
                                                        p.POSITIONAL_OR_KEYWORD)]
    pos, checking = 0, True
    for p in mine:
        name = p.name if p.name in ref_by_name else _RENAMED.get(p.name, p.name)
        checking = checking and name != _LAST
        if p.kind is p.POSITIONAL_OR_KEYWORD and checking:
            assert pos < len(ref_positional) and ref_positional[pos] == name, (
                f"{label}: positional argument {pos} is {p.name!r} in nnx but "
                f"{ref_positional[pos] if pos < len(ref_positional) else None!r} in PyTorch")
            pos += 1
        if name in ref_by_name and p.default is not inspect.Parameter.empty:
            assert p.default == ref_by_name[name].default, (
                f"{label}({p.name}=...): nnx default {p.default!r}, "
                f"PyTorch {ref_by_name[name].default!r}")


# ------------------------------------------------------------------ layers and losses
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 3, 2, 2)])
def test_softmax_implicit_dim_is_torch_choice(backend, rng, shape):
    x = rng.standard_normal(shape)
    layer = nn.Softmax()
    with pytest.warns(UserWarning, match="implicit"):
        y = layer(backend.asarray(x))
    with pytest.warns(UserWarning):
        ref = torch.nn.Softmax()(torch.tensor(x))
    np.testing.assert_allclose(backend.to_numpy(y), ref.numpy(), rtol=1e-12, atol=1e-15)
    dy = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    with pytest.warns(UserWarning):
        torch.nn.Softmax()(tx).backward(torch.tensor(dy))
    np.testing.assert_allclose(backend.to_numpy(layer.backward(backend.asarray(dy))),
                               tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_loss_arguments_are_keyword_only():
    # PyTorch's first positional slot holds other things (BCELoss(weight), MSELoss(
    # size_average)): refuse it rather than misread it.  CrossEntropyLoss(w) and NLLLoss(w)
    # take the class weight there, as PyTorch.
    for cls in (nn.BCELoss, nn.BCEWithLogitsLoss, nn.MSELoss, nn.L1Loss, nn.HuberLoss,
                nn.SmoothL1Loss, nn.KLDivLoss):
        with pytest.raises(TypeError, match="positional"):
            cls(np.ones(3))
    with pytest.raises(TypeError, match="positional"):
        nn.AvgPool2d(3, 1, 1, False)          # PyTorch: ceil_mode=False


def test_cross_entropy_all_ignored_is_zero_not_nan(backend, rng):
    # documented difference: PyTorch's mean over zero counted rows is 0/0 = nan
    z = rng.standard_normal((3, 4))
    labels = np.full(3, -100)
    crit = nn.CrossEntropyLoss()
    assert float(crit(backend.asarray(z), backend.asarray(labels))) == 0.0
    np.testing.assert_array_equal(backend.to_numpy(crit.backward()), 0.0)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss()(tz, torch.tensor(labels))
    tl.backward()
    assert torch.isnan(tl) and not tz.grad.any()


@pytest.mark.parametrize("dims", [1, 2])
def test_batchnorm_momentum_eps_and_running_var_match_torch(backend, rng, dims):
    # running = (1 - m) running + m batch; unbiased variance for running_var, biased for
    # normalising; float64, non-default momentum and eps, five steps then eval
    kw = dict(momentum=0.3, eps=1e-3)
    ours = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(3, dtype=np.float64, **kw)
    ref = (torch.nn.BatchNorm1d if dims == 1 else torch.nn.BatchNorm2d)(
        3, dtype=torch.float64, **kw)
    shape = (4, 3) if dims == 1 else (2, 3, 3, 2)
    for _ in range(5):
        x = rng.standard_normal(shape) * 2 + 1
        np.testing.assert_allclose(backend.to_numpy(ours(backend.asarray(x))),
                                   ref(torch.tensor(x)).detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-12, err_msg=k)
    ours.eval()
    ref.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(backend.to_numpy(ours(backend.asarray(x))),
                               ref(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ initialisation
def test_calculate_gain_matches_torch():
    from nnx import init
    for name in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                 "conv_transpose2d", "conv_transpose3d", "sigmoid", "tanh", "relu", "selu"):
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name),
                                                          rel=1e-15), name
    for slope in (None, 0.0, 0.2, 3):
        assert init.calculate_gain("leaky_relu", slope) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", slope), rel=1e-15)


def _spread(a):
    """(max |a|, std(a)) of a large sample: the bound of a uniform, the scale of a normal."""
    a = np.asarray(a, dtype=np.float64).ravel()
    return np.abs(a).max(), a.std()


# 20,000 draws: the sample std is within ~1% of the true one (relative error
# ≈ 1/sqrt(2n) for a normal, less for a uniform) and a uniform's max |a| within 0.1% of b
INIT_CASES = [("uniform_", dict(a=-0.3, b=0.3)), ("normal_", dict(std=0.2)),
              ("xavier_uniform_", dict(gain=1.5)), ("xavier_normal_", dict()),
              ("kaiming_uniform_", dict()), ("kaiming_uniform_", dict(a=5 ** 0.5)),
              ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu")),
              ("kaiming_normal_", dict()), ("kaiming_normal_", dict(nonlinearity="tanh"))]


@pytest.mark.parametrize("name,kw", INIT_CASES)
def test_init_distribution_matches_torch(backend, name, kw):
    from nnx import init
    shape = (100, 50, 2, 2)                   # fan_in 200, fan_out 400
    p = nn.Parameter(backend.asarray(np.zeros(shape)))
    getattr(init, name)(p, **kw)
    t = torch.empty(shape, dtype=torch.float64)
    getattr(torch.nn.init, name)(t, **kw)
    (m, s), (tm, ts) = _spread(backend.to_numpy(p.data)), _spread(t.numpy())
    assert s == pytest.approx(ts, rel=0.03)
    if "uniform" in name:
        assert m == pytest.approx(tm, rel=3e-3)


@pytest.mark.parametrize("make,tmake", [
    (lambda: nn.Linear(300, 80), lambda: torch.nn.Linear(300, 80)),
    (lambda: nn.Conv2d(12, 40, 5, groups=2), lambda: torch.nn.Conv2d(12, 40, 5, groups=2)),
    (lambda: nn.LSTM(30, 40), lambda: torch.nn.LSTM(30, 40))])
def test_default_layer_init_matches_torch(backend, make, tmake):
    # PyTorch's reset_parameters: U(±1/sqrt(fan_in)) for Linear/Conv2d weight and bias
    # (kaiming_uniform a=sqrt(5)), U(±1/sqrt(hidden)) for every RNN parameter
    nnx.manual_seed(0)
    ours, theirs = make(), tmake()
    for (k, v), (tk, tv) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k == tk
        (m, s), (tm, ts) = _spread(v), _spread(tv.numpy())
        # the max |a| of n draws of U(-b, b) falls below b(1 - 20/n) with probability
        # about e^-20, so two samples of one bound agree to a factor 1 + 20/n
        tol = 1 + 20 / v.size
        assert tm / tol < m < tm * tol, (k, m, tm)
        if v.size >= 2000:
            assert s == pytest.approx(ts, rel=0.05), k


# ------------------------------------------------------------------ gradient clipping
@pytest.mark.parametrize("special", [None, "nan", "inf"])
def test_clip_grad_norm_matches_torch(backend, rng, special):
    grads = [rng.standard_normal((4, 3)), rng.standard_normal(7)]
    if special:
        grads[1][2] = float(special)
    for norm_type in (2.0, 1.0, 3.0, float("inf")):
        ps = [nn.Parameter(backend.asarray(np.zeros_like(g))) for g in grads]
        tps = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
        for p, tp, g in zip(ps, tps, grads):
            p.grad, tp.grad = backend.asarray(g.copy()), torch.tensor(g.copy())
        total = nnx.optim.clip_grad_norm_(ps, max_norm=0.5, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm=0.5, norm_type=norm_type)
        # the norm is one reduction over 19 values: a few ulps apart (1e-12 relative)
        np.testing.assert_allclose(total.item(), ttotal.item(), rtol=1e-12)
        assert isinstance(total, float)
        for p, tp in zip(ps, tps):              # nan/inf propagate as in PyTorch
            np.testing.assert_allclose(backend.to_numpy(p.grad), tp.grad.numpy(),
                                       rtol=1e-12, atol=1e-15)
        if special:
            with pytest.raises(RuntimeError, match="non-finite"):
                nnx.optim.clip_grad_norm_(ps, 0.5, norm_type, error_if_nonfinite=True)
            with pytest.raises(RuntimeError, match="non-finite"):
                torch.nn.utils.clip_grad_norm_(tps, 0.5, norm_type, error_if_nonfinite=True)


# ------------------------------------------------------------------ schedulers
SCHEDULES = [("StepLR", dict(step_size=3, gamma=0.5)),
             ("CosineAnnealingLR", dict(T_max=6, eta_min=0.01)),
             ("LinearLR", dict(start_factor=0.25, total_iters=10)),
             ("OneCycleLR", dict(max_lr=0.5, total_steps=16))]


def _run_schedule(lib, name, kw, steps, last_epoch=None):
    """``steps`` optimizer+scheduler steps from the default start, or, with ``last_epoch``,
    from an optimizer rebuilt from a copy of the param groups after ``last_epoch`` steps
    (PyTorch's constructor-argument resume); returns the lrs seen at each step."""
    is_torch = lib is torch
    make_p = (lambda: torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))) if is_torch \
        else (lambda: nn.Parameter(np.zeros(1)))
    optim, sched_mod = (torch.optim, torch.optim.lr_scheduler) if is_torch else \
        (nnx.optim, nnx.optim.lr_scheduler)
    p = make_p()
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    sched = getattr(sched_mod, name)(opt, **kw)
    if last_epoch is not None:
        for _ in range(last_epoch):
            opt.step()
            sched.step()
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        opt = optim.SGD([{"params": [p], **group}])
        sched = getattr(sched_mod, name)(opt, last_epoch=last_epoch, **kw)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_scheduler_resume_with_last_epoch(name, kw):
    # nnx: constructing with last_epoch=k continues the schedule at k + 1, exactly
    ours = _run_schedule(nnx, name, kw, 8, last_epoch=5)
    np.testing.assert_allclose(ours, _run_schedule(nnx, name, kw, 14)[6:], rtol=1e-12)
    theirs = _run_schedule(torch, name, kw, 8, last_epoch=5)
    if name in ("StepLR", "OneCycleLR"):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    else:
        # documented difference: PyTorch 2.13's recursive CosineAnnealingLR and LinearLR
        # restart from the group's lr and leave the schedule; nnx stays on it
        assert not np.allclose(ours, theirs)


@pytest.mark.filterwarnings("ignore::UserWarning")     # torch: step() before optimizer.step()
def test_schedulers_are_closed_form_not_chainable():
    # documented difference: nnx computes lr_t from initial_lr and last_epoch, so a second
    # scheduler on the same optimizer (or a manual lr edit) is overwritten by the next
    # step(); PyTorch's chainable schedulers multiply the current lr instead
    from nnx.optim import lr_scheduler as S
    opt = nnx.optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    a, b = S.StepLR(opt, step_size=1, gamma=0.5), S.LinearLR(opt, start_factor=0.5,
                                                             total_iters=2)
    ta = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.5)
    tb = torch.optim.lr_scheduler.LinearLR(topt, start_factor=0.5, total_iters=2)
    for s in (a, b, ta, tb):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.75)        # LinearLR alone, t = 1
    assert topt.param_groups[0]["lr"] == pytest.approx(0.25 * 1.5)  # both factors
