"""Backend registry: use/get/create, unknown names, and the CUDA-unavailable message."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import nnx.backend as B

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_use_and_get_cpu():
    previous = B.get()
    try:
        be = B.use("cpu")
        assert be is B.get() and be.name == "cpu" and be.xp is np
        assert B.use("numpy") is be          # alias, same cached instance
        assert B.create("cpu") is be
        assert B.xp() is np
        assert "cpu" in B.available() and "cuda" in B.available()
        x = be.asarray([1.0, 2.0])
        assert be.is_native(x) and isinstance(be.to_numpy(x), np.ndarray)
    finally:
        B.use(previous.name)


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*cpu"):
        B.use("tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        B.create("")


# CuPy hidden from the child (the test extra installs it): `import cupy` fails as on a machine
# without it, so the error path runs everywhere
_HIDE_CUPY = "import sys; sys.modules['cupy'] = None; "


@pytest.mark.parametrize("how", ["env", "use"])
def test_cuda_without_cupy_gives_one_clear_error(how):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if how == "env":
        env["NNX_BACKEND"] = "cuda"
        code = _HIDE_CUPY + "import nnx; nnx.backend.get()"
    else:
        env.pop("NNX_BACKEND", None)
        code = _HIDE_CUPY + "import nnx, nnx.backend as b; b.use('cuda')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnx.backend.errors.BackendUnavailableError:") or \
        last.startswith("BackendUnavailableError:"), proc.stderr
    assert "CuPy" in last or "cupy" in last
    assert "pip install" in last and "nnx[cuda12]" in last and "cuda13" in last, last


def test_backend_unavailable_error_is_exported():
    assert issubclass(B.BackendUnavailableError, RuntimeError)
    assert issubclass(B.BackendMismatchError, TypeError)
