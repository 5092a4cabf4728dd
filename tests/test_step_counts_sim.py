"""Host overheads of the CUDA backend, counted in simulation (tests/cuda_sim/fake_cupy.trace):
kernel objects fetched once, one cuRAND generator, and what one training step launches,
transfers and waits for."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_sim"))
import fake_cupy  # noqa: E402
import sim_backend  # noqa: E402


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    with sim_backend.module_backend(tmp_path_factory, "fake_cupy_counts") as be:
        yield be


def test_kernel_objects_are_fetched_once(gpu, rng):
    from nnx.backend import kernel_loader as kl
    calls = []
    mod = kl.get_module("relu")
    real = mod.get_function
    mod.get_function = lambda name: calls.append(name) or real(name)
    try:
        kl._KERNELS.clear()
        x = gpu.asarray(rng.standard_normal((4, 5)).astype(np.float32))
        with fake_cupy.trace() as t:
            for _ in range(5):
                gpu.relu(x)
                gpu.relu_backward(x, x)
        assert t.names()["relu<float>"] == 5 and t.names()["relu_backward<float>"] == 5
        assert sorted(calls) == ["relu<float>", "relu_backward<float>"]
    finally:
        del mod.get_function


def test_one_generator_per_backend_and_exact_resume(gpu):
    gpu.manual_seed(4)
    gpu.random((3,))                       # the generator exists from here on
    with fake_cupy.trace() as t:
        state = gpu.rng_state()
        a = [gpu.to_numpy(gpu.random((5,))), gpu.to_numpy(gpu.randint(0, 9, (7,)))]
        gpu.set_rng_state(state)
        b = [gpu.to_numpy(gpu.random((5,))), gpu.to_numpy(gpu.randint(0, 9, (7,)))]
    assert t.counts()["rng_create"] == 0
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], gpu.to_numpy(gpu.random((5,))))
