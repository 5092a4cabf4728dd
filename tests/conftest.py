"""Shared fixtures: every backend-dependent test takes the ``backend`` fixture, which runs it
on ``cpu`` always and on ``cuda`` (marked ``gpu``) where CuPy and a GPU are present."""
from __future__ import annotations

import numpy as np
import pytest

import nnx


def _cuda_skip_reason():
    try:
        nnx.backend.create("cuda")
    except Exception as exc:  # BackendUnavailableError or ImportError of a missing file
        return f"cuda backend unavailable: {str(exc).splitlines()[0]}"
    return None


_CUDA_REASON = _cuda_skip_reason()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    """The active backend for this test (restores the previous one afterwards)."""
    if request.param == "cuda" and _CUDA_REASON:
        pytest.skip(_CUDA_REASON)
    previous = nnx.backend.get()
    be = nnx.backend.use(request.param)
    nnx.manual_seed(1234)
    try:
        yield be
    finally:
        nnx.backend.use(previous.name)


@pytest.fixture
def rng():
    """A fresh seeded host generator for test inputs."""
    return np.random.default_rng(20261122)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs the cuda backend (CuPy and an NVIDIA GPU)")
    config.addinivalue_line("markers", "torch: uses PyTorch as an oracle (skipped without it)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
