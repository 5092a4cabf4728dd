"""Names that follow PyTorch behave like PyTorch: each public class or function that carries a
PyTorch name is compared with its torch counterpart (PyTorch 2.13 CPU as the oracle, float64,
fresh random data, several steps).  Deliberate differences are listed in the README section
"Differences from PyTorch" and tested where they are defined."""
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
