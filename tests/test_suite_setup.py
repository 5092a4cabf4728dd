"""The test set-up itself: the suite must not depend on the caller's shell, and the ``test``
extra must carry every package the tests import."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# import name -> distribution name, where they differ
DIST_OF = {"sklearn": "scikit-learn"}
# optional oracles and the GPU stack: their tests skip with the reason when they are missing
OPTIONAL = {"torch", "cupy", "cupy_backends"}


@pytest.mark.slow
def test_suite_passes_with_a_hostile_environment(tmp_path):
    """``NNX_BACKEND=cuda`` without a GPU, and invalid thread and kernel settings, exported
    by the caller: the suite still runs on the CPU (the cuda cases skip with the reason)."""
    env = dict(os.environ, NNX_BACKEND="cuda", NNX_DEVICE="7", NNX_NUM_THREADS="many",
               NNX_CPU_KERNELS="maybe", NNX_CPU_ARCH="no such arch!")
    files = ["tests/test_layers_dense.py", "tests/test_conv.py", "tests/test_backend_registry.py"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", *files], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", r.stdout) and " failed" not in r.stdout


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def _test_extra() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:       # Python 3.10
        tomli = pytest.importorskip("tomli")
        tomllib = tomli
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["test"]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_test_extra_carries_every_test_import():
    local = {p.stem for p in TESTS.rglob("*.py")} | {"nnx", "bench", "conftest"}
    stdlib = set(sys.stdlib_module_names)
    needed = set()
    for path in TESTS.rglob("*.py"):
        for mod in _imported_top_modules(path):
            if mod not in stdlib and mod not in local and mod not in OPTIONAL:
                needed.add(DIST_OF.get(mod, mod).lower())
    missing = needed - _test_extra()
    assert not missing, f"tests import {sorted(missing)}, which the 'test' extra does not name"
