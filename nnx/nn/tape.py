r"""Per-call saved state, gradient mode and the tape that composes backward passes.

nnx stays define-by-run in the spirit of Chainer and DeZero, but without a tensor class:
layers take and return plain arrays, and the recording happens per *call*.

**Per-call context.**  Each call ``y = m(x)`` gets a fresh :class:`Context`; while
``forward`` runs it is ``m.ctx``, and the layer saves what its backward needs into it
(``self.ctx.x = x``).  ``backward`` reads ``self.ctx`` of the call it belongs to, so one
module may be called any number of times in one forward pass.

**The tape.**  A module without a hand-written ``backward`` (a *composite*, e.g.
``Sequential`` or a user model whose ``forward`` calls layers and functional operations)
records a :class:`Tape` while its ``forward`` runs.  Every module call and every
differentiable function of :mod:`nnx.nn.functional` made meanwhile appends a node::

    node = (module or function, its call's context, input slots, output slots)

Values are tracked by *slot*, not by array: an array produced on the tape gets a new slot
(so an in-place layer or ``Identity`` returning its input starts a new value), an array
the tape has not seen becomes a leaf slot (the composite's inputs, or constants).  The
tape maps ``id(array) -> slot`` and checks identity through a weak reference, so it keeps
no array alive and a recycled ``id`` is never confused with a dead array.

Backward walks the nodes in reverse.  With ``g[s] = dL/d(value s)``::

    g[output slots] = upstream gradients
    for node in reversed(nodes):   g[inputs of node] += node.backward(g[outputs of node])
    return g[input slots]

A layer with a hand-written backward is one node; the calls its own ``forward`` makes are
top level for it (its backward calls theirs), and their records are also kept in its
call's context (``ctx._inner_calls``), which its backward puts back in place first: such a
layer, too, may be called several times in one graph.

Gradients reaching the same slot twice are summed (a new array each time; nothing is
summed in place, so a gradient handed to two consumers is never modified).  A node is
called only when its input gradient is needed (the value depends on the composite's
input or on a parameter); a node that only owns parameters gets ``backward_params``;
the rest are skipped.  Everything here is per node, never per element.

**Gradient mode.**  Under :class:`no_grad` nothing is kept: contexts are dropped when the
call returns and no tape is recorded.
"""
from __future__ import annotations

import functools
import threading
import weakref

import numpy as np

from .. import backend as B
from .parameter import Parameter


class _State(threading.local):
    grad_enabled = True
    tape = None          # the tape that calls made now are recorded on (None: top level)
    owner = None         # context of the hand-written layer whose forward runs now


_state = _State()


def is_grad_enabled() -> bool:
    """Whether calls made now keep what backward needs (False inside :class:`no_grad`)."""
    return _state.grad_enabled


class _GradMode:
    _enabled = True

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = self._enabled
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False

    def __call__(self, fn):
        """Use as a decorator: ``fn`` runs in this mode."""
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapped


class no_grad(_GradMode):
    """Context manager (or decorator) in which calls keep nothing for backward, as
    PyTorch's ``torch.no_grad``: each layer's saved state is dropped when its call
    returns, and a later ``backward`` raises.  Use it for evaluation and inference."""
    _enabled = False


class enable_grad(_GradMode):
    """Re-enables recording inside :class:`no_grad` (PyTorch's ``torch.enable_grad``)."""
    _enabled = True


inference_mode = no_grad   # PyTorch's name for the same guarantee


class Context:
    """What one call saves for its backward: a plain attribute bag (``ctx.x = x``)."""

    def __repr__(self):
        return f"Context({', '.join(sorted(vars(self)))})"


class _Node:
    __slots__ = ("fn", "ctx", "ins", "outs", "in_flat", "out_flat")

    def __init__(self, fn, ctx, ins, outs, in_flat, out_flat):
        self.fn, self.ctx, self.ins, self.outs = fn, ctx, ins, outs
        self.in_flat, self.out_flat = in_flat, out_flat   # the same slots, flattened


class Tape:
    """The nodes recorded while one composite's ``forward`` ran (see the module docstring).

    ``ins``/``outs`` are the slots of the composite's positional arguments and of its
    result, in the same nesting (tuples); non-array positions hold ``None``."""

    __slots__ = ("nodes", "n_slots", "_slot_of", "params", "ins", "outs")

    def __init__(self, args):
        self.nodes = []
        self.n_slots = 0
        self._slot_of = {}           # id(array) -> (slot, weakref to the array)
        self.params = []             # (slot, Parameter) passed to functional operations
        self.ins = self._slots(args, False, [])
        self.outs = None

    # ------------------------------------------------------------------ recording
    def _new_slot(self, a):
        s = self.n_slots
        self.n_slots = s + 1
        try:
            ref = weakref.ref(a)
        except TypeError:            # an array type without weak references: keep it
            ref = _Strong(a)
        self._slot_of[id(a)] = (s, ref)
        return s

    def _seen_slot(self, a):
        hit = self._slot_of.get(id(a))
        if hit is not None and hit[1]() is a:
            return hit[0]
        s = self._new_slot(a)
        if type(a) is Parameter:
            self.params.append((s, a))
        return s

    def _slots(self, struct, new, flat):
        """Slots of the values in ``struct`` (same nesting, ``None`` for constants),
        appended to ``flat`` too; ``new``: a result, which starts new values."""
        if type(struct) is _ndarray or (type(struct) not in _SEQUENCES and _is_value(struct)):
            s = self._new_slot(struct) if new else self._seen_slot(struct)
            flat.append(s)
            return s
        if type(struct) in _SEQUENCES:
            return tuple([self._slots(a, new, flat) for a in struct])
        return None

    def record(self, fn, ctx, args, out):
        """Append a node: ``fn`` (a Module, or a functional operation) was called on
        ``args`` and returned ``out``; ``ctx`` is that call's context."""
        if len(args) == 1 and type(args[0]) is _ndarray:    # the common case, quickly
            s = self._seen_slot(args[0])
            ins, in_flat = (s,), (s,)
        else:
            in_flat = []
            ins = self._slots(args, False, in_flat)
        if type(out) is _ndarray:
            outs = self._new_slot(out)
            out_flat = (outs,)
        else:
            out_flat = []
            outs = self._slots(out, True, out_flat)
        self.nodes.append(_Node(fn, ctx, ins, outs, in_flat, out_flat))

    def finish(self, out):
        """Note the composite's result (its slots receive the upstream gradients)."""
        self.outs = self._slots(out, False, [])

    # ------------------------------------------------------------------ backward
    def _needs_input_grad(self, input_grad):
        """For each node, whether the gradient of its inputs is needed: an input needs one
        if it depends on the composite's inputs (when ``input_grad``) or on a parameter."""
        need = bytearray(self.n_slots)
        if input_grad:
            for s in _flat(self.ins):
                need[s] = 1
        for s, _ in self.params:
            need[s] = 1
        result = []
        for node in self.nodes:
            in_need = False
            for s in node.in_flat:
                if need[s]:
                    in_need = True
                    break
            result.append(in_need)
            if in_need or _has_params(node.fn):
                for s in node.out_flat:
                    need[s] = 1
        return result

    def backward(self, grads, input_grad, retain_graph):
        """Gradients of the composite's inputs given ``grads``, the arguments of its
        ``backward``: one per output, mirroring its structure (``None``, or missing at
        the end: no gradient for that output)."""
        g = [None] * self.n_slots
        _accumulate(self.outs if type(self.outs) is tuple else (self.outs,), grads, g)
        needs = self._needs_input_grad(input_grad)
        nodes = self.nodes
        for i in range(len(nodes) - 1, -1, -1):
            node = nodes[i]
            if not retain_graph:
                nodes[i] = None          # free this call's saved state as we go
            outs = node.outs
            if type(outs) is int:        # one result (most layers)
                dy = g[outs]
                if dy is None:
                    continue
                g[outs] = None           # fully summed now; not needed any more
                dys = (dy,)
            elif outs is None:           # a result without arrays: nothing flows back
                continue
            else:
                dys = _gather(outs, g)
                for s in node.out_flat:
                    g[s] = None
                if _all_none(dys):
                    continue
            if needs[i]:
                _accumulate_args(node.ins, _run_backward(node, dys, retain_graph), g)
            elif _has_params(node.fn):
                _run_backward(node, dys, retain_graph, params_only=True)
        for s, p in self.params:
            if g[s] is not None:
                p.accumulate(g[s])
        if not retain_graph:
            self.nodes = []
        return args_result(self.ins, g) if input_grad else None


class _Strong:
    """Stand-in for a weak reference (arrays that do not support them)."""
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a

    def __call__(self):
        return self.a


def _run_backward(node, dys, retain_graph, params_only=False):
    """Call the node's backward with its own call's context in place; ``dys`` holds one
    gradient per result of the call."""
    fn = node.fn
    if type(fn) is type:                             # a functional operation
        return fn.backward(node.ctx, *dys)
    d = fn.__dict__
    prev = d["ctx"]
    d["ctx"] = node.ctx
    try:
        if params_only:
            return fn.backward_params(*dys, retain_graph=retain_graph)
        return fn.backward(*dys, retain_graph=retain_graph)
    finally:
        d["ctx"] = prev


_ndarray = np.ndarray
_SEQUENCES = (tuple, list)


def _is_value(a) -> bool:
    """Arrays (NumPy, CuPy) and Parameters carry gradients; anything else is a constant."""
    return isinstance(a, (np.ndarray, Parameter)) or type(a).__module__.startswith("cupy")


def _has_params(fn) -> bool:
    if type(fn) is type:                             # a functional operation
        return False
    return bool(fn._parameters) or next(fn.parameters(), None) is not None


def _flat(struct):
    if type(struct) is int:
        return (struct,)
    if struct is None:
        return ()
    return [s for sub in struct for s in _flat(sub)]


def _all_none(struct):
    return all(x is None or (type(x) is tuple and _all_none(x)) for x in struct)


def _gather(slots, g):
    if type(slots) is int:
        return g[slots]
    if slots is None:
        return None
    return tuple(_gather(s, g) for s in slots)


def _accumulate(slots, grads, g):
    """``g[slot] += grad`` for every slot of ``slots`` and the gradient at the same place
    in ``grads`` (same nesting; ``None`` adds nothing)."""
    if type(slots) is int:
        if grads is not None:
            prev = g[slots]
            g[slots] = grads if prev is None else _add(prev, grads)
    elif slots is not None and grads is not None:
        for s, gr in zip(slots, grads):
            _accumulate(s, gr, g)


def _add(a, b):
    """``a + b``: through the backend (the CPU's splits it over threads in C, and falls back
    to ``+`` itself for operands its C pass does not take) when both are the backend's
    arrays, else plain ``+`` (scalars, other array types)."""
    be = B.get()
    return be.add(a, b) if be.is_native(a) and be.is_native(b) else a + b


def _accumulate_args(arg_slots, grads, g):
    """Add a ``backward`` result to the gradients of the call's positional arguments.

    The convention of every nnx layer: with one argument, ``backward`` returns its
    gradient; with several, a tuple with one entry per argument, or the first argument's
    gradient alone (a layer's ``backward`` returns ``dx`` alone when its other arguments,
    e.g. an initial state or a loss target, were not given or carry no gradient)."""
    if len(arg_slots) == 1 or type(grads) not in (tuple, list):
        _accumulate(arg_slots[0], grads, g)
    else:
        _accumulate(arg_slots, grads, g)


def args_result(arg_slots, g):
    """The gradients of the positional arguments, by the same convention."""
    grads = _gather(arg_slots, g)
    return grads[0] if len(grads) == 1 else grads


def current_tape():
    """The tape that calls are recorded on now, or ``None`` (top level or no_grad)."""
    st = _state
    return st.tape if st.grad_enabled else None
