"""The base class of every layer: parameters, buffers, children, state_dict and modes.

Each layer implements ``forward(x)`` (keeping what backward needs) and ``backward(dy)``,
which returns ``dL/dx`` and *accumulates* ``dL/dθ`` into each parameter's ``grad``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backend as B
from .parameter import Parameter


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        is_buffer = name in self._buffers and not isinstance(value, (Parameter, Module))
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        if is_buffer:  # reassigning a buffer (e.g. `self.running_mean *= m`) keeps it one
            self._buffers[name] = True
        elif isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """A persistent non-trainable array (e.g. batch norm's running mean)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # ------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        if self._parameters:
            self._check_backend()
        return self.forward(*args, **kwargs)

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

    def backward(self, *grads):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def backward_params(self, dy) -> None:
        """Accumulate this module's parameter gradients for upstream gradient ``dy`` without
        returning ``dL/dx`` (PyTorch skips that work when the input does not require grad,
        e.g. the images fed to a network's first layer).

        Containers call this on their first layer for ``backward(dy, input_grad=False)``.
        The default runs :meth:`backward` and drops the result (correct for any module);
        a module without parameters anywhere below it does nothing; layers whose input
        gradient is expensive (``Conv2d``, ``Linear``) override it to skip that work.
        """
        if not any(True for _ in self.parameters()):
            return None
        self.backward(dy)
        return None

    # ------------------------------------------------------------------ traversal
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name in mod._buffers:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(mod, name)

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
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                out[prefix + name] = np.array(be.to_numpy(p.data), copy=True)
            for name in mod._buffers:
                out[prefix + name] = np.array(be.to_numpy(getattr(mod, name)), copy=True)
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays (NumPy, CuPy or anything ``np.asarray`` accepts, e.g. a PyTorch
        state_dict converted with ``.numpy()``) into this module on the active backend."""
        be = B.get()
        own = OrderedDict(self.named_parameters())
        buffers = OrderedDict(self._buffer_owners())
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

    def _buffer_owners(self):
        for mod_name, mod in self.named_modules():
            for name in mod._buffers:
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


def _host_array(x) -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
