"""Shared fixtures: every backend-dependent test takes the ``backend`` fixture, which runs it
on ``cpu`` always and on ``cuda`` (marked ``gpu``) where CuPy and a GPU are present.

The suite does not depend on the caller's shell: the ``NNX_*`` variables that pick a code path
are removed before nnx is imported (tests that are about a variable set it themselves with
``monkeypatch``).  A path is chosen for a whole run with this file's options instead, e.g.
``pytest --nnx-threads 3 --nnx-cpu-kernels 0`` (see the README's testing section).
"""
from __future__ import annotations

import os

# Before nnx is imported: NNX_BACKEND is read at the first backend use, the others at each call.
PATH_VARIABLES = ("NNX_BACKEND", "NNX_DEVICE", "NNX_NUM_THREADS", "NNX_CPU_KERNELS",
                  "NNX_CPU_ARCH")
for _name in PATH_VARIABLES:
    os.environ.pop(_name, None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nnx  # noqa: E402


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


def pytest_addoption(parser):
    group = parser.getgroup("nnx", "code paths for the whole run (the caller's NNX_* are ignored)")
    group.addoption("--nnx-threads", metavar="N",
                    help="NNX_NUM_THREADS for the run (default: unset, i.e. all cores)")
    group.addoption("--nnx-cpu-kernels", choices=("auto", "0", "1"),
                    help="NNX_CPU_KERNELS for the run (default: auto)")
    group.addoption("--nnx-cpu-arch", metavar="ARCH",
                    help="NNX_CPU_ARCH: build the C kernels with -march=ARCH (default: native)")
    group.addoption("--nnx-blas-threads", type=int, metavar="N",
                    help="cap BLAS at N threads for the run (threadpoolctl; no OPENBLAS_* set)")


def _apply_path_options(config):
    for opt, var in (("nnx_threads", "NNX_NUM_THREADS"), ("nnx_cpu_kernels", "NNX_CPU_KERNELS"),
                     ("nnx_cpu_arch", "NNX_CPU_ARCH")):
        value = config.getoption(opt)
        if value is not None:
            os.environ[var] = str(value)
    blas = config.getoption("nnx_blas_threads")
    if blas is not None:
        threadpoolctl = pytest.importorskip("threadpoolctl")
        # kept for the whole session: the limiter restores the old limits when collected
        config._nnx_blas_limit = threadpoolctl.threadpool_limits(blas, user_api="blas")


def pytest_report_header(config):
    from nnx.backend import native
    settings = " ".join(f"{v}={os.environ[v]}" for v in PATH_VARIABLES if v in os.environ)
    return [f"nnx code path: {settings or 'defaults'}; CPU kernels: {native.describe()}"]


def pytest_configure(config):
    _apply_path_options(config)
    config.addinivalue_line("markers", "gpu: needs the cuda backend (CuPy and an NVIDIA GPU)")
    config.addinivalue_line("markers", "torch: uses PyTorch as an oracle (skipped without it)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
