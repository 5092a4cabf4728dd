"""Find nnx's CUDA kernel sources and compile them lazily with CuPy.

Sources live in ``<repo>/kernels/*.cu`` in a checkout and in ``nnx/kernels/*.cu`` inside an
installed wheel (``setup.py`` copies them there).  Each file is compiled once per device, on
first use, as ``cupy.RawModule`` and cached in a module-level dict; nothing is compiled at
import.  Kernels are ``extern "C"`` (unmangled ``<name>_f32`` / ``<name>_f64``), so they are
fetched with ``get_function`` and need no ``name_expressions``.

This module imports CuPy only inside the functions that compile/launch, so the source lookup
(`find_kernel_dir`, `kernel_source`, `kernel_names`) works without CuPy.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

BLOCK = 256                       # threads per block for the element-wise kernels
_MAX_GRID = 65535                 # grid cap without a device (grid-stride loops do the rest)
_BLOCKS_PER_SM = 32               # enough resident blocks to fill an SM several times over
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_OPTIONS = ("--std=c++14",)

_MODULES: dict[tuple[str, int], object] = {}   # (file stem, device id) -> cupy.RawModule
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
    """Text of ``<stem>.cu``."""
    path = find_kernel_dir(package_dir) / f"{stem}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"CUDA kernel source {path} is missing")
    return path.read_text()


def kernel_names(source: str) -> list[str]:
    """The ``extern "C" __global__`` kernel names defined in ``source``."""
    return _KERNEL_RE.findall(source)


def get_module(stem: str):
    """The compiled ``cupy.RawModule`` for ``kernels/<stem>.cu`` on the current device."""
    import cupy
    key = (stem, cupy.cuda.Device().id)
    mod = _MODULES.get(key)
    if mod is None:
        with _LOCK:
            mod = _MODULES.get(key)
            if mod is None:
                mod = cupy.RawModule(code=kernel_source(stem), options=_OPTIONS)
                mod.compile()  # surface compile errors here, not at the first launch
                _MODULES[key] = mod
    return mod


def get_kernel(stem: str, name: str):
    """``cupy.RawKernel`` ``name`` from ``kernels/<stem>.cu`` (compiled on first use)."""
    return get_module(stem).get_function(name)


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
    _GRID_CAP.clear()
