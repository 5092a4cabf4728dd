"""Compiled CPU kernels (``kernels/cpu/*.c``): built at first use, cached on disk, loaded with
ctypes.

The NumPy backend's convolution, max pooling and batch norm have a C implementation next to
the NumPy one (a direct convolution that never builds an im2col matrix, a one-pass max pool,
a batch norm with one pass for the statistics).  Like the CUDA
kernels, the sources ship with nnx and are compiled lazily, here by the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) with ``-O3 -march=native``.  The shared library is
cached under ``$NNX_CACHE_DIR`` (default ``~/.cache/nnx``) keyed by a hash of the sources,
the compiler's version and the flags, and written atomically (temp file + rename).

``NNX_CPU_ARCH`` picks the instruction set: ``-march=$NNX_CPU_ARCH`` (default ``native``; e.g.
``x86-64`` for SSE2 only, ``x86-64-v3`` for AVX2), so one machine can build and test the other
vector widths the kernels compile to.

``NNX_CPU_KERNELS`` (read at every call):

* unset / ``auto``: use the C kernels when they build; otherwise warn once and use NumPy;
* ``0`` / ``off``: NumPy only;
* ``1`` / ``on``: C kernels required; :class:`NativeUnavailableError` says why they are not.

The NumPy path stays the reference: tests compare both on the same inputs.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from ..atomic_files import commit, temp_sibling
from .kernel_loader import candidate_dirs

_FLAGS = ("-O3", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC")
_ARCH_FLAGS: tuple[str, ...] | None = None   # None: -march from NNX_CPU_ARCH (default native)

_P, _I, _L, _D = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_double
# exported functions per source file: name -> argument types (both _f32 and _f64 exist)
_SIGNATURES = {
    "conv2d": {
        "conv2d_forward": [_P] * 4 + [_I] * 13,
        "conv2d_backward_weight": [_P] * 4 + [_I] * 14,
    },
    "maxpool2d": {
        "maxpool2d_forward": [_P] * 3 + [_L] + [_I] * 10,
        "maxpool2d_backward": [_P] * 3 + [_L] + [_I] * 4,
    },
    "batchnorm2d": {
        "batchnorm_forward": [_P] * 2 + [_L] * 5 + [_P] * 5 + [_D, _I, _I],
        "batchnorm_backward": [_P] * 3 + [_L] * 5 + [_P] * 5 + [_I, _P],
    },
}
# every kernel above also has a task entry point ``<name>_task_f32/_f64(args, a, b)`` run over
# chunks by nnx_parallel_run (kernels/cpu/parallel.c, see nnx/backend/cpu_tasks.py)
_TASK_ARGS = [_P, _L, _L]
# libraries of tasks only (no direct entry points): stem -> task names (without "_task")
_TASK_ONLY = {"elementwise": ["add", "relu", "relu_backward", "add_relu", "bias_relu"],
              "conv2d": ["phase_scatter"]}
# libraries whose functions have no dtype suffix: name -> (argument types, result type)
_PLAIN = {
    "parallel": {
        "nnx_parallel_run": ([_P, _P, _L, _I], _I),
        "nnx_parallel_workers": ([], _I),
        "nnx_parallel_set_spin_us": ([_L], _L),
        "nnx_parallel_probe": ([_P, _L, _L], _I),
    },
}
_STEM_FLAGS = {"parallel": ("-pthread",)}   # extra compiler flags of one library
_STEMS = (*_SIGNATURES, *_TASK_ONLY, *_PLAIN)  # every library under kernels/cpu/

_lock = threading.Lock()
_libs: dict[str, object] = {}        # stem -> ctypes.CDLL, or the error text of a failed build
_flags: dict[str, str] = {}          # stem -> optimisation flags it was built with
_warned = False


class NativeUnavailableError(RuntimeError):
    """``NNX_CPU_KERNELS=1`` but the C kernels could not be built or loaded."""


def mode() -> str:
    """``'auto'``, ``'off'`` or ``'on'`` from ``NNX_CPU_KERNELS``."""
    v = os.environ.get("NNX_CPU_KERNELS", "auto").strip().lower()
    if v in ("", "auto"):
        return "auto"
    if v in ("0", "off", "false", "no"):
        return "off"
    if v in ("1", "on", "true", "yes"):
        return "on"
    raise ValueError(f"NNX_CPU_KERNELS must be auto, 0 or 1, got {v!r}")


def source_dir() -> Path:
    """The folder with the C sources: ``<kernel dir>/cpu`` (see ``kernel_loader``)."""
    dirs = [d / "cpu" for d in candidate_dirs()]
    for d in dirs:
        if (d / "conv2d.c").is_file():
            return d
    raise FileNotFoundError("nnx C kernel sources (kernels/cpu/*.c) not found; looked in "
                            + ", ".join(str(d) for d in dirs))


def cache_dir() -> Path:
    env = os.environ.get("NNX_CACHE_DIR")
    if env:
        return Path(env) / "cpu-kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnx" / "cpu-kernels"


def compiler() -> str | None:
    """Path of the C compiler that would be used, or None."""
    env = os.environ.get("CC")
    names = [env] if env else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name.split()[0]) if name else None
        if path:
            return path
    return None


def arch_flags() -> tuple[str, ...]:
    """``-march=...`` for the build (dropped, with a retry, when the compiler rejects it)."""
    if _ARCH_FLAGS is not None:
        return _ARCH_FLAGS
    arch = os.environ.get("NNX_CPU_ARCH", "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", arch):
        raise ValueError(f"NNX_CPU_ARCH must be a -march value such as native, x86-64 or "
                         f"x86-64-v3, got {arch!r}")
    return (f"-march={arch}",)


def _cpu_id() -> str:
    """The CPU's feature flags: a library built with -march=native must not be reused by
    another CPU sharing this cache (e.g. a home folder on a network file system)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _build(stem: str):
    """Compile ``<stem>.c`` (cached); returns ``(path of the shared library, arch flags
    used)`` or raises :class:`NativeUnavailableError`."""
    cc = compiler()
    if cc is None:
        raise NativeUnavailableError("no C compiler found (set CC, or install gcc/clang)")
    src_dir = source_dir()
    src = src_dir / f"{stem}.c"
    h = hashlib.sha256()
    for f in sorted(src_dir.glob("*.[ch]")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    version = _run([cc, "--version"]).stdout
    arch_opts = arch_flags()
    extra = _STEM_FLAGS.get(stem, ())
    h.update("\0".join([cc, version, platform.machine(), _cpu_id(), *_FLAGS, *extra,
                        *arch_opts]).encode())
    out_dir = cache_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(out_dir, os.W_OK | os.X_OK)   # EROFS counts as not writable
    except OSError:
        writable = False
    if not writable:                  # read-only home: a private temporary folder instead
        out_dir = Path(tempfile.mkdtemp(prefix="nnx-cpu-kernels-"))
    # "-generic": built without -march (the compiler rejected it)
    libs = {arch: out_dir / f"{stem}-{h.hexdigest()[:20]}{'' if arch else '-generic'}.so"
            for arch in (arch_opts, ())}
    for arch, lib in libs.items():
        if lib.is_file():
            return lib, arch
    errors = []
    for arch, lib in libs.items():
        # the compiler writes a temporary sibling that is renamed into place: other
        # processes see all of the library or nothing, and the rename also removes
        # temporaries left by builds that were killed
        with temp_sibling(lib) as tmp:
            r = _run([cc, *_FLAGS, *extra, *arch, str(src), "-o", str(tmp)])
            if r.returncode == 0:
                commit(tmp, lib)
                return lib, arch
            errors.append(r.stderr.strip()[-2000:])
    raise NativeUnavailableError(f"compiling {src} with {cc} failed:\n" + errors[-1])


def _load(stem: str):
    path, arch = _build(stem)
    _flags[stem] = " ".join(_FLAGS[:3] + arch)
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.get(stem, {}).items():
        for suffix in ("_f32", "_f64"):
            fn = getattr(lib, name + suffix)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
            fn = getattr(lib, name + "_task" + suffix)
            fn.argtypes, fn.restype = _TASK_ARGS, ctypes.c_int
    for name in _TASK_ONLY.get(stem, []):
        for suffix in ("_f32", "_f64"):
            fn = getattr(lib, name + "_task" + suffix)
            fn.argtypes, fn.restype = _TASK_ARGS, ctypes.c_int
    for name, (argtypes, restype) in _PLAIN.get(stem, {}).items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def _get(stem: str):
    """The loaded library, or the error text of its failed build (built once per process)."""
    lib = _libs.get(stem)
    if lib is None:
        with _lock:
            lib = _libs.get(stem)
            if lib is None:
                try:
                    lib = _load(stem)
                except Exception as e:  # noqa: BLE001 -- any failure means "use NumPy"
                    lib = f"{type(e).__name__}: {e}"
                _libs[stem] = lib
    return lib


def library(stem: str):
    """The loaded library for ``kernels/cpu/<stem>.c``, or None (NumPy fallback) when
    ``NNX_CPU_KERNELS=0`` or, in auto mode, when it cannot be built (warned once)."""
    global _warned
    m = mode()
    if m == "off":
        return None
    lib = _get(stem)
    if isinstance(lib, str):
        if m == "on":
            raise NativeUnavailableError(f"NNX_CPU_KERNELS=1 but the C kernels are unavailable: "
                                         f"{lib}")
        if not _warned:
            _warned = True
            warnings.warn(f"nnx: C kernels unavailable, using the NumPy CPU path ({lib}); "
                          "set NNX_CPU_KERNELS=0 to silence", RuntimeWarning, stacklevel=3)
        return None
    return lib


def function(stem: str, name: str, dtype, any_mode: bool = False):
    """``<name>_f32`` / ``<name>_f64`` for ``dtype``, or None (no library, or another dtype).

    ``any_mode=True`` ignores ``NNX_CPU_KERNELS``: a backward pass whose forward ran in C
    must finish in C even if the variable changed in between (its saved state is C's)."""
    suffix = {"float32": "_f32", "float64": "_f64"}.get(np.dtype(dtype).name)
    lib = _get(stem) if any_mode else library(stem)
    if lib is None or isinstance(lib, str) or suffix is None:
        if any_mode:
            raise NativeUnavailableError(f"C kernel {name} for {dtype} is unavailable: {lib}")
        return None
    return getattr(lib, name + suffix)


def task(stem: str, name: str, dtype, any_mode: bool = False):
    """``(function, address)`` of the task entry point ``<name>_task_f32/_f64`` (see
    :func:`function` for ``any_mode``), or None: what :func:`nnx.backend.cpu_tasks.run` runs."""
    fn = function(stem, name + "_task", dtype, any_mode)
    return None if fn is None else (fn, task_address(fn))


def task_address(fn) -> int:
    """The address of a loaded C function (what ``nnx_parallel_run`` takes), cached on it."""
    addr = getattr(fn, "nnx_address", None)
    if addr is None:
        addr = fn.nnx_address = ctypes.cast(fn, ctypes.c_void_p).value
    return addr


def pool():
    """The C thread pool library (``kernels/cpu/parallel.c``), or None when it cannot be
    built (callers then split the work with Python threads)."""
    lib = _get("parallel")
    return None if isinstance(lib, str) else lib


def describe() -> str:
    """One line for benchmark reports: which CPU path runs and how it was built."""
    m = mode()
    if m == "off":
        return "numpy (NNX_CPU_KERNELS=0)"
    try:
        ok = all(library(s) is not None for s in _STEMS)
    except NativeUnavailableError as e:
        return f"unavailable: {e}"
    if not ok:
        return "numpy (C kernels failed to build: " + "; ".join(
            str(v) for v in _libs.values() if isinstance(v, str))[:300] + ")"
    cc = compiler() or "?"
    return f"C kernels ({Path(cc).name} {_flags.get('conv2d', '')})"


def reset() -> None:
    """Forget loaded libraries and the warning (tests switch compilers and modes)."""
    global _warned
    with _lock:
        _libs.clear()
        _warned = False
