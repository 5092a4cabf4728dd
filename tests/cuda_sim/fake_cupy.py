"""A tiny stand-in for the ``cupy`` module, for testing CupyBackend without a GPU.

Arrays are an ``ndarray`` subclass of NumPy's; ``RawModule`` compiles the CUDA source through
``cuda_sim.h`` (see ``simbuild.py``) and its kernels check every argument against the C
signature exactly as the GPU would need it (``float`` must be a ``numpy.float32``, pointers
must be C-contiguous arrays of the pointee type), so argument marshalling bugs that CuPy would
silently turn into garbage fail loudly here.  ``empty``/``empty_like`` return NaN-poisoned
memory so unwritten outputs show up.  Install with ``sys.modules["cupy"] = fake_cupy``.
"""
from __future__ import annotations

import hashlib
import tempfile
import types
from pathlib import Path

import numpy as np

import simbuild

BUILD_DIR = Path(tempfile.gettempdir()) / "nnx_fake_cupy_build"


class ndarray(np.ndarray):
    """Marks "device" arrays."""


def _dev(a):
    return np.asarray(a).view(ndarray)


def _poison(a):
    if a.dtype.kind == "f":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(-7)
    return a


int32, int64, float32, float64 = np.int32, np.int64, np.float32, np.float64


def asarray(x, dtype=None):
    return _dev(np.array(x, dtype=dtype, copy=True))  # a "transfer" never aliases host memory


def ascontiguousarray(a, dtype=None):
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if isinstance(out, ndarray) else _dev(out)


def empty(shape, dtype=float):
    return _poison(_dev(np.empty(shape, dtype)))


def empty_like(a, dtype=None):
    return _poison(_dev(np.empty(np.shape(a), dtype or a.dtype)))


def zeros(shape, dtype=float):
    return _dev(np.zeros(shape, dtype))


def zeros_like(a):
    return _dev(np.zeros_like(np.asarray(a)))


def broadcast_to(a, shape):
    return _dev(np.broadcast_to(a, shape))


def asnumpy(a):
    return np.array(a).view(np.ndarray)


class _Pool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


def get_default_memory_pool():
    return _Pool()


class _RandomState:
    def __init__(self, seed=0):
        self._g = np.random.default_rng(seed)

    def random_sample(self, size=None, dtype=float):
        return _dev(self._g.random(size, dtype=np.dtype(dtype)))

    def randint(self, low, high=None, size=None, dtype="l"):
        return _dev(self._g.integers(low, high, size=size, dtype=np.dtype(dtype)))


random = types.SimpleNamespace(RandomState=_RandomState)


class _Device:
    def __init__(self, index=0):
        self.id = int(index)
        self.attributes = {"MultiProcessorCount": 2}  # small grid cap: exercises grid-striding

    def use(self):
        pass

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(
    Device=_Device,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=lambda: (1 << 30, 2 << 30)))

_SCALARS = {"long long": np.int64, "int": np.int32, "unsigned": np.uint32, "float": np.float32,
            "double": np.float64}
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64}


def _base_type(ctype):
    words = ctype.replace("*", " ").split()
    return " ".join(t for t in words if t not in ("const", "__restrict__"))


class _Kernel:
    def __init__(self, name, sim_kernel):
        self.name, self._k = name, sim_kernel
        self.calls = 0

    def __call__(self, grid, block, args, shared_mem=0):
        params = self._k.params
        if len(args) != len(params):
            raise TypeError(f"{self.name}: {len(args)} args for {len(params)} parameters")
        conv = []
        for a, (ctype, pname) in zip(args, params):
            base = _base_type(ctype)
            if "*" in ctype:
                if not isinstance(a, ndarray):
                    raise TypeError(f"{self.name}({pname}): expected a device array, got "
                                    f"{type(a).__name__}")
                if a.dtype != _POINTEES[base] or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}({pname}): needs contiguous {base}, got "
                                    f"{a.dtype} contiguous={a.flags.c_contiguous}")
                conv.append(a.view(np.ndarray))
            else:
                if type(a) is not _SCALARS[base]:
                    raise TypeError(f"{self.name}({pname}): C type {base} needs "
                                    f"numpy.{_SCALARS[base].__name__}, got {type(a).__name__}")
                conv.append(a.item())
        (g,), (b,) = tuple(grid), tuple(block)
        self.calls += 1
        self._k(g, b, *conv)


class RawModule:
    # the exact keyword set of cupy 13's RawModule, so a wrong keyword fails here too
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=False):
        if code is None:
            raise TypeError("fake RawModule supports code= only")
        if not all(isinstance(o, str) for o in options):
            raise TypeError(f"options must be a tuple of str, got {options!r}")
        self.code, self.options = code, tuple(options)
        self._kernels = None
        self._tag = "mod-" + hashlib.sha256(code.encode()).hexdigest()[:12]

    def compile(self, log_stream=None):
        if self._kernels is None:
            BUILD_DIR.mkdir(parents=True, exist_ok=True)
            src = BUILD_DIR / f"{self._tag}.cu"
            if not src.exists():
                src.write_text(self.code)
            self._kernels = simbuild.build(src, BUILD_DIR)

    def get_function(self, name):
        self.compile()
        return _Kernel(name, self._kernels[name])
