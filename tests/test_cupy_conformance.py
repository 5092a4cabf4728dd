"""The simulated CuPy (tests/cuda_sim/fake_cupy.py) asks nothing of CuPy that the real,
installed CuPy lacks or would reject.

``fake_cupy`` logs every ``cupy.*`` name nnx reads, every call with the types of its
arguments, and every public attribute read on device arrays.  This test runs a workload of
CupyBackend, kernel_loader and the trainer's use of ``xp`` on the fake (and, when it runs
after the sim-mode tests of test_backend_cuda.py / test_cpu_vs_gpu.py, inherits their log),
then checks each logged name against the installed ``cupy`` and binds each logged call to
the real signature -- ``inspect.signature`` for Python functions, the signature CuPy's
Cython modules embed in their docstrings otherwise -- including the Cython parameter types
that CuPy enforces (``tuple options``, ``str name``).  Needs CuPy installed (the ``test``
extra); no GPU.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import fake_cupy  # noqa: E402
import sim_backend  # noqa: E402

_TYPED = {"str": (str,), "tuple": (tuple,)}   # Cython-typed parameters CuPy enforces
_CYTHON_WORDS = re.compile(r"^(?:(?:unicode|str|tuple|bool|bint|int|size_t|intptr_t|object|"
                           r"list|dict|Py_ssize_t|double|float)\s+)+")


@pytest.fixture(scope="module")
def real_cupy():
    try:
        import cupy
        cupy.RawModule  # noqa: B018  (a broken install fails here)
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the CuPy conformance test: {exc}")
        pytest.skip(f"CuPy not installed ({exc}); pip install -e '.[test]'")
    if getattr(cupy, "__file__", "").endswith("fake_cupy.py"):
        pytest.fail("sys.modules['cupy'] is still the fake")
    return cupy


def _workload(tmp_path):
    """Every CupyBackend entry point, a model step and the trainer's finiteness check."""
    import nnx
    import nnx.backend as B
    import nnx.models  # noqa: F401
    from nnx import nn, train
    from nnx.optim import SGD, Adam
    rng = np.random.default_rng(5)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    with sim_backend.simulated_backend(tmp_path) as be, sim_backend.registered_as_cuda(be):
        be.manual_seed(1)
        be.random((3,)), be.randint(0, 5, (4,)), be.synchronize(), be.memory_info()
        x = be.asarray(f32(2, 3, 6, 6))
        be.tanh_backward(be.relu(x), x), be.relu_backward(x, x), be.bias_relu(x, x[0, :, 0, 0])
        z, lab = be.asarray(f32(4, 5)), be.asarray(rng.integers(0, 5, 4))
        be.softmax_cross_entropy_forward(z, lab, 0.1)
        be.softmax_cross_entropy_backward(z, lab, 0.1, be.asarray(np.float32(0.25)))
        cols = be.im2col(x, (3, 3), (1, 1), (1, 1), (1, 1))
        be.col2im(cols, x.shape, (3, 3), (1, 1), (1, 1), (1, 1))
        y, arg = be.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
        be.maxpool2d_backward(y, arg, x.shape, (2, 2), (2, 2), (0, 0))
        be.avgpool2d_backward(be.avgpool2d_forward(x, (2, 2), (2, 2), (0, 0)), x.shape,
                              (2, 2), (2, 2), (0, 0))
        h, c, s = be.lstm_cell_forward(be.asarray(f32(2, 8)), be.asarray(f32(2, 2)))
        be.lstm_cell_backward(h, None, s)
        h, s = be.gru_cell_forward(*(be.asarray(f32(2, 6)) for _ in range(2)), h)
        be.gru_cell_backward(h, s)
        B.use("cuda")  # a model step and the trainer's finiteness check, 'cuda' active
        nnx.manual_seed(0)
        model = nnx.models.get("simple_cnn", in_channels=1, num_classes=3, image_size=8)
        crit = nn.CrossEntropyLoss()
        for opt in (SGD(model.parameters(), lr=0.1, momentum=0.9), Adam(model.parameters())):
            crit(model(be.asarray(f32(2, 1, 8, 8))), be.asarray(rng.integers(0, 3, 2)))
            model.backward(crit.backward())
            opt.step()
        assert train._all_finite(model)  # the trainer's own use of xp
        from nnx.backend.cuda_graph import CapturedStep   # the graph-capture path's CuPy API
        allocator = fake_cupy.cuda.get_allocator()
        try:
            captured = CapturedStep(be, opt.step)
            with pytest.raises(NotImplementedError):
                captured()
        finally:
            fake_cupy.cuda.set_allocator(allocator)
        _newer_layers_and_losses(be, nn, f32, rng)


def _newer_layers_and_losses(be, nn, f32, rng):
    """The layers and losses written with plain array calls (no kernels of their own):
    their xp functions (``add.at``, ``moveaxis``, ``clip``, ...) must exist in CuPy."""
    idx = be.asarray(rng.integers(0, 6, (2, 5)))
    layers = [(nn.Embedding(6, 4, padding_idx=0), idx),
              (nn.LayerNorm(4), be.asarray(f32(2, 5, 4))),
              (nn.GELU(), be.asarray(f32(3, 4))), (nn.GELU("tanh"), be.asarray(f32(3, 4))),
              (nn.LogSoftmax(1), be.asarray(f32(3, 4))),
              (nn.Conv1d(2, 3, 3, padding=1), be.asarray(f32(2, 2, 7))),
              (nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1), be.asarray(f32(1, 2, 3, 3)))]
    for layer, x in layers:
        y = layer(x)
        layer.backward(be.asarray(np.ones(y.shape, np.float32)))
    z, lab = be.asarray(f32(4, 3, 2)), be.asarray(rng.integers(0, 3, (4, 2)))
    w = np.array([0.5, 1.0, 2.0], np.float32)
    p = be.asarray(rng.dirichlet(np.ones(3), 4).astype(np.float32))
    for crit, a, b in [(nn.CrossEntropyLoss(w, label_smoothing=0.1), z, lab),
                       (nn.NLLLoss(w, ignore_index=1), z, lab),
                       (nn.HuberLoss(delta=0.5), z, z[::-1]),
                       (nn.SmoothL1Loss(beta=0.5), z, z[::-1]),
                       (nn.KLDivLoss(reduction="batchmean"), be.xp.log(p), p)]:
        crit(a, b)
        crit.backward()


def _resolve(cupy, path):
    obj = cupy
    for part in path.split(".")[1:]:
        obj = getattr(obj, part)  # AttributeError names the missing part
    return obj


def _signature(obj):
    """inspect.signature, else the one CuPy's Cython embeds as the docstring's first line
    (Cython types stripped, returned separately as {param: type})."""
    try:
        return inspect.signature(obj), {}
    except (TypeError, ValueError):
        pass
    first = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
    m = re.match(r"^[\w.]+\((.*)\)(?:\s*->.*)?$", first)
    if not m:
        return None, {}
    params, types_ = [], {}
    for raw in [p.strip() for p in m.group(1).replace("\\*", "*").split(",") if p.strip()]:
        typ = _CYTHON_WORDS.match(raw)
        name = raw[typ.end():] if typ else raw
        if typ:
            types_[name.split("=")[0].strip()] = typ.group(0).split()[-1]
        params.append(name)
    namespace = {}
    exec(f"def f({', '.join(params)}): pass", namespace)  # noqa: S102  (CuPy's own text)
    return inspect.signature(namespace["f"]), types_


_PLACEHOLDER = object()


def _check_call(path, obj, shape):
    sig, types_ = _signature(obj)
    if sig is None:
        return None  # no signature to check against: existence was checked
    pos, kws = shape
    args = [_PLACEHOLDER] * len(pos)
    if next(iter(sig.parameters), None) == "self":
        args = [_PLACEHOLDER] + args
        pos = ("self",) + pos
    try:
        bound = sig.bind(*args, **{k: _PLACEHOLDER for k, _ in kws})
    except TypeError as exc:
        return f"{path}{shape}: {exc}"
    given = dict(zip(list(sig.parameters)[:len(pos)], pos)) | dict(kws)
    for name, ctype in types_.items():
        if name in bound.arguments and name in given and ctype in _TYPED:
            if given[name] not in {t.__name__ for t in _TYPED[ctype]} and given[name] != "NoneType":
                return f"{path}: parameter {name} is Cython '{ctype}', fake got {given[name]}"
    return None


def test_fake_api_exists_in_real_cupy(real_cupy, tmp_path):
    _workload(tmp_path)
    problems, checked = [], 0
    for path, shapes in sorted(fake_cupy.API_LOG.items()):
        try:
            obj = _resolve(real_cupy, path)
        except AttributeError as exc:
            problems.append(f"{path}: missing in cupy {real_cupy.__version__} ({exc})")
            continue
        for shape in shapes:
            checked += 1
            err = _check_call(path, obj, shape)
            if err:
                problems.append(err)
    missing_attrs = sorted(a for a in fake_cupy.NDARRAY_ATTRS if not hasattr(real_cupy.ndarray, a))
    problems += [f"cupy.ndarray.{a}: missing" for a in missing_attrs]
    # the workload must have reached the APIs this test exists for
    for must in ("cupy.RawModule", "cupy.RawModule.get_function", "cupy.RawKernel.__call__",
                 "cupy.cuda.Device", "cupy.cuda.Device.__enter__",
                 "cupy.random.RandomState.random_sample", "cupy.get_default_memory_pool",
                 "cupy.cuda.MemoryPool.used_bytes", "cupy.cuda.runtime.memGetInfo",
                 "cupy.isfinite", "cupy.cuda.Stream.begin_capture",
                 "cupy.cuda.Stream.end_capture", "cupy.cuda.MemoryAsyncPool",
                 "cupy.cuda.set_allocator", "cupy.random.RandomState.seed"):
        assert must in fake_cupy.API_LOG, f"workload never used {must}"
    assert {"flags", "dtype", "shape"} <= fake_cupy.NDARRAY_ATTRS
    assert checked > 30, checked
    assert not problems, "\n".join(problems)


def test_signature_check_catches_a_bad_call(real_cupy):
    """The checker itself: shapes real CuPy rejects are reported."""
    mod = real_cupy.RawModule
    assert _check_call("cupy.RawModule", mod, (("str",), (("options", "list"),)))
    assert _check_call("cupy.RawModule", mod, (("str",), (("optoins", "tuple"),)))
    assert _check_call("cupy.RawModule", mod, (("str", "tuple"), ()))  # options keyword-only
    assert _check_call("cupy.RawModule", mod, (("str",), (("options", "tuple"),
                                                          ("name_expressions", "list")))) is None
    assert _check_call("cupy.RawModule.get_function", mod.get_function, (("bytes",), ()))
    assert _check_call("cupy.cuda.Device", real_cupy.cuda.Device, (("int", "int"), ()))


def test_fake_rejects_what_cupy_rejects(tmp_path):
    """Strictness of the fake where CuPy's Cython types reject a call."""
    with sim_backend.simulated_cupy(tmp_path) as cp:
        code = "template <typename T>\n__global__ void k(long long n, T* x) {}\n"
        with pytest.raises(TypeError, match="tuple"):
            cp.RawModule(code=code, options=["--std=c++14"])
        with pytest.raises(TypeError):
            cp.RawModule(code, ("--std=c++14",))  # options is keyword-only
        mod = cp.RawModule(code=code, options=(), name_expressions=["k<float>"])
        with pytest.raises(RuntimeError, match="name_expressions"):
            mod.get_function("k<double>")
        k = mod.get_function("k<float>")
        x = cp.empty(3, dtype=np.float32)
        with pytest.raises(TypeError, match="grid"):
            k([1], (32,), (np.int64(3), x))
        with pytest.raises(TypeError, match="tuple"):
            k((1,), (32,), [np.int64(3), x])
        with pytest.raises(TypeError, match="long long"):
            k((1,), (32,), (3, x))
        k((1,), (32,), (np.int64(3), x))
