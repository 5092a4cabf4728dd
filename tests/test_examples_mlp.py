"""The MLP examples train to a useful level in a few seconds (levels have a wide margin:
seeds 0-2 reach MSE ≈ 0.02-0.035 vs ≈ 1.9 at the start, accuracy ≈ 0.97-0.99 vs 1/3)."""
from __future__ import annotations

import importlib.util
import os

import pytest

import nnx

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mlp_regression_converges(backend, capsys):
    mod = load_example("mlp_regression")
    loss = mod.main(epochs=30, seed=0, verbose=True)
    assert loss < 0.1
    out = capsys.readouterr().out
    assert "Epoch 1/30, Loss:" in out and "Epoch 30/30, Loss:" in out


@pytest.mark.parametrize("optimizer", ["sgd", "ema"])
def test_mlp_classifier_learns_spirals(backend, optimizer):
    mod = load_example("mlp_classifier")
    loss, acc = mod.train(optimizer, epochs=100, seed=1, verbose=False)
    assert loss < 0.25
    assert acc > 0.9


def test_mlp_classifier_main_runs_both(backend):
    mod = load_example("mlp_classifier")
    res = mod.main(epochs=2, seed=0, verbose=False)
    assert set(res) == {"sgd", "ema"}
    for loss, acc in res.values():
        assert loss == loss and 0.0 <= acc <= 1.0
    assert nnx.backend.get() is backend
