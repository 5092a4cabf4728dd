"""Finite-difference gradient checking for explicit-backward modules.

For a module ``m`` with output ``y = m(*inputs)`` we draw a random upstream gradient ``R`` of
``y``'s shape and check ``J(θ, x) = Σ R ⊙ y`` against central differences::

    ∂J/∂u ≈ (J(u + ε) - J(u - ε)) / 2ε        for every element u of every input and parameter

while the analytic side is ``m.backward(R)`` (input gradients) and ``param.grad``.
Run it in float64: float32 rounding swamps the O(ε²) truncation error.
"""
from __future__ import annotations

import numpy as np

from . import backend as B


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree; the message names the worst element."""


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _flatten(o)]
    return [] if out is None else [out]


def _rebuild(struct, flat_iter):
    if isinstance(struct, (tuple, list)):
        return type(struct)(_rebuild(s, flat_iter) for s in struct)
    return None if struct is None else next(flat_iter)


def gradcheck(module_or_fn, inputs, *, eps=1e-6, atol=1e-6, rtol=1e-4, check_inputs=None,
              check_params=True, seed=0, before_forward=None):
    """Compare analytic and numerical gradients; return a dict of max errors, or raise
    :class:`GradcheckError` naming the worst element.

    ``module_or_fn``: a :class:`~nnx.nn.Module`, or a callable ``f(*inputs) -> (out, back)``
    where ``back(grad_out)`` returns the input gradients.
    ``inputs``: a tuple of arrays; by default every floating-point input is checked (set
    ``check_inputs`` to a list of indices to choose).  A module's ``backward`` must return the
    gradient of the first checked input, or a tuple with one entry per checked input (or
    per input, as a composite's backward returns).
    ``before_forward``: called before each forward (e.g. to reseed dropout).
    """
    from .nn.module import Module
    from .nn.tape import no_grad

    be = B.get()
    xp = be.xp
    inputs = tuple(be.asarray(x) if not be.is_native(x) else x for x in inputs)
    if check_inputs is None:
        check_inputs = [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]
    for i in check_inputs:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {inputs[i].dtype}")
    is_module = isinstance(module_or_fn, Module)
    params = list(module_or_fn.named_parameters()) if is_module and check_params else []
    for name, p in params:
        if p.data.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 parameters; {name} is {p.data.dtype} "
                            "(call module.double())")

    def run(xs):
        if before_forward is not None:
            before_forward()
        if is_module:
            return module_or_fn(*xs), module_or_fn.backward
        return module_or_fn(*xs)

    with no_grad():
        out, back = run(inputs)
    flat = _flatten(out)
    rng = np.random.default_rng(seed)
    R_flat = [be.asarray(rng.standard_normal(np.shape(o)).astype(np.float64)) for o in flat]
    R = _rebuild(out, iter(R_flat))

    def objective(xs):
        with no_grad():              # the numerical side needs no saved state
            o, _ = run(xs)
        return sum(float((r * a).sum()) for r, a in zip(R_flat, _flatten(o)))

    # analytic
    if is_module:
        module_or_fn.zero_grad()
    out, back = run(inputs)
    g = back(*R) if isinstance(out, (tuple, list)) else back(R)
    g = list(g) if isinstance(g, (tuple, list)) else [g]
    if len(g) == len(inputs) != len(check_inputs):   # one entry per argument (a composite)
        g = [g[i] for i in check_inputs]
    analytic = {}
    for k, i in enumerate(check_inputs):
        if k >= len(g) or g[k] is None:
            raise GradcheckError(f"backward returned no gradient for input {i}")
        analytic[f"input[{i}]"] = be.to_numpy(g[k]).astype(np.float64)
    for name, p in params:
        analytic[name] = (np.zeros(p.data.shape) if p.grad is None
                          else be.to_numpy(p.grad).astype(np.float64))

    # numerical
    targets = [(f"input[{i}]", inputs[i]) for i in check_inputs] + [(n, p.data) for n, p in params]
    errors = {}
    for name, arr in targets:
        host = be.to_numpy(arr).astype(np.float64)
        num = np.zeros(host.size)
        for j in range(host.size):
            idx = np.unravel_index(j, host.shape)
            orig = arr[idx].item() if hasattr(arr[idx], "item") else float(arr[idx])
            arr[idx] = orig + eps
            jp = objective(inputs)
            arr[idx] = orig - eps
            jm = objective(inputs)
            arr[idx] = orig
            num[j] = (jp - jm) / (2 * eps)
        num = num.reshape(host.shape)
        ana = analytic[name]
        if ana.shape != num.shape:
            raise GradcheckError(f"{name}: analytic gradient shape {ana.shape} != {num.shape}")
        err = np.abs(ana - num)
        tol = atol + rtol * np.abs(num)
        errors[name] = float(err.max()) if err.size else 0.0
        if err.size and (err > tol).any():
            worst = np.unravel_index(int(np.argmax(err - tol)), err.shape)
            raise GradcheckError(
                f"gradient mismatch for {name} at index {tuple(int(i) for i in worst)}: analytic "
                f"{ana[worst]:.8g}, numerical {num[worst]:.8g} (abs err {err[worst]:.3g}, "
                f"allowed {tol[worst]:.3g}; {int((err > tol).sum())} of {err.size} elements off)")
    return errors
