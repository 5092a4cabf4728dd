"""One check for any layer (the model: Chainer's ``chainer/testing/function_link.py``).

``check_layer(make, inputs)`` runs, for a layer built by ``make(dtype)`` on host ``inputs``:

1. **gradcheck**: the float64 finite-difference check of the input and parameter gradients
   on the active backend;
2. **called twice**: the same instance called on two inputs inside one composite (one
   graph): each call must get its own gradient and the parameters the sum (gradcheck of the
   composite), which is what per-call saved state guarantees;
3. **input not modified**: forward and backward leave the inputs as they were (skipped for
   ``inplace`` layers, whose forward overwrites its input on purpose);
4. **dtype preserved**: in float32, outputs, input gradients and parameter gradients are
   float32;
5. **non-contiguous inputs**: the same results (within the summation-reordering bound of
   ``tolerances.network_rtol``, in float64) for strided views of the inputs;
6. **CPU vs CUDA**: float32 forward and backward on the ``cpu`` backend and on ``cuda``
   (a real GPU where CuPy and one are present, else the CUDA backend over
   ``tests/cuda_sim/fake_cupy.py``, whose kernels run on the CPU) agree within the
   reordering bound plus a few ulps for the element-wise functions.

``make(dtype)`` must build a fresh layer; the harness seeds nnx before each build, so two
builds have the same weights.  ``inputs`` are host arrays: floating ones are cast to the
dtype under test, others (labels, lengths) are passed as they are.  Options:
``check_inputs`` (indices of the inputs that get a gradient; default: the floating ones),
``second`` (the inputs of the second call in check 2; default: fresh normal values),
``before_forward`` (e.g. reseeding dropout), ``gradcheck_kw`` (eps, atol, rtol),
``skip`` (names of checks not to run, each with a reason in the caller).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

import nnx
import nnx.backend as B
from nnx import nn
from nnx.gradcheck import _flatten, _rebuild  # the same output (un)flattening
from nnx.nn import functional as F
from tolerances import gamma, network_rtol

SEED = 11
CHECKS = ("gradcheck", "twice", "unmodified", "dtype", "noncontiguous", "cpu_vs_cuda")


def check_layer(make, inputs, *, check_inputs=None, before_forward=None, gradcheck_kw=None,
                inplace=False, second=None, skip=()):
    unknown = set(skip) - set(CHECKS)
    assert not unknown, f"unknown checks {unknown}"
    inputs = tuple(inputs)
    if check_inputs is None:
        check_inputs = [i for i, x in enumerate(inputs) if _is_float(x)]
    kw = dict(gradcheck_kw or {}, before_forward=before_forward)
    be = B.get()
    x64 = _cast(inputs, np.float64)
    if "gradcheck" not in skip:
        layer = _build(make, np.float64)
        if inplace:   # finite differences perturb the input, which the layer overwrites
            layer = _Twice(layer, len(inputs), calls=1, inplace=True)
        nnx.gradcheck(layer, _on(be, x64), check_inputs=check_inputs, **kw)
    if "twice" not in skip:
        _check_twice(make, inputs, second, check_inputs, kw, inplace)
    if "unmodified" not in skip and not inplace:
        _check_unmodified(make, x64, before_forward)
    if "dtype" not in skip:
        _check_dtype(make, inputs, check_inputs, before_forward)
    if "noncontiguous" not in skip:
        _check_noncontiguous(make, x64, check_inputs, before_forward)
    if "cpu_vs_cuda" not in skip and be.name == "cpu":  # (on a GPU run, once is enough)
        _check_cpu_vs_cuda(make, inputs, check_inputs, before_forward)


# ---------------------------------------------------------------------- helpers
def _is_float(x):
    return getattr(x, "dtype", None) is not None and np.dtype(x.dtype).kind == "f"


def _cast(inputs, dtype):
    return tuple(np.asarray(x, dtype) if _is_float(x) else x for x in inputs)


def _on(be, inputs):
    return tuple(be.asarray(x) if hasattr(x, "dtype") else x for x in inputs)


def _build(make, dtype):
    nnx.manual_seed(SEED)
    return make(dtype)


def _run(layer, inputs, check_inputs, before_forward, seed=5):
    """Forward and backward with a fixed random upstream gradient; returns host copies of
    the outputs, the checked inputs' gradients and the parameter gradients (in order)."""
    be = B.get()
    layer.zero_grad()
    if before_forward is not None:
        before_forward()
    out = layer(*inputs)
    rng = np.random.default_rng(seed)
    flat = _flatten(out)
    grads = [be.asarray(rng.standard_normal(np.shape(o)).astype(o.dtype)) for o in flat]
    struct = _rebuild(out, iter(grads))
    dx = layer.backward(*struct) if isinstance(out, (tuple, list)) else layer.backward(struct)
    dx = list(dx) if isinstance(dx, (tuple, list)) else [dx]
    if len(dx) == len(inputs) and len(inputs) != len(check_inputs):
        dx = [dx[i] for i in check_inputs]          # one entry per argument
    res = {f"out{k}": be.to_numpy(o) for k, o in enumerate(flat)}
    res.update({f"d input[{i}]": be.to_numpy(g) for i, g in zip(check_inputs, dx)})
    res.update({f"d {n}": be.to_numpy(p.grad) for n, p in layer.named_parameters()
                if p.grad is not None})
    return res


class _Twice(nn.Module):
    """One instance called on ``calls`` groups of ``n_args`` arguments in one forward (a
    composite: no hand-written backward).  ``inplace``: each floating argument is cloned
    first (a recorded copy), since the layer overwrites it."""

    def __init__(self, layer, n_args, calls=2, inplace=False):
        super().__init__()
        self.layer, self.n_args, self.calls, self.inplace = layer, n_args, calls, inplace

    def forward(self, *args):
        if self.inplace:
            args = [F.clone(a) if _is_float(a) else a for a in args]
        k = self.n_args
        outs = tuple(self.layer(*args[i * k:(i + 1) * k]) for i in range(self.calls))
        return outs if self.calls > 1 else outs[0]


def _check_twice(make, inputs, second, check_inputs, kw, inplace):
    if second is None:
        rng = np.random.default_rng(SEED)
        second = tuple(rng.standard_normal(np.shape(x)) if _is_float(x) else x for x in inputs)
    second = tuple(second)
    both = _on(B.get(), _cast(inputs + second, np.float64))
    n = len(inputs)
    checked = list(check_inputs) + [i + n for i in check_inputs]
    twice = _Twice(_build(make, np.float64), n, inplace=inplace)
    nnx.gradcheck(twice, both, check_inputs=checked, **kw)


def _check_unmodified(make, x64, before_forward):
    be = B.get()
    xs = _on(be, x64)
    copies = [be.to_numpy(x).copy() if hasattr(x, "dtype") else None for x in xs]
    _run(_build(make, np.float64), xs, [i for i, x in enumerate(xs) if _is_float(x)][:1],
         before_forward)
    for i, (x, c) in enumerate(zip(xs, copies)):
        if c is not None:
            np.testing.assert_array_equal(be.to_numpy(x), c,
                                          err_msg=f"input {i} was modified by the layer")


def _check_dtype(make, inputs, check_inputs, before_forward):
    be = B.get()
    layer = _build(make, np.float32)
    res = _run(layer, _on(be, _cast(inputs, np.float32)), check_inputs, before_forward)
    for name, a in res.items():
        assert a.dtype == np.float32, f"{name} is {a.dtype} for float32 input and parameters"


def _noncontiguous(x):
    """A strided view with the same values (every other element of a wider array)."""
    wide = np.zeros(np.shape(x)[:-1] + (2 * np.shape(x)[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or view.size <= 1
    return view


def _positions(inputs):
    """The largest number of positions per sample (for the reduction-length bound)."""
    return max([int(np.prod(np.shape(x)[2:])) if np.ndim(x) > 2 else 1 for x in inputs] + [1])


def _batch(inputs):
    return max([np.shape(x)[0] if np.ndim(x) else 1 for x in inputs] + [1])


def _compare(got, want, rtol, what):
    assert list(got) == list(want), what
    for k in want:
        g, w = got[k], want[k]
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what} {k}: {g.dtype}{g.shape} " \
                                                          f"vs {w.dtype}{w.shape}"
        scale = float(np.abs(w).max()) if w.size else 0.0
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * scale, err_msg=f"{what} {k}")


def _check_noncontiguous(make, x64, check_inputs, before_forward):
    be = B.get()
    layer = _build(make, np.float64)
    want = _run(layer, _on(be, x64), check_inputs, before_forward)
    strided = tuple(_noncontiguous(x) if _is_float(x) and np.ndim(x) else x for x in x64)
    got = _run(_build(make, np.float64), _on(be, strided), check_inputs, before_forward)
    # strided inputs may take another route (a copy, a strided GEMM): summation order only
    _compare(got, want, network_rtol(layer, _batch(x64), _positions(x64), np.float64),
             "non-contiguous")


def _check_cpu_vs_cuda(make, inputs, check_inputs, before_forward):
    x32 = _cast(inputs, np.float32)
    with _using("cpu"):
        layer = _build(make, np.float32)
        want = _run(layer, _on(B.get(), x32), check_inputs, before_forward)
    with cuda_backend():
        got = _run(_build(make, np.float32), _on(B.get(), x32), check_inputs, before_forward)
    # summation order (the kernels' reductions) plus a few ulps of the element-wise functions
    rtol = network_rtol(layer, _batch(inputs), _positions(inputs), np.float32) + \
        16 * gamma(1, np.float32)
    _compare(got, want, rtol, "cuda vs cpu")


@contextlib.contextmanager
def _using(name):
    previous = B.get().name
    B.use(name)
    try:
        yield B.get()
    finally:
        B.use(previous)


@contextlib.contextmanager
def cuda_backend():
    """The real ``cuda`` backend where CuPy and a GPU are present, else the CUDA backend over
    ``tests/cuda_sim/fake_cupy.py`` (installed as ``cupy`` only inside this block)."""
    try:
        B.create("cuda")
        real = True
    except Exception:  # no CuPy or no GPU: simulate
        real = False
    if real:
        with _using("cuda") as be:
            yield be
        return
    with simulated_cuda():
        with _using("cuda") as be:
            yield be


@contextlib.contextmanager
def simulated_cuda(build_dir=None):
    """The CUDA backend over ``fake_cupy`` registered as ``"cuda"`` inside this block (the
    previous ``cupy`` module, ``"cuda"`` instance and active backend are restored
    afterwards); skips the test without g++.  ``build_dir``: where the simulated kernels are
    compiled (default: the shared cache of ``fake_cupy``)."""
    sim_dir = str(Path(__file__).resolve().parent / "cuda_sim")
    if sim_dir not in sys.path:
        sys.path.insert(0, sim_dir)
    import sim_backend
    reason = sim_backend.available()
    if reason:
        import pytest
        pytest.skip(reason)
    with sim_backend.simulated_backend(build_dir) as be, sim_backend.registered_as_cuda(be):
        yield be
