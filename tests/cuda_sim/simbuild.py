"""Compile a kernels/*.cu file for the CPU through ``cuda_sim.h`` and call its kernels via ctypes.

For every ``extern "C" __global__ void name(params)`` in the (preprocessed) source, a generated
driver exports ``sim_name(unsigned grid, unsigned block, params)`` which runs the kernel with
``nnx_sim::launch``.  Builds are cached by content hash in the directory the caller gives.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_sim.h"
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_CTYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "unsigned": ctypes.c_uint,
           "float": ctypes.c_float, "double": ctypes.c_double}


def gxx():
    """Path of g++ or None."""
    return shutil.which("g++")


def parse_kernels(cu_path) -> dict[str, list[tuple[str, str]]]:
    """``{kernel: [(c_type, name), ...]}`` from the macro-expanded source."""
    pre = subprocess.run([gxx(), "-E", "-P", "-x", "c++", str(cu_path)], check=True,
                         capture_output=True, text=True).stdout
    kernels = {}
    for name, params in _KERNEL_RE.findall(pre):
        args = []
        for p in params.split(","):
            p = " ".join(p.replace("*", " * ").split())
            ctype, pname = p.rsplit(" ", 1)
            args.append((ctype, pname))
        kernels[name] = args
    return kernels


def _ctype(ctype: str):
    if "*" in ctype:
        return ctypes.c_void_p
    base = " ".join(t for t in ctype.split() if t not in ("const", "__restrict__"))
    return _CTYPES[base]


class SimKernel:
    """Callable ``k(grid, block, *args)``; NumPy arrays are passed by pointer (must be
    C-contiguous), scalars converted to the declared C type."""

    def __init__(self, fn, params):
        self.params = params
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [_ctype(t) for t, _ in params]
        fn.restype = None
        self._fn = fn

    def __call__(self, grid, block, *args):
        if len(args) != len(self.params):
            raise TypeError(f"expected {len(self.params)} kernel args, got {len(args)}")
        conv = []
        for a, (ctype, name) in zip(args, self.params):
            if isinstance(a, np.ndarray):
                if "*" not in ctype:
                    raise TypeError(f"{name}: array given for scalar {ctype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{name}: array must be C-contiguous")
                conv.append(a.ctypes.data)
            else:
                conv.append(a)
        self._fn(int(grid), int(block), *conv)


def build(cu_path, cache_dir) -> dict[str, SimKernel]:
    """Compile ``cu_path`` with the simulator into a shared library; return its kernels."""
    cu_path = Path(cu_path).resolve()
    kernels = parse_kernels(cu_path)
    lines = [f'#include "{HEADER}"', f'#include "{cu_path}"']
    for name, params in kernels.items():
        decl = ", ".join(f"{t} {n}" for t, n in params)
        names = ", ".join(n for _, n in params)
        lines.append(f'extern "C" void sim_{name}(unsigned grid, unsigned block, {decl}) '
                     f'{{ nnx_sim::launch({name}, dim3(grid), dim3(block), {names}); }}')
    driver = "\n".join(lines) + "\n"
    key = hashlib.sha256((driver + cu_path.read_text() + HEADER.read_text()).encode()).hexdigest()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib_path = cache_dir / f"{cu_path.stem}-{key[:16]}.so"
    if not lib_path.exists():
        src = cache_dir / f"{cu_path.stem}-{key[:16]}.cpp"
        src.write_text(driver)
        tmp = lib_path.with_suffix(".so.tmp")
        proc = subprocess.run([gxx(), "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread",
                               "-Wall", "-Wno-unused-label", "-o", str(tmp), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ failed for {cu_path.name}:\n{proc.stderr[-4000:]}")
        tmp.replace(lib_path)
    lib = ctypes.CDLL(str(lib_path))
    return {name: SimKernel(getattr(lib, f"sim_{name}"), params)
            for name, params in kernels.items()}
