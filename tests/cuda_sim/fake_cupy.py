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

Strictness.  The explicit API below (``RawModule``, kernels, ``cuda.Device``, memory pool,
``random.RandomState``) takes exactly the arguments real CuPy 13/14 takes, with the types its
Cython signatures demand (``options`` must be a tuple, grid/block tuples, ``get_function``
only for a compiled name expression).  Every use of the module is logged in ``API_LOG``
(``"cupy.cuda.Device"`` -> call shapes) and every public ndarray attribute in ``NDARRAY_ATTRS``
so ``tests/test_cupy_conformance.py`` can check each name and call against the installed CuPy.

Tracing (what would launch, transfer or synchronise on a GPU).  While a :class:`Trace` is
active (``with fake_cupy.trace() as t:``) the fake appends one event per operation that a
real GPU would see, to ``t.events`` as ``(kind, name, nbytes)``:

- ``launch``: every ``RawKernel`` call (our kernels), every ufunc call and ufunc method
  (``add``, ``add.reduce`` behind ``x.sum()``, ``matmul`` = one cuBLAS call, operators such as
  ``a * b``), every other array function except the metadata-only ones in ``_NO_LAUNCH``
  (``empty``, ``reshape``, ``broadcast_to``...), ``zeros``/``*_like`` fills, copies
  (``copy``, ``astype``, ``fill``, ``x[...] = y``, a copying ``ascontiguousarray``),
  advanced indexing, and each random draw (one cuRAND generate).  One event per CuPy call:
  CuPy fuses e.g. ``mean`` into one reduction kernel, which the fake counts as its NumPy
  decomposition (``add.reduce`` + ``true_divide``), so counts are an upper bound of CuPy's.
- ``alloc``: every new device buffer (``empty``, results of launches) with its size.
- ``h2d`` / ``d2h``: host->device (``asarray`` of host data) and device->host copies
  (``asnumpy``, ``.get()``, ``.item()``, ``float(x)``, ``int(x)``, ``bool(x)``).
- ``sync``: a host wait for the device: ``Device.synchronize``/``Stream.synchronize`` and
  every device->host copy (CuPy's D2H copies into pageable memory wait for the stream).
- ``rng_create``: a cuRAND generator created (``random.RandomState``).

Devices.  ``DEVICE_COUNT`` devices (default 1); the current device is per thread, as in CUDA
(``Device(i).use()`` and ``with Device(i):``).  Arrays remember the device current when they
were allocated, modules the device they were compiled on; a kernel launched with an array or
module of another device raises (on a GPU: an illegal address or invalid handle).
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np

import simbuild

BUILD_DIR = Path(tempfile.gettempdir()) / "nnx_fake_cupy_build"
NUMPY_CALLS: list[tuple[str, str]] = []   # (numpy function, "file:line") on device arrays
API_LOG: dict[str, set] = {}   # "cupy.x.y" -> {(positional arg types, ((kw, type), ...))}
NDARRAY_ATTRS: set[str] = set()  # public attributes read on device arrays
DEVICE_COUNT = 1
_THREAD = threading.local()      # .device: this thread's current device id


def _log(path, args=None, kwargs=None):
    """Record a use of ``path``; for calls, the types of the arguments."""
    shapes = API_LOG.setdefault(path, set())
    if args is not None:
        shapes.add((tuple(type(a).__name__ for a in args),
                    tuple(sorted((k, type(v).__name__) for k, v in (kwargs or {}).items()))))


class Trace:
    """Events recorded while active (see the module docstring)."""

    def __init__(self):
        self.events: list[tuple[str, str, int]] = []

    def counts(self) -> dict:
        out = {k: 0 for k in ("launch", "alloc", "h2d", "d2h", "sync", "rng_create")}
        for kind, _, _ in self.events:
            out[kind] = out.get(kind, 0) + 1
        return out

    def names(self, kind="launch") -> dict:
        """``{name: count}`` of one kind of event, most frequent first."""
        tally: dict[str, int] = {}
        for k, name, _ in self.events:
            if k == kind:
                tally[name] = tally.get(name, 0) + 1
        return dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))

    def sequence(self, kinds=("launch", "alloc")) -> list:
        """The ordered events of ``kinds``: equal for two steps that a CUDA graph can replay."""
        return [e for e in self.events if e[0] in kinds]


_TRACES: list[Trace] = []


class trace:
    """``with fake_cupy.trace() as t:`` records the events of the block into ``t``."""

    def __enter__(self) -> Trace:
        self._t = Trace()
        _TRACES.append(self._t)
        return self._t

    def __exit__(self, *exc):
        _TRACES.remove(self._t)


def _event(kind, name, nbytes=0):
    stream = getattr(_THREAD, "capturing", None)
    if stream is not None:
        if kind == "alloc" and not isinstance(_ALLOCATOR[0], _AsyncMalloc):
            stream._capture_failed = True
            raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: cudaMalloc ({name}) at "
                               f"{_caller()} while capturing: use cupy.cuda.MemoryAsyncPool")
        stream._captured.append((kind, name, int(nbytes)))
    for t in _TRACES:
        t.events.append((kind, name, int(nbytes)))


def _not_in_capture(what):
    """CUDA refuses host-synchronous work on a capturing stream
    (cudaErrorStreamCaptureUnsupported, and the capture is invalidated)."""
    stream = getattr(_THREAD, "capturing", None)
    if stream is not None:
        stream._capture_failed = True
        raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} at {_caller()} while "
                           f"a stream is capturing a CUDA graph")


def _d2h(name, nbytes):
    _not_in_capture(f"device->host copy ({name})")
    if _TRACES:
        name = f"{name}@{_caller()}"
        _event("d2h", name, nbytes)
        _event("sync", name)


def _caller() -> str:
    """``file:line`` of the first frame outside this module and NumPy (who asked)."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename == __file__
                             or "/numpy/" in f.f_code.co_filename):
        f = f.f_back
    if f is None:
        return "?"
    parts = Path(f.f_code.co_filename).parts
    return f"{'/'.join(parts[-2:])}:{f.f_lineno}"


def _alloc_of(result, name):
    """Record an allocation for each array ``result`` that owns fresh memory."""
    if not _TRACES:
        return
    for r in (result if isinstance(result, (tuple, list)) else (result,)):
        if isinstance(r, np.ndarray) and r.flags.owndata and r.nbytes:
            _event("alloc", name, r.nbytes)


def _current_device() -> int:
    return getattr(_THREAD, "device", 0)

_TRANSFER = {"array", "asarray", "asanyarray"}


class ndarray(np.ndarray):
    """Marks "device" arrays; ``_device_id`` is the device current at allocation."""

    def __array_finalize__(self, obj):
        self._device_id = getattr(obj, "_device_id", None)
        if self._device_id is None:
            self._device_id = _current_device()

    def __getattribute__(self, name):
        if name[0] != "_":
            NDARRAY_ATTRS.add(name)
        return super().__getattribute__(name)

    @property
    def device(self):
        return _Device(self._device_id)

    @property
    def data(self):
        """CuPy's ``MemoryPointer``; ``.ptr`` is the address kernels dereference (here the
        host address of the simulated device memory)."""
        return _MemoryPointer(np.ndarray.view(self, np.ndarray).ctypes.data)

    def get(self, stream=None, order="C", out=None):
        """Host copy (CuPy's ``ndarray.get``)."""
        return asnumpy(self)

    def __getitem__(self, key):
        r = super().__getitem__(key)
        if _advanced(key):
            _event("launch", "take")     # a gather kernel (basic slicing is a view)
            _event("alloc", "take", np.asarray(r).nbytes)
        return _dev(r) if isinstance(r, np.generic) else r   # CuPy gives 0-d arrays

    def __setitem__(self, key, value):
        _event("launch", "setitem")      # a copy or fill kernel
        super().__setitem__(key, value)

    def copy(self, order="C"):
        _event("launch", "copy")
        _event("alloc", "copy", self.nbytes)
        return super().copy(order)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if copy or np.dtype(dtype) != self.dtype:
            _event("launch", "astype")
            _event("alloc", "astype", self.size * np.dtype(dtype).itemsize)
        return super().astype(dtype, order=order, copy=copy)

    def argmax(self, *args, **kwargs):   # not a ufunc: NumPy calls no __array_ufunc__
        _event("launch", "argmax")
        return _dev_result(super().argmax(*args, **kwargs), "argmax")

    def argmin(self, *args, **kwargs):
        _event("launch", "argmin")
        return _dev_result(super().argmin(*args, **kwargs), "argmin")

    def fill(self, value):
        _event("launch", "fill")
        super().fill(value)

    # host reads of device data: each a device->host copy (and a wait), see _host_read

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _reject_host(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__,
                     inputs)
        if out is not None:
            _reject_host(ufunc.__name__ + " out=", out)
            kwargs["out"] = tuple(_host_view(o) for o in out)
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        _event("launch", name)
        result = getattr(ufunc, method)(*(_host_view(a) for a in inputs), **kwargs)
        if out is None:
            _alloc_of(result, name)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        caller = sys._getframe(1)
        NUMPY_CALLS.append((func.__name__, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
        _reject_host(func.__name__, (args, kwargs))
        if func.__name__ not in _NO_LAUNCH:
            _event("launch", func.__name__)
        result = func(*_unwrap(args), **_unwrap(kwargs))
        if func.__name__ not in _NO_LAUNCH:
            _alloc_of(result, func.__name__)
        return _wrap(result)


def _host_read(method, label):
    """``ndarray.<method>`` of NumPy, recorded as a device->host copy of the array."""
    base = getattr(np.ndarray, method)

    def read(self, *args):
        _d2h(label, self.nbytes)
        return base(self, *args)
    read.__name__ = method
    return read


for _method, _label in (("item", "item"), ("tolist", "tolist"), ("__float__", "float"),
                        ("__int__", "int"), ("__index__", "index"), ("__bool__", "bool")):
    setattr(ndarray, _method, _host_read(_method, _label))

ndarray.__module__ = "cupy._core.core"   # nnx detects CuPy arrays by module name


# array functions that only make views or read metadata: no kernel on a GPU
_NO_LAUNCH = {"empty", "reshape", "broadcast_to", "broadcast_arrays", "transpose",
              "swapaxes", "moveaxis", "expand_dims", "squeeze", "shape", "ndim", "size",
              "result_type", "can_cast", "atleast_1d", "atleast_2d", "atleast_3d",
              "may_share_memory", "shares_memory", "iscomplexobj", "isrealobj", "ravel"}


def _dev_result(r, name):
    _alloc_of(r, name)
    return _dev(r) if isinstance(r, np.generic) else r


def _advanced(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


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
        a.view(np.ndarray).fill(np.nan)
    elif a.dtype.kind in "iu":
        a.view(np.ndarray).fill(-7)
    return a


int32, int64, float32, float64 = np.int32, np.int64, np.float32, np.float64


def _given(**kwargs):
    """The keywords a caller passed with a non-default value (for the call log)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def asarray(x, dtype=None, order=None):
    _log("cupy.asarray", (x,), _given(dtype=dtype, order=order))
    if isinstance(x, ndarray) and (dtype is None or np.dtype(dtype) == x.dtype):
        return x  # CuPy's asarray does not copy a device array
    if not isinstance(x, ndarray):
        _not_in_capture("host->device copy from pageable memory (asarray)")
    out = _dev(np.array(x, dtype=dtype, copy=True))  # a "transfer" never aliases host memory
    if isinstance(x, ndarray):
        _event("launch", "asarray")   # a dtype conversion on the device
    else:
        _event("h2d", "asarray", out.nbytes)
    _event("alloc", "asarray", out.nbytes)
    return out


def ascontiguousarray(a, dtype=None):
    _log("cupy.ascontiguousarray", (a,), _given(dtype=dtype))
    _reject_host("ascontiguousarray", (a,))
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a  # CuPy returns the array itself
    out = _on_device_of(_dev(np.ascontiguousarray(a, dtype=dtype)), a)
    _event("launch", "ascontiguousarray")
    _event("alloc", "ascontiguousarray", out.nbytes)
    return out


def empty(shape, dtype=float, order="C"):
    _log("cupy.empty", (shape,), _given(dtype=dtype))
    out = _poison(_dev(np.empty(shape, dtype, order=order)))
    _event("alloc", "empty", out.nbytes)
    return out


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    _log("cupy.empty_like", (a,), _given(dtype=dtype, shape=shape))
    out = _poison(_dev(np.empty(np.shape(a) if shape is None else shape, dtype or a.dtype)))
    _event("alloc", "empty_like", out.nbytes)
    return out


def broadcast_to(a, shape):
    _log("cupy.broadcast_to", (a, shape), {})
    _reject_host("broadcast_to", (a,))
    return _on_device_of(_dev(np.broadcast_to(a, shape)), a)


def asnumpy(a, stream=None, order="C", out=None):
    _log("cupy.asnumpy", (a,), _given(stream=stream, out=out))
    host = np.array(a).view(np.ndarray)
    if isinstance(a, ndarray):
        _d2h("asnumpy", host.nbytes)
    return host


class _MemoryPointer:
    """cupy.cuda.MemoryPointer: only ``ptr``."""

    def __init__(self, ptr):
        self.ptr = int(ptr)


class _Ufunc:
    """A NumPy ufunc seen through cupy: host arrays rejected, device results."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        _log(f"cupy.{self.__name__}", args, kwargs)
        _reject_host(self.__name__, (args, kwargs))
        return _call_device(self._uf, args, kwargs, self.__name__)

    def __getattr__(self, method):   # reduce, accumulate, at, outer
        fn = getattr(self._uf, method)
        name = f"{self.__name__}.{method}"

        def call(*args, **kwargs):
            _log(f"cupy.{name}", args, kwargs)
            _reject_host(name, (args, kwargs))
            return _call_device(fn, args, kwargs, name)
        return call


def _call_device(fn, args, kwargs, name=None):
    out = kwargs.get("out")
    launches = name is not None and name not in _NO_LAUNCH
    if launches:
        _event("launch", name)
    result = fn(*_unwrap(args), **_unwrap(kwargs))
    if out is not None:
        return out
    if launches:
        _alloc_of(result, name)
    return _on_device_of(_wrap(result), _first_device_array((args, kwargs)))


def _first_device_array(obj, depth=0):
    if isinstance(obj, ndarray):
        return obj
    if depth < 3 and isinstance(obj, (list, tuple, dict)):
        for o in (obj.values() if isinstance(obj, dict) else obj):
            found = _first_device_array(o, depth + 1)
            if found is not None:
                return found
    return None


def _on_device_of(result, source):
    """Results of an operation live where its (first) device input lives."""
    if source is not None:
        for r in (result if isinstance(result, (tuple, list)) else (result,)):
            if isinstance(r, ndarray):
                r._device_id = source._device_id
    return result


def _device_function(fn, name):
    transfer = name in _TRANSFER or name.endswith("_like")

    def call(*args, **kwargs):
        _log(f"cupy.{name}", args, kwargs)
        if not transfer:
            _reject_host(name, (args, kwargs))
        elif _find_host((args, kwargs)) is not None:
            _event("h2d", name)
        return _call_device(fn, args, kwargs, name)
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
    """cupy.cuda.MemoryPool's byte counters (nothing is pooled here)."""

    def used_bytes(self):
        _log("cupy.cuda.MemoryPool.used_bytes", (), {})
        return 0

    def total_bytes(self):
        _log("cupy.cuda.MemoryPool.total_bytes", (), {})
        return 0

    def free_all_blocks(self, stream=None):
        _log("cupy.cuda.MemoryPool.free_all_blocks", (), {"stream": stream})


_POOL = _Pool()


def get_default_memory_pool():
    _log("cupy.get_default_memory_pool", (), {})
    return _POOL


# curandRngType_t values of curand.h (pseudo-random generators)
_CURAND_METHODS = {100, 101, 121, 141, 142, 161}


class _RandomState:
    """cupy.random.RandomState(seed=None, method=...) with the two draws nnx uses."""

    def __init__(self, seed=None, method=None):
        _log("cupy.random.RandomState", (seed,), {} if method is None else {"method": method})
        if method not in (None, *_CURAND_METHODS):
            raise ValueError(f"RandomState: method {method!r} is no curandRngType_t")
        _event("rng_create", "RandomState")
        self.method = method
        self._g = np.random.default_rng(seed)

    def seed(self, seed=None):
        """Re-seed the same generator (host-side in CuPy: no allocation, no sync)."""
        _log("cupy.random.RandomState.seed", (seed,), {})
        self._g = np.random.default_rng(seed)

    def random_sample(self, size=None, dtype=float):
        _log("cupy.random.RandomState.random_sample", (), {"size": size, "dtype": dtype})
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"random_sample: dtype must be float32 or float64, got {dtype}")
        out = _dev(self._g.random(size, dtype=np.dtype(dtype)))
        _event("launch", "curand.random_sample")
        _event("alloc", "random_sample", out.nbytes)
        return out

    def randint(self, low, high=None, size=None, dtype="l"):
        _log("cupy.random.RandomState.randint", (low, high),
             {"size": size, "dtype": dtype})
        out = _dev(self._g.integers(low, high, size=size, dtype=np.dtype(dtype)))
        _event("launch", "curand.randint")
        _event("alloc", "randint", out.nbytes)
        return out


class _Namespace:
    """A CuPy submodule whose attribute reads are logged as ``path.name``."""

    def __init__(self, path, **attrs):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_attrs", attrs)

    def __getattr__(self, name):
        try:
            value = self._attrs[name]
        except KeyError:
            raise AttributeError(f"fake {self._path} has no attribute {name!r}") from None
        _log(f"{self._path}.{name}")
        return value


class _Device:
    """cupy.cuda.Device(device=None): None means the calling thread's current device."""

    def __init__(self, device=None):
        _log("cupy.cuda.Device", (device,), {})
        self.id = _current_device() if device is None else int(device)
        if not 0 <= self.id < DEVICE_COUNT:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")
        self.attributes = {"MultiProcessorCount": 2}  # small grid cap: exercises grid-striding
        self.compute_capability = "90"
        self._saved = []

    def use(self):
        _log("cupy.cuda.Device.use", (), {})
        _THREAD.device = self.id

    def __enter__(self):
        _log("cupy.cuda.Device.__enter__", (), {})
        self._saved.append(_current_device())
        _THREAD.device = self.id
        return self

    def __exit__(self, *exc):
        _THREAD.device = self._saved.pop()

    def synchronize(self):
        _log("cupy.cuda.Device.synchronize", (), {})
        _not_in_capture("Device.synchronize")
        if _TRACES:
            _event("sync", f"Device.synchronize@{_caller()}")


class _Graph:
    """cupy.cuda.graph.Graph from end_capture: the captured events are kept (``events``),
    but NumPy already ran them eagerly, so the fake cannot replay a graph."""

    def __init__(self, events):
        self.events = events

    def launch(self, stream=None):
        _log("cupy.cuda.graph.Graph.launch", (), {} if stream is None else {"stream": stream})
        raise NotImplementedError("fake cupy cannot replay a CUDA graph (its operations ran "
                                  "eagerly in NumPy during capture)")


class _Stream:
    """cupy.cuda.Stream(null=False, non_blocking=False, ptds=False, priority=None) with
    graph capture.  Work in the fake is synchronous, so a stream only tracks capture."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        _log("cupy.cuda.Stream", (), _given(null=null or None, non_blocking=non_blocking or None,
                                            ptds=ptds or None, priority=priority))
        self._captured, self._capture_failed, self._saved = None, False, []

    def __enter__(self):
        _log("cupy.cuda.Stream.__enter__", (), {})
        self._saved.append(getattr(_THREAD, "stream", None))
        _THREAD.stream = self
        return self

    def __exit__(self, *exc):
        _THREAD.stream = self._saved.pop()

    def begin_capture(self, mode=None):
        _log("cupy.cuda.Stream.begin_capture", (), {} if mode is None else {"mode": mode})
        if getattr(_THREAD, "stream", None) is not self:
            raise RuntimeError("begin_capture: make the stream current first (with stream:)")
        self._captured, self._capture_failed = [], False
        _THREAD.capturing = self

    def is_capturing(self):
        _log("cupy.cuda.Stream.is_capturing", (), {})
        return getattr(_THREAD, "capturing", None) is self

    def end_capture(self):
        _log("cupy.cuda.Stream.end_capture", (), {})
        if getattr(_THREAD, "capturing", None) is not self:
            raise RuntimeError("end_capture: the stream is not capturing")
        _THREAD.capturing = None
        if self._capture_failed:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated: an operation during "
                               "capture was not capturable")
        return _Graph(self._captured)

    def synchronize(self):
        _log("cupy.cuda.Stream.synchronize", (), {})
        _not_in_capture("Stream.synchronize")
        if _TRACES:
            _event("sync", f"Stream.synchronize@{_caller()}")


class _DefaultMalloc:
    """The default pool's ``malloc`` (cudaMalloc behind a cache: not capturable)."""


class _AsyncMalloc:
    """cupy.cuda.MemoryAsyncPool().malloc: stream-ordered, capturable allocations."""


class _AsyncPool:
    def __init__(self, pool_handles="current"):
        _log("cupy.cuda.MemoryAsyncPool", (), {} if pool_handles == "current" else
             {"pool_handles": pool_handles})
        self.malloc = _AsyncMalloc()


_ALLOCATOR = [_DefaultMalloc()]


def _set_allocator(allocator=None):
    _log("cupy.cuda.set_allocator", (allocator,), {})
    _ALLOCATOR[0] = _DefaultMalloc() if allocator is None else allocator


def _get_allocator():
    _log("cupy.cuda.get_allocator", (), {})
    return _ALLOCATOR[0]


def _get_device_count():
    _log("cupy.cuda.runtime.getDeviceCount", (), {})
    return DEVICE_COUNT


def _mem_get_info():
    _log("cupy.cuda.runtime.memGetInfo", (), {})
    return (1 << 30, 2 << 30)


def _get_device_properties(device):
    _log("cupy.cuda.runtime.getDeviceProperties", (device,), {})
    return {"name": b"simulated GPU (tests/cuda_sim/fake_cupy.py)", "major": 9, "minor": 0,
            "multiProcessorCount": 2, "totalGlobalMem": 2 << 30}


def _version(what):
    def get():
        _log(f"cupy.cuda.runtime.{what}", (), {})
        return 0  # "no real CUDA": reports show 0
    return get


__version__ = "fake (tests/cuda_sim)"


random = _Namespace("cupy.random", RandomState=_RandomState)
cuda = _Namespace(
    "cupy.cuda", Device=_Device, MemoryPool=_Pool, Stream=_Stream, MemoryAsyncPool=_AsyncPool,
    set_allocator=_set_allocator, get_allocator=_get_allocator,
    graph=_Namespace("cupy.cuda.graph", Graph=_Graph),
    runtime=_Namespace("cupy.cuda.runtime", getDeviceCount=_get_device_count,
                       memGetInfo=_mem_get_info, getDeviceProperties=_get_device_properties,
                       runtimeGetVersion=_version("runtimeGetVersion"),
                       driverGetVersion=_version("driverGetVersion")))

_SCALARS = {"long long": np.int64, "int": np.int32, "unsigned": np.uint32, "float": np.float32,
            "double": np.float64}
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64}


def _base_type(ctype):
    words = ctype.replace("*", " ").split()
    return " ".join(t for t in words if t not in ("const", "__restrict__"))


def _check_dims(what, dims):
    if type(dims) is not tuple or not 1 <= len(dims) <= 3 or \
            not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        raise TypeError(f"{what} must be a tuple of 1-3 positive ints (CuPy's 'tuple "
                        f"{what}'), got {dims!r}")


class _Kernel:
    """cupy.RawKernel as returned by RawModule.get_function."""

    def __init__(self, name, sim_kernel, device):
        self.name, self._k, self._device = name, sim_kernel, device
        self.calls = 0

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        _log("cupy.RawKernel.__call__", (grid, block, args),
             {"shared_mem": shared_mem} if shared_mem else {})
        _check_dims("grid", grid)
        _check_dims("block", block)
        if type(args) is not tuple:
            raise TypeError(f"{self.name}: kernel args must be a tuple, got {type(args).__name__}")
        if int(np.prod(block)) > 1024:
            raise ValueError(f"{self.name}: {int(np.prod(block))} threads per block (max 1024)")
        here = _current_device()
        if self._device != here:
            raise RuntimeError(f"{self.name}: module compiled on device {self._device} launched "
                               f"while device {here} is current (cudaErrorInvalidResourceHandle)")
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
                if a._device_id != here:
                    raise RuntimeError(f"{self.name}({pname}): array on device {a._device_id} "
                                       f"passed to a launch on device {here} (illegal address)")
                conv.append(a.view(np.ndarray))
            else:
                if type(a) is not _SCALARS[base]:
                    raise TypeError(f"{self.name}({pname}): C type {base} needs "
                                    f"numpy.{_SCALARS[base].__name__}, got {type(a).__name__}")
                conv.append(a.item())
        (g, *_), (b, *_) = grid, block
        self.calls += 1
        _event("launch", self.name)
        self._k(g, b, *conv)


class RawModule:
    """cupy.RawModule(code=None, *, path=None, options=(), backend='nvrtc',
    translate_cucomplex=False, enable_cooperative_groups=False, name_expressions=None,
    jitify=False): the exact keywords and Cython types of CuPy 13/14's."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=False):
        _log("cupy.RawModule", (code,) if code is not None else (),
             {k: v for k, v in dict(path=path, options=options, backend=backend,
                                    name_expressions=name_expressions).items()
              if v is not None and not (k == "backend" and v == "nvrtc")})
        if not isinstance(code, str):
            raise TypeError(f"fake RawModule needs code= as str, got {type(code).__name__}")
        if path is not None:
            raise TypeError("fake RawModule supports code= only")
        if type(options) is not tuple or not all(isinstance(o, str) for o in options):
            raise TypeError(f"RawModule options must be a tuple of str (Cython 'tuple "
                            f"options'), got {options!r}")
        if backend not in ("nvrtc", "nvcc"):
            raise ValueError(f"backend must be 'nvrtc' or 'nvcc', got {backend!r}")
        if name_expressions is not None and (
                isinstance(name_expressions, str)
                or not all(isinstance(n, str) for n in name_expressions)):
            raise TypeError("name_expressions must be a sequence of str")
        self.code, self.options = code, options
        self.name_expressions = None if name_expressions is None else list(name_expressions)
        self._kernels = None
        self._device = None
        self._tag = "mod-" + hashlib.sha256(code.encode()).hexdigest()[:12]

    def compile(self, log_stream=None):
        _log("cupy.RawModule.compile", (), {} if log_stream is None else
             {"log_stream": log_stream})
        if self._kernels is None:
            BUILD_DIR.mkdir(parents=True, exist_ok=True)
            src = BUILD_DIR / f"{self._tag}.cu"
            if not src.exists():
                src.write_text(self.code)
            self._kernels = simbuild.build(src, BUILD_DIR)
            self._device = _current_device()

    def get_function(self, name):
        _log("cupy.RawModule.get_function", (name,), {})
        if not isinstance(name, str):
            raise TypeError(f"get_function(str name), got {type(name).__name__}")
        self.compile()
        # a template kernel is only reachable through a name expression given at construction
        if "<" in name and name not in (self.name_expressions or ()):
            raise RuntimeError(f"get_function({name!r}): not among the name_expressions "
                               f"{self.name_expressions} (CUDA_ERROR_NOT_FOUND)")
        if name not in self._kernels:
            raise RuntimeError(f"get_function({name!r}): no such kernel (CUDA_ERROR_NOT_FOUND)")
        return _Kernel(name, self._kernels[name], self._device)


class _LoggedModule(types.ModuleType):
    """Every ``cupy.<name>`` read from outside is logged (see API_LOG)."""

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in _CONTROL:
            _log(f"cupy.{name}")
        return super().__getattribute__(name)


# the fake's own knobs and logs, read by tests and not part of CuPy's API
_CONTROL = {"API_LOG", "NDARRAY_ATTRS", "NUMPY_CALLS", "BUILD_DIR", "DEVICE_COUNT", "trace",
            "Trace"}
sys.modules[__name__].__class__ = _LoggedModule
