"""A tiny stand-in for the ``cupy`` module, for testing CupyBackend without a GPU.

Arrays are an ``ndarray`` subclass of NumPy's; ``RawModule`` compiles the CUDA source through
``cuda_sim.h`` (see ``simbuild.py``) and its kernels check every argument against the C
signature exactly as the GPU would need it (``float`` must be a ``numpy.float32``, pointers
must be C-contiguous arrays of the pointee type), so argument marshalling bugs that CuPy would
silently turn into garbage fail loudly here.  ``empty``/``empty_like`` return NaN-poisoned
memory so unwritten outputs show up.  Install with ``sys.modules["cupy"] = fake_cupy``.

Array API.  Any NumPy function not defined here is reached through the module-level
``__getattr__`` and behaves like CuPy's namesake: results stay device arrays (``ndarray``,
0-d arrays instead of NumPy scalars, as CuPy returns), and a plain (host) ``numpy.ndarray``
argument raises ``TypeError`` like CuPy does (``Unsupported type numpy.ndarray``) — except in
the transfer functions ``array``/``asarray``/``asanyarray`` and the ``*_like`` constructors.
The same rule holds for operators and NumPy ufuncs on device arrays (``dev * host`` raises),
so code that mixes host arrays into device math fails here as it would on a GPU.  NumPy
*functions* called directly on device arrays (``np.concatenate(dev)``) work through
``__array_function__`` as with CuPy, and are logged in ``NUMPY_CALLS`` (name, caller) so tests
can report them.  What a subclass cannot catch: ``np.asarray(dev)``/``np.array(dev)`` return a
host copy silently (CuPy raises); the host result is then caught where it meets device data.
The array class claims CuPy's module name so that nnx's ``type(x).__module__`` checks treat
it as a CuPy array (``.get()`` is provided).
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

import simbuild

BUILD_DIR = Path(tempfile.gettempdir()) / "nnx_fake_cupy_build"
NUMPY_CALLS: list[tuple[str, str]] = []   # (numpy function, "file:line") on device arrays

_TRANSFER = {"array", "asarray", "asanyarray"}


class ndarray(np.ndarray):
    """Marks "device" arrays."""

    def get(self, stream=None, order="C", out=None):
        """Host copy (CuPy's ``ndarray.get``)."""
        return asnumpy(self)

    def __getitem__(self, key):
        r = super().__getitem__(key)
        return _dev(r) if isinstance(r, np.generic) else r   # CuPy gives 0-d arrays

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _reject_host(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__,
                     inputs)
        if out is not None:
            _reject_host(ufunc.__name__ + " out=", out)
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*(_host_view(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        caller = sys._getframe(1)
        NUMPY_CALLS.append((func.__name__, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
        _reject_host(func.__name__, (args, kwargs))
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))


ndarray.__module__ = "cupy._core.core"   # nnx detects CuPy arrays by module name


def _host_view(a):
    return a.view(np.ndarray) if isinstance(a, ndarray) else a


def _unwrap(obj):
    if isinstance(obj, ndarray):
        return obj.view(np.ndarray)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, ndarray):
        return obj
    if isinstance(obj, (np.ndarray, np.generic)):
        return _dev(obj)
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _find_host(obj, depth=0):
    if isinstance(obj, np.ndarray) and not isinstance(obj, ndarray):
        return obj
    if depth < 3 and isinstance(obj, (list, tuple)):
        for o in obj:
            h = _find_host(o, depth + 1)
            if h is not None:
                return h
    if depth < 3 and isinstance(obj, dict):
        return _find_host(list(obj.values()), depth + 1)
    return None


def _reject_host(what, args):
    host = _find_host(args)
    if host is not None:
        raise TypeError(f"fake cupy: {what} got a host numpy.ndarray (shape {host.shape}, "
                        f"dtype {host.dtype}); CuPy functions and operators reject host arrays "
                        f"('Unsupported type numpy.ndarray'): move it with cupy.asarray")


def _dev(a):
    return np.asarray(a).view(ndarray)


def _poison(a):
    if a.dtype.kind == "f":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(-7)
    return a


int32, int64, float32, float64 = np.int32, np.int64, np.float32, np.float64


def asarray(x, dtype=None, order=None):
    if isinstance(x, ndarray) and (dtype is None or np.dtype(dtype) == x.dtype):
        return x  # CuPy's asarray does not copy a device array
    return _dev(np.array(x, dtype=dtype, copy=True))  # a "transfer" never aliases host memory


def ascontiguousarray(a, dtype=None):
    _reject_host("ascontiguousarray", (a,))
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if isinstance(out, ndarray) else _dev(out)


def empty(shape, dtype=float, order="C"):
    return _poison(_dev(np.empty(shape, dtype, order=order)))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return _poison(_dev(np.empty(np.shape(a) if shape is None else shape, dtype or a.dtype)))


def broadcast_to(a, shape):
    _reject_host("broadcast_to", (a,))
    return _dev(np.broadcast_to(a, shape))


def asnumpy(a, stream=None, order="C", out=None):
    return np.array(a).view(np.ndarray)


class _Ufunc:
    """A NumPy ufunc seen through cupy: host arrays rejected, device results."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        _reject_host(self.__name__, (args, kwargs))
        return _call_device(self._uf, args, kwargs)

    def __getattr__(self, method):   # reduce, accumulate, at, outer
        fn = getattr(self._uf, method)
        name = f"{self.__name__}.{method}"

        def call(*args, **kwargs):
            _reject_host(name, (args, kwargs))
            return _call_device(fn, args, kwargs)
        return call


def _call_device(fn, args, kwargs):
    out = kwargs.get("out")
    result = fn(*_unwrap(args), **_unwrap(kwargs))
    if out is not None:
        return out
    return _wrap(result)


def _device_function(fn, name):
    transfer = name in _TRANSFER or name.endswith("_like")

    def call(*args, **kwargs):
        if not transfer:
            _reject_host(name, (args, kwargs))
        return _call_device(fn, args, kwargs)
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"fake cupy.{name}: numpy.{name} on device arrays"
    return call


def __getattr__(name):
    """Everything else: NumPy's namesake, CuPy-like (see the module docstring)."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        obj = getattr(np, name)
    except AttributeError:
        raise AttributeError(f"fake cupy has no attribute {name!r} (numpy has none either)") \
            from None
    if isinstance(obj, np.ufunc):
        obj = _Ufunc(obj)
    elif callable(obj) and not isinstance(obj, type):
        obj = _device_function(obj, name)
    elif isinstance(obj, types.ModuleType):
        raise AttributeError(f"fake cupy does not simulate the submodule cupy.{name}")
    globals()[name] = obj   # cache: later lookups skip __getattr__
    return obj


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
