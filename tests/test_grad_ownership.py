"""``Parameter.accumulate(g, owned=True)``: a layer hands over a fresh gradient and the first
one becomes ``grad`` without a copy (issue 15: one launch per parameter and step less on a
GPU).  These tests prove that adopting never aliases: the same layer twice in one graph,
shared weights, accumulation over two backward calls and in-place optimizer updates give
exactly the results of the copying rule (same operations in the same order: bit-identical),
and no two gradients, parameters or inputs share memory."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import nn, optim
from nnx.nn.parameter import Parameter


def test_owned_first_gradient_is_adopted_only_when_safe(rng):
    p = Parameter(rng.standard_normal((3, 4)))
    g = rng.standard_normal((3, 4))
    p.accumulate(g, owned=True)
    assert p.grad is g                                   # adopted: no copy
    h = rng.standard_normal((3, 4))
    p.accumulate(h, owned=True)                          # later ones add in place
    assert p.grad is g and np.array_equal(h, h.copy())
    for bad in (rng.standard_normal((4, 3)).T,                    # not C-contiguous
                rng.standard_normal((3, 4)).astype(np.float32)):  # another dtype
        q = Parameter(rng.standard_normal((3, 4)))
        q.accumulate(bad, owned=True)
        assert q.grad is not bad and q.grad.dtype == np.float64   # a copy, as before
        np.testing.assert_array_equal(q.grad, bad.astype(np.float64))
    kept = rng.standard_normal((3, 4))
    before = kept.copy()
    r = Parameter(rng.standard_normal((3, 4)))
    r.accumulate(kept)                                   # not owned: copied
    r.accumulate(rng.standard_normal((3, 4)))
    assert r.grad is not kept and np.array_equal(kept, before)


class _Net(nn.Module):
    """A conv layer, one Linear called twice (same layer in one graph) and a Linear whose
    weight is shared with another."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64)
        self.flat = nn.Flatten()
        self.twice = nn.Linear(12, 12, dtype=np.float64)
        self.a = nn.Linear(12, 12, dtype=np.float64)
        self.b = nn.Linear(12, 12, dtype=np.float64)
        self.b.weight = self.a.weight                     # shared Parameter
        self.out = nn.Linear(12, 5, dtype=np.float64)

    def forward(self, x):
        h = self.flat(nn.functional.relu(self.conv(x)))        # (N, 2*2*3)
        h = self.twice(nn.functional.relu(self.twice(h)))
        return self.out(self.b(nn.functional.relu(self.a(h))))


def _run(make_opt, set_to_none, copy_always, monkeypatch):
    if copy_always:     # the rule before issue 15: every first gradient copied
        real = Parameter.accumulate
        monkeypatch.setattr(Parameter, "accumulate",
                            lambda self, g, owned=False: real(self, g, owned=False))
    try:
        nnx.manual_seed(3)
        model = _Net()
        opt = make_opt(model.parameters())
        data = np.random.default_rng(5)
        x = data.standard_normal((4, 2, 2, 3))
        seen = []
        for _ in range(3):
            opt.zero_grad(set_to_none=set_to_none)
            for _ in range(2):                            # accumulate over two backward calls
                model(x)
                model.backward(data.standard_normal((4, 5)), input_grad=False)
            grads = [p.grad for p in model.parameters()]
            seen.append([g.copy() for g in grads])
            arrays = grads + [p.data for p in model.parameters()] + [x]
            for i, u in enumerate(arrays):
                for v in arrays[i + 1:]:
                    assert not np.shares_memory(u, v)
            opt.step()
        return seen, [p.data.copy() for p in model.parameters()]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
], ids=["sgd", "adam"])
def test_adopting_changes_no_result(make_opt, set_to_none, monkeypatch):
    prev = nnx.backend.get().name
    nnx.backend.use("cpu")
    try:
        got = _run(make_opt, set_to_none, False, monkeypatch)
        want = _run(make_opt, set_to_none, True, monkeypatch)
    finally:
        nnx.backend.use(prev)
    for step_got, step_want in zip(got[0], want[0]):
        for a, b in zip(step_got, step_want):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_array_equal(a, b)
