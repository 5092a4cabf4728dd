"""Layer-by-layer model summary: output shapes, parameter counts and receptive fields.

Receptive field recursion (per spatial axis), for a layer with kernel ``k``, stride ``s``,
padding ``p`` and dilation ``d`` applied to a feature map whose units have receptive field
size ``r``, jump ``j`` (distance in input pixels between neighbouring units) and ``start``
(input coordinate of the centre of the first unit; pixel centres are 0, 1, 2, ...)::

    r_out     = r_in + (k - 1)·d·j_in
    j_out     = j_in · s
    start_out = start_in + ((k - 1)·d/2 - p)·j_in

The input has ``r = 1, j = 1, start = 0``.  (The seeds write ``RF_{l+1} = RF_l + (k_l-1)·Π s_i``;
the product must run over the layers *before* the current one, i.e. ``j_in``, and a dilated
kernel spans ``(k-1)·d + 1`` pixels.)  Element-wise layers and Flatten keep the field; a global
pooling, or a fully connected layer after Flatten, sees the whole input (``global``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend as B
from .nn.tape import no_grad

_ELEMENTWISE = {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Arctan", "Identity", "Dropout",
                "BatchNorm1d", "BatchNorm2d", "Softmax"}


@dataclass
class ReceptiveField:
    """Per-axis ``(height, width)`` receptive field size, jump and start; ``None`` = global."""
    size: tuple
    jump: tuple
    start: tuple

    def step(self, k, s, p, d=(1, 1)):
        return ReceptiveField(
            tuple(r + (kk - 1) * dd * j for r, kk, dd, j in zip(self.size, k, d, self.jump)),
            tuple(j * ss for j, ss in zip(self.jump, s)),
            tuple(st + ((kk - 1) * dd / 2 - pp) * j
                  for st, kk, dd, pp, j in zip(self.start, k, d, p, self.jump)))

    def __str__(self):
        def one(t):
            if t[0] == t[1]:
                v = t[0]
                return f"{v:g}" if isinstance(v, float) else str(v)
            return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in t)
        return f"{one(self.size)} (jump {one(self.jump)}, start {one(self.start)})"


@dataclass
class Row:
    name: str
    layer: str
    output_shape: tuple
    params: int
    rf: ReceptiveField | None


class Summary:
    """Result of :func:`summary`: ``rows`` (name, layer type, output shape, parameter count,
    receptive field), ``total_params``, ``trainable_params``; ``str()`` gives a table."""

    def __init__(self, model, input_shape, rows, receptive_fields=True):
        self.model_name = type(model).__name__
        self.input_shape = tuple(input_shape)
        self.rows = rows
        self.receptive_fields = receptive_fields     # False: no column (not a conv chain)
        self.total_params = int(sum(p.size for p in model.parameters()))
        self.trainable_params = int(sum(p.size for p in model.parameters() if p.requires_grad))

    def __getitem__(self, name):
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r} in the summary; names: "
                       f"{[r.name for r in self.rows]}")

    def __str__(self):
        header = ("Layer (type)", "Output shape", "Param #", "Receptive field")
        body = [(f"{r.name} ({r.layer})", str(r.output_shape), f"{r.params:,}",
                 "global" if r.rf is None else str(r.rf)) for r in self.rows]
        if not self.receptive_fields:
            header, body = header[:3], [b[:3] for b in body]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(header)]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
        sep = "-" * len(line)
        out = [f"{self.model_name} on input {self.input_shape}", sep, line, sep]
        out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
        out += [sep, f"Total params: {self.total_params:,}",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.total_params - self.trainable_params:,}"]
        return "\n".join(out)

    __repr__ = __str__


def _is_sequential(m):
    from .nn.container import Sequential
    return isinstance(m, Sequential)


def _is_add(m):
    from .nn.residual import Add
    return isinstance(m, Add)


def _units(module, prefix=""):
    """Rows of the table: children of Sequentials recursively, any other module as a unit."""
    if _is_sequential(module) and len(module):
        for name, child in module.named_children():
            yield from _units(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


def _rf_through(module, rf, in_shape):
    """Receptive field after ``module`` given the field ``rf`` of its input (shape
    ``in_shape``).  Returns ``None`` (global) once every unit sees the whole input."""
    if rf is None:
        return None
    kind = type(module).__name__
    if _is_sequential(module):
        shape = in_shape
        for child in module:
            rf = _rf_through(child, rf, shape)
            shape = _shape_after(child, shape)
        return rf
    if kind in _ELEMENTWISE:
        return rf
    if kind == "Conv2d":
        return rf.step(module.kernel_size, module.stride, module.padding, module.dilation)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return rf.step(module.kernel_size, module.stride, module.padding)
    if kind == "AdaptiveAvgPool2d":
        h, w = in_shape[-2:]
        oh, ow = module.output_shape(in_shape)[-2:]
        if (oh, ow) == (1, 1):
            return None
        return rf.step((h // oh, w // ow), (h // oh, w // ow), (0, 0))
    if kind == "Flatten":
        return rf              # each feature is still one unit of the feature map
    if _is_add(module):             # Residual / parallel branches: the widest branch
        fields = [_rf_through(b, rf, in_shape) for b in module.children()]
        if any(f is None for f in fields):
            return None
        return max(fields, key=lambda f: f.size)
    return None   # Linear after Flatten, or an unknown layer: assume it mixes everything


def _shape_after(m, shape):
    """Analytic output shape of ``m`` (used inside residual bodies, whose intermediate
    outputs the forward pass does not expose)."""
    if _is_sequential(m):
        for child in m:
            shape = _shape_after(child, shape)
        return shape
    if _is_add(m):
        return _shape_after(next(m.children()), shape)
    if hasattr(m, "output_shape"):
        return tuple(m.output_shape(shape))
    if hasattr(m, "out_features"):
        return tuple(shape[:-1]) + (m.out_features,)
    return tuple(shape)


def _shape_of(out):
    """Shape of an output, or the nested tuple of shapes of a tuple output (an LSTM's
    ``(output, (h_n, c_n))``)."""
    if isinstance(out, (tuple, list)):
        return tuple(_shape_of(o) for o in out)
    return None if out is None else tuple(int(s) for s in out.shape)


def _example_input(model, input_shape, dtype):
    """The input to run: ``input_shape`` itself when it is an array, else a random normal
    array of that shape (a batch of 1 added to ``(F,)``, and to ``(C, H, W)`` for a model
    with 2-d layers)."""
    be = B.get()
    if hasattr(input_shape, "shape") and hasattr(input_shape, "dtype"):
        x = be.asarray(input_shape)
        return x, tuple(int(s) for s in x.shape)
    shape = tuple(int(s) for s in input_shape)
    images = any(type(m).__name__.endswith("2d") for m in model.modules())
    if len(shape) == 1 or (len(shape) == 3 and images):
        shape = (1,) + shape
    if dtype is None:
        p = next(model.parameters(), None)
        dtype = p.data.dtype if p is not None else np.float32
    return be.asarray(np.random.default_rng(0).standard_normal(shape).astype(dtype)), shape


def _sequential_rows(model, x, spatial):
    """One row per unit of a Sequential (see :func:`_units`), run unit by unit, with
    receptive fields for image inputs."""
    from .nn.container import raise_not_one_array
    rf = ReceptiveField((1, 1), (1, 1), (0.0, 0.0)) if spatial else None
    shape = tuple(x.shape)
    rows, prev = [], None
    for name, unit in _units(model):
        if isinstance(x, (tuple, list)) and prev is not None:
            try:
                y = unit(x)
            except (TypeError, ValueError, AttributeError) as e:
                raise_not_one_array(*prev, name, unit, x, e)
        else:
            y = unit(x)
        out_shape = _shape_of(y)
        rf = _rf_through(unit, rf, shape)
        rows.append(Row(name, type(unit).__name__, out_shape,
                        int(sum(p.size for p in unit.parameters())), rf))
        x, shape, prev = y, out_shape, (name, unit)
    return rows


def _leaves(module, prefix, seen):
    """Modules that get a row in a custom model's breakdown: layers with a hand-written
    backward and modules without children (not looked into), and composites that own
    parameters directly; each module once."""
    if id(module) in seen:
        return
    seen.add(id(module))
    name = prefix or type(module).__name__
    if module._hand_written or not module._modules:
        yield name, module, True
        return
    if next(module.parameters(recurse=False), None) is not None:
        yield name, module, False
    for child_name, child in module.named_children():
        yield from _leaves(child, f"{prefix}.{child_name}" if prefix else child_name, seen)


def _hooked_rows(model, x):
    """One row per call of each leaf (in call order) of a model's single forward pass,
    observed with forward hooks; a module called again shows its parameters once."""
    calls, handles = [], []
    try:
        for name, mod, whole in _leaves(model, "", set()):
            def hook(m, args, out, name=name, whole=whole):
                calls.append((name, m, whole, _shape_of(out)))
            handles.append(mod.register_forward_hook(hook))
        model(x)
    finally:
        for h in handles:
            h.remove()
    rows, counted = [], set()
    for name, mod, whole, shape in calls:
        params = 0 if id(mod) in counted else sum(p.size for p in mod.parameters(recurse=whole))
        counted.add(id(mod))
        rows.append(Row(name, type(mod).__name__, shape, int(params), None))
    return rows


def summary(model, input_shape, dtype=None):
    """Summarise ``model`` for inputs of ``input_shape``: an image shape ``(C, H, W)`` (batch
    1 added for a model with 2-d layers) or ``(N, C, H, W)``, any other full input shape
    (e.g. a batch-first LSTM's ``(N, T, F)``; ``(F,)`` gets a batch of 1), or an input
    array itself.  Runs one forward pass in eval mode under ``no_grad`` on a random normal
    input (no zeros, so ReLU masks are typical) and restores the training flags; BatchNorm
    running statistics are untouched.

    A ``Sequential`` is run unit by unit (nested Sequentials expanded), with receptive
    fields for image inputs; any other module is run whole and broken down by submodule,
    one row per call of each layer.  Returns a :class:`Summary`."""
    x, input_shape = _example_input(model, input_shape, dtype)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    sequential = _is_sequential(model) and len(model)
    spatial = len(input_shape) == 4
    try:
        with no_grad():
            if sequential:
                rows = _sequential_rows(model, x, spatial)
            else:
                rows = _hooked_rows(model, x)
    finally:
        for m, flag in modes:
            object.__setattr__(m, "training", flag)
    return Summary(model, input_shape, rows, receptive_fields=bool(sequential and spatial))
