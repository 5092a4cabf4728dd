"""Running real multi-process jobs (``mpiexec -n N``) from the tests: where ``mpiexec`` is
(next to this Python first: the ``nnx[mpi]`` extra installs MPICH's into the virtual
environment), and a run with a time limit that reports everything on failure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_SIM = REPO / "tests" / "cuda_sim"
if str(CUDA_SIM) not in sys.path:      # sim_backend, for the NCCL test's skip reason
    sys.path.insert(0, str(CUDA_SIM))


def mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec")


def require_mpi():
    """Skip (with the reason) where mpi4py or mpiexec is missing; ``make test`` installs
    both (the ``mpi`` extra)."""
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install 'nnx[mpi]')")
    if mpiexec() is None:
        pytest.skip("mpiexec not found (pip install 'nnx[mpi]' brings MPICH's)")


def run(n: int, args, cwd, timeout: float = 120.0, env=None):
    """``mpiexec -n n python ARGS`` in ``cwd``; returns ``(returncode, stdout, stderr,
    seconds)``.  A job still running after ``timeout`` seconds fails the test (a hang)."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, *[str(a) for a in args]]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "tests"), str(REPO)] + [p for p in [full_env.get("PYTHONPATH")] if p])
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s (a hang): "
                    f"stdout {exc.stdout!r} stderr {exc.stderr!r}")
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def run_ok(n: int, args, cwd, timeout: float = 120.0, env=None) -> str:
    code, out, err, _ = run(n, args, cwd, timeout, env)
    assert code == 0, f"exit status {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out
