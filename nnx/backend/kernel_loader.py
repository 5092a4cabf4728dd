"""Find nnx's CUDA kernel sources and compile them lazily with CuPy.

Sources live in ``<repo>/kernels/*.cu`` (plus the shared header ``nnx_common.cuh``) in a
checkout and in ``nnx/kernels/`` inside an installed wheel (``setup.py`` copies them there).
Each kernel is a ``template <typename T> __global__`` function written once; a file is
compiled once per device, on first use, as ``cupy.RawModule(code, options,
name_expressions=[...])`` with one name expression per kernel and element type
(``relu<float>``, ``relu<double>``) and cached in a module-level dict; nothing is compiled at
import.  Kernels are fetched with ``get_function("relu<float>")`` (CuPy's documented way to
use C++ templates).  :func:`module_spec` is the single description of what RawModule gets, so
the NVRTC tests compile exactly that.

This module imports CuPy only inside the functions that compile/launch, so the source lookup
(`find_kernel_dir`, `kernel_source`, `kernel_names`, `module_spec`) works without CuPy.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

BLOCK = 256                       # threads per block for the element-wise kernels
_MAX_GRID = 65535                 # grid cap without a device (grid-stride loops do the rest)
_BLOCKS_PER_SM = 32               # enough resident blocks to fill an SM several times over
_KERNEL_RE = re.compile(r'template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(')
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
# Options nnx gives RawModule (CuPy itself adds -ftz=true and -arch=sm_XX/compute_XX).
COMPILE_OPTIONS = ("--std=c++14",)
# Element type of each instantiation, by NumPy dtype name.  half/bfloat16 would be added here
# (plus their overloads in nnx_common.cuh).
ELEMENT_TYPES = {"float32": "float", "float64": "double"}

_MODULES: dict[tuple[str, int], object] = {}   # (file stem, device id) -> cupy.RawModule
# (file stem, name expression, device id) -> cupy.RawKernel: get_function builds a new
# RawKernel and calls cuModuleGetFunction each time, so it runs once per kernel, not per launch
_KERNELS: dict[tuple[str, str, int], object] = {}
_GRID_CAP: dict[int, int] = {}                  # device id -> max blocks per launch
_LOCK = threading.Lock()


def candidate_dirs(package_dir=None) -> list[Path]:
    """Directories searched for ``*.cu``, in order: ``$NNX_KERNEL_DIR``, the installed
    package's ``nnx/kernels``, then a checkout's ``<repo>/kernels`` (next to the package)."""
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    dirs = []
    env = os.environ.get("NNX_KERNEL_DIR")
    if env:
        dirs.append(Path(env))
    dirs += [pkg / "kernels", pkg.parent / "kernels"]
    return dirs


def find_kernel_dir(package_dir=None) -> Path:
    """The first candidate directory that holds ``.cu`` files; a clear error if none does."""
    dirs = candidate_dirs(package_dir)
    for d in dirs:
        if d.is_dir() and any(d.glob("*.cu")):
            return d
    raise FileNotFoundError(
        "nnx CUDA kernel sources (*.cu) not found; looked in "
        + ", ".join(str(d) for d in dirs)
        + " (reinstall nnx, or set NNX_KERNEL_DIR to a folder with the .cu files)")


def kernel_source(stem: str, package_dir=None) -> str:
    """Text of ``<stem>.cu`` with its local ``#include "..."`` headers inlined (each once), so
    the code is self-contained: NVRTC needs no include path and CuPy's compile cache, keyed
    by the source text, changes when a header does."""
    root = find_kernel_dir(package_dir)
    path = root / f"{stem}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"CUDA kernel source {path} is missing")
    seen: set[str] = set()

    def inline(match):
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        header = root / name
        if not header.is_file():
            raise FileNotFoundError(f"{path.name} includes {name!r}, which is not in {root}")
        return _INCLUDE_RE.sub(inline, header.read_text())

    return _INCLUDE_RE.sub(inline, path.read_text())


def kernel_names(source: str) -> list[str]:
    """The ``template <typename T> __global__`` kernel names defined in ``source``."""
    return _KERNEL_RE.findall(source)


def element_type(dtype) -> str:
    """C++ element type of the kernel instantiation for NumPy ``dtype``; TypeError if none."""
    import numpy as np
    try:
        return ELEMENT_TYPES[np.dtype(dtype).name]
    except (KeyError, TypeError):
        raise TypeError(f"the cuda kernels support {', '.join(ELEMENT_TYPES)}, got "
                        f"{dtype}") from None


def instance(name: str, dtype) -> str:
    """Name expression of kernel ``name`` for ``dtype``, e.g. ``relu<float>``."""
    return f"{name}<{element_type(dtype)}>"


def module_spec(stem: str, package_dir=None) -> dict:
    """Keyword arguments of ``cupy.RawModule`` for ``kernels/<stem>.cu``: the self-contained
    ``code``, ``options`` (a tuple, as RawModule requires) and ``name_expressions`` (every
    kernel of the file for every element type)."""
    code = kernel_source(stem, package_dir)
    names = kernel_names(code)
    if not names:
        raise ValueError(f"{stem}.cu defines no 'template <typename T> __global__' kernel")
    return {"code": code, "options": COMPILE_OPTIONS,
            "name_expressions": [f"{n}<{t}>" for n in names for t in ELEMENT_TYPES.values()]}


def get_module(stem: str):
    """The compiled ``cupy.RawModule`` for ``kernels/<stem>.cu`` on the current device."""
    import cupy
    key = (stem, cupy.cuda.Device().id)
    mod = _MODULES.get(key)
    if mod is None:
        with _LOCK:
            mod = _MODULES.get(key)
            if mod is None:
                mod = cupy.RawModule(**module_spec(stem))
                mod.compile()  # surface compile errors here, not at the first launch
                _MODULES[key] = mod
    return mod


def get_kernel(stem: str, name: str, dtype):
    """``cupy.RawKernel`` ``name<T>`` (T the element type of ``dtype``) from
    ``kernels/<stem>.cu``, compiled on first use and fetched once per device (cached in
    ``_KERNELS``, as Chainer's memoized kernel builders do)."""
    import cupy
    expr = instance(name, dtype)
    key = (stem, expr, cupy.cuda.Device().id)
    kern = _KERNELS.get(key)
    if kern is None:
        kern = get_module(stem).get_function(expr)
        _KERNELS[key] = kern   # a race only fetches twice; both objects are equivalent
    return kern


def _grid_cap() -> int:
    import cupy
    dev = cupy.cuda.Device()
    cap = _GRID_CAP.get(dev.id)
    if cap is None:
        try:
            sms = dev.attributes["MultiProcessorCount"]
            cap = max(1, min(_MAX_GRID, sms * _BLOCKS_PER_SM))
        except Exception:  # attribute missing on odd builds: fall back to the fixed cap
            cap = _MAX_GRID
        _GRID_CAP[dev.id] = cap
    return cap


def launch_config(n: int, block: int = BLOCK, max_grid: int | None = None):
    """``(grid, block)`` tuples for ``n`` work items: ``ceil(n/block)`` blocks, capped by
    ``max_grid`` (default: 32 blocks per SM of the current device, at most 65535); the
    kernels' grid-stride loops cover the rest."""
    cap = _grid_cap() if max_grid is None else max_grid
    grid = max(1, min(-(-int(n) // block), cap))
    return (grid,), (block,)


def rows_config(n_rows: int, n_cols: int, max_grid: int | None = None):
    """Launch for the one-block-per-row kernels: a power-of-two block (32..256) that fits the
    row, one block per row up to the grid cap."""
    block = 32
    while block < 256 and block < n_cols:
        block *= 2
    cap = _grid_cap() if max_grid is None else max_grid
    return (max(1, min(int(n_rows), cap)),), (block,)


def clear_cache() -> None:
    """Forget compiled modules (tests; after changing a .cu file)."""
    _MODULES.clear()
    _KERNELS.clear()
    _GRID_CAP.clear()
