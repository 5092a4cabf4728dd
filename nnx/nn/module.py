"""The base class of every layer: calls and their saved state, backward, parameters,
buffers, children, state_dict and modes.

Two kinds of modules (the mechanics are in :mod:`nnx.nn.tape`):

* A **layer with a hand-written backward** implements ``forward(x)``, saving what its
  backward needs into ``self.ctx`` (a fresh :class:`~nnx.nn.tape.Context` per call), and
  ``backward(dy)``, which reads ``self.ctx``, returns ``dL/dx`` and *accumulates*
  ``dL/dθ`` into each parameter's ``grad``.
* A **composite** implements ``forward`` only, out of module calls and the functions of
  :mod:`nnx.nn.functional`; its calls are recorded on a tape and the inherited
  :meth:`Module.backward` runs the recorded calls' backward in reverse.  Plain array
  arithmetic is not recorded: a gradient does not flow back through it (use
  ``F.add``, ``F.cat``, ``F.reshape`` ... on values that need one).

A call made at top level (not inside a composite's forward) keeps its record on the
module until ``backward`` uses it: a second backward over the same call raises unless the
first was given ``retain_graph=True``, and a backward with nothing recorded raises.  Calls
under :class:`~nnx.nn.tape.no_grad` record nothing.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np

from .. import backend as B
from .parameter import Parameter
from .tape import Context, Tape, _state

class _Freed(Context):
    """The record after a backward used it and freed its saved state (one instance, which
    copies and pickles keep)."""

    def __reduce__(self):
        return "_FREED"


_FREED = _Freed()


def _uses_record(impl):
    """Wrap a hand-written ``backward``/``backward_params`` so that a call from outside
    checks and then frees the module's record (``retain_graph=True`` keeps it).  A call
    made while the same record is already in a backward (``super().backward``, or
    ``backward_params`` calling ``backward``) passes straight through."""

    @functools.wraps(impl)
    def entry(self, *grads, retain_graph=False, **kwargs):
        d = self.__dict__
        ctx = d["ctx"]
        if ctx is None or ctx is _FREED:
            self._record_for_backward(impl.__name__)          # raises the right error
        c = ctx.__dict__
        if "_in_backward" in c:
            return impl(self, *grads, **kwargs)
        c["_in_backward"] = True
        for module, inner_ctx in c.get("_inner_calls", ()):   # this call's own inner calls
            module.__dict__["ctx"] = inner_ctx
        try:
            result = impl(self, *grads, **kwargs)
        finally:
            del c["_in_backward"]
        if not retain_graph:            # (after an error the record stays for a retry)
            d["ctx"] = _FREED
        return result
    entry.__wrapped_backward__ = True
    return entry


class Module:
    #: True for subclasses that write their own ``backward`` (set by __init_subclass__)
    _hand_written = False

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "ctx", None)   # the current call's Context (or record)
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("backward", "backward_params"):
            impl = cls.__dict__.get(name)
            if impl is not None and not getattr(impl, "__wrapped_backward__", False):
                setattr(cls, name, _uses_record(impl))
        cls._hand_written = cls.backward is not Module.backward

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        if name in self._parameters and value is not None and not isinstance(value, Parameter):
            # PyTorch's rule: a plain array would silently leave parameters() and state_dict()
            raise TypeError(f"cannot assign {_typename(value)!r} as parameter {name!r} "
                            f"(nnx.nn.Parameter or None expected); wrap it: "
                            f"module.{name} = nnx.nn.Parameter(array)")
        if name in self._modules and value is not None and not isinstance(value, Module):
            raise TypeError(f"cannot assign {_typename(value)!r} as child module {name!r} "
                            "(nnx.nn.Module or None expected)")
        is_buffer = name in self._buffers and not isinstance(value, (Parameter, Module))
        keep_param_slot = name in self._parameters and value is None
        if is_buffer:  # reassigning a buffer (e.g. `self.running_mean *= m`) keeps it one
            target, entry = self._buffers, True
        elif isinstance(value, Parameter) or keep_param_slot:
            target, entry = self._parameters, value    # None stays a (skipped) slot
        elif isinstance(value, Module):
            target, entry = self._modules, value
        else:
            target = entry = None
        for table in (self._parameters, self._modules, self._buffers):
            if table is not target:
                table.pop(name, None)
        if target is not None:   # a reassigned name keeps its place (state_dict order)
            target[name] = entry
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """A persistent non-trainable array (e.g. batch norm's running mean)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def __delattr__(self, name):
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        object.__delattr__(self, name)

    def add_module(self, name: str, module: "Module") -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"module name must be a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        setattr(self, name, module)

    # ------------------------------------------------------------------ hooks
    def register_forward_pre_hook(self, hook) -> "RemovableHandle":
        """Call ``hook(module, args)`` before every ``forward``; a non-``None`` result
        replaces the positional arguments (a tuple, or one value).  The hook runs on the
        enclosing composite's tape, so ``nnx.nn.functional`` operations in it are
        differentiated there; for a top-level call, ``backward`` returns the gradient of
        the arguments as the hook returned them."""
        return RemovableHandle(self.__dict__["_forward_pre_hooks"], hook)

    def register_forward_hook(self, hook) -> "RemovableHandle":
        """Call ``hook(module, args, output)`` after every ``forward``; a non-``None``
        result replaces the output.  In a composite the hook runs while the module's tape
        records, so ``nnx.nn.functional`` operations in it are differentiated (plain array
        arithmetic is not, as in ``forward``).  A layer with a hand-written backward cannot
        differentiate a replaced output: that raises unless gradients are disabled."""
        return RemovableHandle(self.__dict__["_forward_hooks"], hook)

    def _run_pre_hooks(self, args):
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        return args

    def _run_forward_hooks(self, args, out):
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None and result is not out:
                if self._hand_written and _state.grad_enabled:
                    raise RuntimeError(
                        f"a forward hook of {type(self).__name__} returned a new output, but "
                        f"its hand-written backward differentiates only its own forward; "
                        f"return None (observe only), run under nnx.no_grad(), or wrap the "
                        f"layer in a composite module and change the output there")
                out = result
        return out

    # ------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        """Run ``forward`` with a fresh context as ``self.ctx``.

        Inside a composite's forward the call becomes a node of its tape; at top level the
        context stays on the module as its record for ``backward``; under ``no_grad`` it
        is dropped.  A composite records its own tape meanwhile; a hand-written layer's
        inner calls are top level (its own backward is in charge of them), and their
        records are kept in its context too (see :mod:`nnx.nn.tape`)."""
        d = self.__dict__
        if d.get("_forward_pre_hooks"):
            args = self._run_pre_hooks(args)
        if self._parameters:
            self._check_backend()
        st = _state
        prev = d["ctx"]
        ctx = d["ctx"] = Context()
        hooks = d.get("_forward_hooks")
        if not st.grad_enabled:
            try:
                out = self.forward(*args, **kwargs)
                return self._run_forward_hooks(args, out) if hooks else out
            finally:
                d["ctx"] = prev
        outer, owner = st.tape, st.owner
        if self._hand_written:
            tape, st.tape, st.owner = None, None, ctx
        else:
            tape = st.tape = Tape(args)
            st.owner = None
        try:
            out = self.forward(*args, **kwargs)
            if hooks:       # (on this module's tape, for a composite)
                out = self._run_forward_hooks(args, out)
        except BaseException:
            d["ctx"] = prev
            raise
        finally:
            st.tape, st.owner = outer, owner
        if tape is not None:
            tape.finish(out)
            ctx.tape = tape
        if outer is not None:
            outer.record(self, ctx, args, out)
            d["ctx"] = prev
        elif owner is not None:       # inside a hand-written layer's forward: it keeps ours
            inner = owner.__dict__.setdefault("_inner_calls", [])
            inner.append((self, ctx))
        return out

    def _check_backend(self):
        """Parameters must live on the active backend (a model built under ``cpu`` and run
        after ``nnx.backend.use("cuda")`` would otherwise fail deep inside a matmul)."""
        be = B.get()
        for name, p in self._parameters.items():
            if p is not None and not be.is_native(p.data):
                raise B.BackendMismatchError(
                    f"{type(self).__name__}.{name} is not on the active '{be.name}' backend; "
                    f"move the model with model.to('{be.name}') (or switch back with "
                    f"nnx.backend.use(...))")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def _record_for_backward(self, what="backward"):
        """The context of the call that a backward now refers to, or a clear error."""
        ctx = self.__dict__["ctx"]
        if ctx is not None and ctx is not _FREED:
            return ctx
        name = f"{type(self).__name__}.{what}"
        if ctx is None:
            raise RuntimeError(f"{name} called before forward: no call of the module is "
                               "recorded (calls under nnx.no_grad() record nothing)")
        raise RuntimeError(f"{name}: the last recorded call's saved state was freed by a "
                           "previous backward (calls made since under nnx.no_grad() record "
                           "nothing); call the module again with gradients enabled, or pass "
                           "retain_graph=True to the first backward")

    def backward(self, *grads, input_grad: bool = True, retain_graph: bool = False):
        """Backward of a composite through the calls its last ``forward`` recorded.

        ``grads`` mirror the forward's result (one per output; ``None`` or omitted for an
        output without gradient).  Returns the gradient of the positional argument (a
        tuple, one per argument, when ``forward`` took several; ``None`` where no gradient
        reached it) and accumulates every parameter's gradient.

        ``input_grad=False`` says the caller does not need ``dL/dx`` (the input is data,
        e.g. images): calls that depend on the input only through parameter-free calls
        are skipped, the first calls that own parameters only accumulate them
        (``backward_params``, which e.g. spares a first ``Conv2d`` its col2im), and
        ``None`` is returned.  Parameter gradients are identical either way.
        ``retain_graph=True`` keeps the record for another backward.
        """
        if self._hand_written:   # only reached through super() from a subclass
            raise NotImplementedError(f"{type(self).__name__} does not implement backward")
        tape = self._record_for_backward().tape
        if not retain_graph:
            object.__setattr__(self, "ctx", _FREED)
        return tape.backward(grads, input_grad, retain_graph)

    def backward_params(self, *grads, retain_graph: bool = False) -> None:
        """Accumulate this module's parameter gradients for upstream gradient ``dy`` without
        returning ``dL/dx`` (PyTorch skips that work when the input does not require grad,
        e.g. the images fed to a network's first layer).

        Composites call this on their first layers for ``backward(dy, input_grad=False)``.
        A composite runs its backward with ``input_grad=False``; for a layer the default
        runs :meth:`backward` and drops the result (correct for any module); a module
        without parameters anywhere below it does nothing; layers whose input gradient is
        expensive (``Conv2d``, ``Linear``) override it to skip that work.
        """
        if not self._hand_written:
            self.backward(*grads, input_grad=False, retain_graph=retain_graph)
        elif next(self.parameters(), None) is None:
            self._record_for_backward("backward_params")
            if not retain_graph:
                object.__setattr__(self, "ctx", _FREED)
        else:
            self.backward(*grads, retain_graph=retain_graph)
        return None

    # ------------------------------------------------------------------ traversal
    # As in PyTorch, every iterator lists a module, parameter or buffer reached twice (a
    # shared layer, tied weights ``b.weight = a.weight``) once, under its first name, so an
    # optimizer steps it once and ``num_parameters`` counts it once; ``state_dict`` keeps
    # every name (``remove_duplicate=False``).
    def children(self):
        for _, m in self.named_children():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                           remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named_members(self, members, prefix, recurse, remove_duplicate):
        """``(name, value)`` for ``members(module)`` of this module (and its descendants
        when ``recurse``), skipping ``None`` slots and, with ``remove_duplicate``, values
        already listed (by identity)."""
        mods = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
                if recurse else [(prefix, self)])
        seen = set()
        for mod_name, mod in mods:
            for name, value in members(mod):
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{mod_name}.{name}" if mod_name else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True):
        return self._named_members(lambda m: m._parameters.items(), prefix, recurse,
                                   remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True):
        return self._named_members(lambda m: ((n, getattr(m, n)) for n in m._buffers),
                                   prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        """The submodule at dotted path ``target`` (``""`` is ``self``), e.g.
        ``model.get_submodule("layer1.0.conv1")``."""
        mod = self
        for item in target.split(".") if target else ():
            if item not in mod._modules:
                raise AttributeError(f"{type(mod).__name__} has no attribute `{item}`")
            mod = mod._modules[item]
        return mod

    def apply(self, fn) -> "Module":
        """Call ``fn(m)`` on every submodule (children first) and on ``self``; returns
        ``self`` (e.g. ``model.apply(init_weights)``)."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set ``requires_grad`` of every parameter: a frozen parameter accumulates no
        gradient, so its ``grad`` stays ``None`` and optimizers skip it."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Host (NumPy) copies of every parameter and buffer, with PyTorch's keys in PyTorch's
        order: module by module, each module's parameters and then its buffers."""
        be = B.get()
        out = OrderedDict()
        for mod_name, mod in self.named_modules(remove_duplicate=False):
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is None:
                    continue
                out[prefix + name] = np.array(be.to_numpy(p.data), copy=True)
            for name in mod._buffers:
                if getattr(mod, name) is not None:
                    out[prefix + name] = np.array(be.to_numpy(getattr(mod, name)), copy=True)
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays (NumPy, CuPy or anything ``np.asarray`` accepts, e.g. a PyTorch
        state_dict converted with ``.numpy()``) into this module on the active backend."""
        be = B.get()
        own = OrderedDict(self.named_parameters(remove_duplicate=False))
        buffers = OrderedDict(self._buffer_owners(remove_duplicate=False))
        expected = list(own) + list(buffers)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in own and k not in buffers]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected}")
        for key, value in state.items():
            value = _host_array(value)
            if key in own:
                p = own[key]
                if tuple(value.shape) != tuple(p.data.shape):
                    raise ValueError(f"load_state_dict: {key!r} has shape {tuple(value.shape)} "
                                     f"in the state dict but {tuple(p.data.shape)} in the model")
                p.data[...] = be.asarray(value.astype(p.data.dtype, copy=False))
            elif key in buffers:
                mod, name = buffers[key]
                cur = getattr(mod, name)
                if tuple(np.shape(value)) != tuple(np.shape(cur)):
                    raise ValueError(f"load_state_dict: {key!r} has shape {np.shape(value)} "
                                     f"in the state dict but {np.shape(cur)} in the model")
                object.__setattr__(mod, name, be.asarray(value.astype(cur.dtype, copy=False)))
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def _buffer_owners(self, remove_duplicate=True):
        for mod_name, mod in self.named_modules(remove_duplicate=remove_duplicate):
            for name in mod._buffers:
                if getattr(mod, name) is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), (mod, name)

    def to(self, backend=None, dtype=None):
        """Move parameters and buffers to ``backend`` (a name or Backend) and/or cast them to
        ``dtype``.  Gradients are dropped.  Returns ``self``."""
        if isinstance(backend, str):
            target = B.create(backend)
        else:
            target = backend or B.get()
        for p in self.parameters():
            host = _host_array(p.data)
            p.data = target.asarray(host, dtype=dtype or host.dtype)
            p.grad = None
        for _, (mod, name) in self._buffer_owners():
            host = _host_array(getattr(mod, name))
            dt = dtype if dtype is not None and host.dtype.kind == "f" else host.dtype
            object.__setattr__(mod, name, target.asarray(host, dtype=dt))
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {child_repr}")
            lines.append("\n")
        return "".join(lines) + ")"


class RemovableHandle:
    """Returned by ``register_forward_hook``/``register_forward_pre_hook``: ``remove()``
    unregisters the hook (also on leaving a ``with`` block)."""
    _next_id = 0

    def __init__(self, hooks, hook):
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1
        self._hooks = hooks
        hooks[self.id] = hook

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def _typename(value) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _host_array(x) -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
