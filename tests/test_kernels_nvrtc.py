"""Every kernels/*.cu compiles with NVRTC -- the compiler CuPy's RawModule really uses -- with
exactly what nnx gives RawModule (``kernel_loader.module_spec``: inlined source, options,
name expressions) plus what CuPy adds itself (``-ftz=true``, ``-arch``), for compute_80 and
compute_90, with CUDA 13 (CuPy's own NVRTC binding) and CUDA 12 (``libnvrtc.so.12`` from the
``nvidia-cuda-nvrtc-cu12`` wheel).  No GPU is needed.  nvcc is more permissive than NVRTC
(host headers, its own include paths), so tests/test_kernels_nvcc.py alone does not show that
the kernels compile at run time; the last test proves this one catches the difference.

Installed by ``make test`` (the ``test`` extra).  Skips only where a wheel is missing, saying
which; with ``CI`` set in the environment a missing wheel fails instead.
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nnx.backend import kernel_loader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import nvrtc_lib  # noqa: E402

STEMS = sorted(p.stem for p in (ROOT / "kernels").glob("*.cu"))
ARCHES = ["compute_80", "compute_90"]
MAJORS = [12, 13]
# What cupy.cuda.compiler._compile_with_cache_cuda appends to RawModule's options (checked
# against the installed CuPy's source in test_cupy_adds_ftz).
CUPY_ADDED = ("-ftz=true",)


def _missing(what):
    msg = f"{what} (pip install -e '.[test]', or make test)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the NVRTC checks: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def compilers():
    """``{CUDA major: compiler}``: CuPy's binding for its own major, the wheels' for others."""
    found = {}
    try:
        cupy_nvrtc = nvrtc_lib.CupyNvrtc()
        found[cupy_nvrtc.version[0]] = cupy_nvrtc
    except Exception as exc:  # CuPy missing or without its NVRTC library
        print(f"CuPy's NVRTC binding unavailable: {exc}")
    for major, lib in nvrtc_lib.wheel_libraries().items():
        if major not in found:
            found[major] = nvrtc_lib.CtypesNvrtc(lib)
    return found


def compile_spec(compiler, spec, stem, arch):
    options = tuple(spec["options"]) + CUPY_ADDED + (f"-arch={arch}",)
    return compiler.compile(spec["code"], f"{stem}.cu", options, spec["name_expressions"])


def check_compiles(compiler, stem, arch, package_dir=None):
    """Compile ``stem`` as RawModule would; every name expression must lower to a PTX entry."""
    spec = kernel_loader.module_spec(stem, package_dir)
    ptx, lowered = compile_spec(compiler, spec, stem, arch)
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
    assert set(lowered) == set(spec["name_expressions"])
    missing = {e: n for e, n in lowered.items() if n not in entries}
    assert not missing, f"{stem}.cu ({compiler.label}, {arch}): no PTX entry for {missing}"
    assert f".target sm_{arch.split('_')[1]}" in ptx
    return lowered


@pytest.mark.parametrize("major", MAJORS, ids=[f"cuda{m}" for m in MAJORS])
def test_every_kernel_compiles_with_nvrtc(compilers, major):
    if major not in compilers:
        _missing(f"no NVRTC for CUDA {major}: wheel "
                 f"{'nvidia-cuda-nvrtc-cu12' if major == 12 else 'nvidia-cuda-nvrtc'} missing")
    compiler = compilers[major]
    jobs = [(stem, arch) for stem in STEMS for arch in ARCHES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: check_compiles(compiler, *j), jobs))
    names = {e for lowered in results for e in lowered}
    # both element types of every kernel of every file
    expected = {e for s in STEMS for e in kernel_loader.module_spec(s)["name_expressions"]}
    assert names == expected and len(expected) >= 2 * len(STEMS)


def test_cupy_adds_ftz():
    """The options CuPy adds, which the simulator models (FTZ for float kernels)."""
    try:
        from cupy.cuda import compiler
    except Exception as exc:
        _missing(f"CuPy not importable ({exc})")
    src = inspect.getsource(compiler._compile_with_cache_cuda)
    for opt in CUPY_ADDED:
        assert f"'{opt}'" in src, f"CuPy no longer adds {opt}; update CUPY_ADDED and the simulator"


BAD_KERNEL = """#include <stdio.h>
#include "nnx_common.cuh"
template <typename T>
__global__ void shout(long long n, const T* __restrict__ x) {
    NNX_GRID_STRIDE(i, n) printf("%f\\n", (double)x[i]);
}
"""


def test_nvrtc_rejects_what_nvcc_accepts(compilers, tmp_path, monkeypatch):
    """A host header include: nvcc compiles it, NVRTC (no system include path) must not, and
    the check above must report it."""
    if not compilers:
        _missing("no NVRTC at all")
    (tmp_path / "shout.cu").write_text(BAD_KERNEL)
    shutil.copy(ROOT / "kernels" / "nnx_common.cuh", tmp_path / "nnx_common.cuh")
    monkeypatch.setenv("NNX_KERNEL_DIR", str(tmp_path))
    nvcc = shutil.which("nvcc") or ("/usr/local/bin/nvcc"
                                    if Path("/usr/local/bin/nvcc").exists() else None)
    if nvcc:
        wrapper = tmp_path / "inst.cu"
        wrapper.write_text('#include "shout.cu"\nvoid* inst[] = {(void*)&shout<float>};\n')
        proc = subprocess.run([nvcc, "-std=c++14", "-ptx", "-arch=compute_80", "-o",
                               str(tmp_path / "inst.ptx"), str(wrapper)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"nvcc was expected to accept this:\n{proc.stderr}"
    for major, compiler in compilers.items():
        with pytest.raises(nvrtc_lib.NvrtcCompileError, match="stdio.h"):
            check_compiles(compiler, "shout", "compute_90", tmp_path)
