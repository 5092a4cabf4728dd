"""Compile a kernels/*.cu file for the CPU through ``cuda_sim.h`` and call its kernels via ctypes.

For every ``template <typename T> __global__ void name(params)`` in the (preprocessed) source
and every element type T of ``kernel_loader.ELEMENT_TYPES``, a generated driver exports
``sim_name_T(unsigned grid, unsigned block, params)`` which runs ``name<T>`` with
``nnx_sim::launch``; :func:`build` returns them keyed by name expression (``"relu<float>"``),
the names CuPy's ``get_function`` takes.  Builds are cached by content hash in the directory
the caller gives.

GPU floating point, modelled (CuPy compiles with ``-ftz=true``; NVRTC contracts ``a*b+c``):
* float instantiations run with the x86 FTZ and DAZ bits set, so float32 denormals are read
  and written as zero, as on the GPU; double instantiations keep denormals (CUDA's -ftz
  affects single precision only);
* the driver is compiled with ``-ffp-contract=fast`` (and ``-mfma`` where the CPU has FMA),
  so g++ fuses multiply-adds as nvcc/NVRTC do.  The choice of which products are fused can
  differ from the GPU's: the model makes results differ from NumPy's two-rounding order the
  way a GPU's do, it does not reproduce a GPU bit for bit.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from nnx.backend import kernel_loader

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_sim.h"
_KERNEL_RE = re.compile(
    r'template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
# element types to instantiate, in the loader's order (the loader is the source of truth)
ELEMENT_TYPES = tuple(kernel_loader.ELEMENT_TYPES.values())
FTZ_TYPES = {"float"}   # -ftz=true flushes single-precision denormals only
_CTYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "unsigned": ctypes.c_uint,
           "float": ctypes.c_float, "double": ctypes.c_double}


def gxx():
    """Path of g++ or None."""
    return shutil.which("g++")


def _has_fma() -> bool:
    try:
        return " fma " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def parse_kernels(cu_path) -> dict[str, tuple[str, str, list[tuple[str, str]]]]:
    """``{"name<T>": (name, T, [(c_type, param), ...])}`` for every template kernel and
    element type, T substituted, from the macro-expanded source."""
    pre = subprocess.run([gxx(), "-E", "-P", "-x", "c++", str(cu_path)], check=True,
                         capture_output=True, text=True).stdout
    kernels = {}
    for name, params in _KERNEL_RE.findall(pre):
        for t in ELEMENT_TYPES:
            args = []
            for p in params.split(","):
                p = " ".join(re.sub(r"\bT\b", t, p.replace("*", " * ")).split())
                ctype, pname = p.rsplit(" ", 1)
                args.append((ctype, pname))
            kernels[f"{name}<{t}>"] = (name, t, args)
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
    for name, t, params in kernels.values():
        decl = ", ".join(f"{ct} {n}" for ct, n in params)
        names = ", ".join(n for _, n in params)
        ftz = "true" if t in FTZ_TYPES else "false"
        lines.append(f'extern "C" void sim_{name}_{t}(unsigned grid, unsigned block, {decl}) '
                     f'{{ nnx_sim::launch({name}<{t}>, dim3(grid), dim3(block), {ftz}, '
                     f'{names}); }}')
    driver = "\n".join(lines) + "\n"
    flags = ["-std=c++17", "-O2", "-ffp-contract=fast", *(["-mfma"] if _has_fma() else []),
             "-shared", "-fPIC", "-pthread", "-Wall", "-Wno-unused-label"]
    # the key covers every source the build reads (headers next to the .cu included)
    sources = [cu_path, HEADER, *sorted(cu_path.parent.glob("*.cuh"))]
    key = hashlib.sha256((driver + " ".join(flags) + "".join(
        p.read_text() for p in sources)).encode()).hexdigest()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib_path = cache_dir / f"{cu_path.stem}-{key[:16]}.so"
    if not lib_path.exists():
        src = cache_dir / f"{cu_path.stem}-{key[:16]}.cpp"
        src.write_text(driver)
        tmp = lib_path.with_suffix(".so.tmp")
        proc = subprocess.run([gxx(), *flags, "-o", str(tmp), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ failed for {cu_path.name}:\n{proc.stderr[-4000:]}")
        tmp.replace(lib_path)
    lib = ctypes.CDLL(str(lib_path))
    return {expr: SimKernel(getattr(lib, f"sim_{name}_{t}"), params)
            for expr, (name, t, params) in kernels.items()}
