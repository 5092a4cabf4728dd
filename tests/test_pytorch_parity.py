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
