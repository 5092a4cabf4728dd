"""The CUDA backend over the simulated CuPy (``fake_cupy``), for tests and bench/gpu_check.py.

``simulated_cupy(build_dir)`` installs ``fake_cupy`` as ``sys.modules["cupy"]`` (whether or not
a real CuPy is installed), clears nnx's compiled-kernel cache, and restores both afterwards;
``simulated_backend(build_dir)`` also yields a ``CupyBackend`` built on it.  Real CuPy, where
installed, is imported by other tests and by the conftest; it never sees these modules.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fake_cupy  # noqa: E402
import simbuild  # noqa: E402


def available() -> str | None:
    """None when the simulator can run here, else the reason it cannot."""
    return None if simbuild.gxx() else "g++ not found: cannot simulate the CUDA backend"


@contextlib.contextmanager
def simulated_cupy(build_dir=None, device_count=None):
    from nnx.backend import kernel_loader
    saved_mod = sys.modules.get("cupy")
    saved_dir, saved_count = fake_cupy.BUILD_DIR, fake_cupy.DEVICE_COUNT
    if build_dir is not None:
        fake_cupy.BUILD_DIR = Path(build_dir)
    if device_count is not None:
        fake_cupy.DEVICE_COUNT = int(device_count)
    sys.modules["cupy"] = fake_cupy
    kernel_loader.clear_cache()
    try:
        yield fake_cupy
    finally:
        kernel_loader.clear_cache()
        fake_cupy.BUILD_DIR, fake_cupy.DEVICE_COUNT = saved_dir, saved_count
        if saved_mod is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved_mod


@contextlib.contextmanager
def simulated_backend(build_dir=None, device=None, device_count=None):
    with simulated_cupy(build_dir, device_count):
        from nnx.backend.cupy_backend import CupyBackend
        yield CupyBackend(device)


@contextlib.contextmanager
def module_backend(tmp_path_factory, name):
    """For module-scoped pytest fixtures: the simulated backend (skips without g++)."""
    import pytest
    if available():
        pytest.skip(available())
    with simulated_backend(tmp_path_factory.mktemp(name)) as be:
        yield be


@contextlib.contextmanager
def registered_as_cuda(be):
    """Make ``be`` what ``nnx.backend.use("cuda")`` returns; restore the registry and the
    active backend afterwards."""
    import nnx.backend as B
    saved, previous = B._INSTANCES.get("cuda"), B.get().name
    B._INSTANCES["cuda"] = be
    try:
        yield be
    finally:
        B.use(previous)
        if saved is None:
            B._INSTANCES.pop("cuda", None)
        else:
            B._INSTANCES["cuda"] = saved
