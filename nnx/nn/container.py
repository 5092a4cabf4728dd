"""``Sequential`` and ``Identity``.  Sequential is an ordinary composite: its backward is the
tape's (``Module.backward``), including ``backward(dy, input_grad=False)``."""
from __future__ import annotations

from .. import backend as B
from .activation import ReLU
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d
from .linear import Linear
from .module import Module
from .pooling import MaxPool2d


class Sequential(Module):
    """``y = f_K(... f_1(f_0(x)))``; backward (recorded by the tape) applies the children's
    backward in reverse, so ``dL/dx = J_0ᵀ J_1ᵀ ... J_Kᵀ dL/dy`` (the seeds' recursive chain
    rule).  ``backward(dy, input_grad=False)`` skips ``dL/dx`` (see :meth:`Module.backward`).

    One exact reordering: a ``ReLU`` directly followed by a ``MaxPool2d`` runs *after* it.
    ReLU is monotone, so ``maxpool(relu(x)) = relu(maxpool(x))`` bit for bit, and the
    gradients agree too: both send ``dL/dy`` to the window's first maximum when it is
    positive, and nowhere otherwise.  The ReLU then touches ``1/(KH·KW)`` of the elements.

    On a backend with ``fuses_bias_relu`` (CUDA) a ``Linear`` or ``Conv2d`` directly
    followed by a ``ReLU`` runs as one call ``layer(x, relu=True)``: its forward computes
    ``max(Wx + b, 0)`` in the bias (and, for Conv2d, NCHW-layout) kernel, and its backward
    masks ``dy`` with ``[y > 0]`` inside the bias-gradient kernel, 2-3 launches fewer per
    pair; the ReLU is then not called (it has no state).  The result is the same function
    (same operations per element; only the bias-gradient sum's order may differ).  This
    was chosen over PyTorch's fused modules (``torch.ao.nn.intrinsic`` + ``fuse_modules``)
    because models and state_dicts stay as written and nothing has to opt in.  A pair is
    left unfused when either module has forward hooks (they must see the ReLU's input) or
    is a subclass (its forward may differ).

    Likewise, on a backend with ``fuses_batchnorm_relu`` (the CPU's C kernels) a
    ``BatchNorm1d``/``BatchNorm2d`` directly followed by a ``ReLU`` runs as ``bn(x,
    relu=True)``: one pass instead of two each way, the same numbers (tested bit for bit).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _execution_order(self):
        """The children in the order forward runs them, without fusion."""
        return [m for m, _ in _relu_after_pool([(m, False) for m in self._modules.values()])]

    def _steps(self):
        """``(module, relu)`` pairs: forward calls ``module(x, relu=True)`` for a fused pair."""
        be = B.get()
        kinds = (((Linear, Conv2d) if getattr(be, "fuses_bias_relu", False) else ())
                 + ((BatchNorm1d, BatchNorm2d) if getattr(be, "fuses_batchnorm_relu", False)
                    else ()))
        if not kinds:
            return [(m, False) for m in self._execution_order()]
        mods, steps = list(self._modules.values()), []
        i = 0
        while i < len(mods):
            fused = i + 1 < len(mods) and _fusable(mods[i], mods[i + 1], kinds)
            steps.append((mods[i], fused))
            i += 2 if fused else 1
        return _relu_after_pool(steps)

    def forward(self, x):
        prev = None
        for m, relu in self._steps():
            if relu:
                x = m(x, relu=True)
            elif isinstance(x, (tuple, list)) and prev is not None:
                try:            # (a layer written to take the tuple is fine)
                    x = m(x)
                except (TypeError, ValueError, AttributeError) as e:
                    names = {id(c): n for n, c in self.named_children()}
                    raise_not_one_array(names[id(prev)], prev, names[id(m)], m, x, e)
            else:
                x = m(x)
            prev = m
        return x


def _relu_after_pool(steps):
    """Swap each unfused ``ReLU`` with a ``MaxPool2d`` right after it (see Sequential)."""
    for i in range(len(steps) - 1):
        (a, fused), (b, _) = steps[i], steps[i + 1]
        if not fused and type(a) is ReLU and isinstance(b, MaxPool2d):
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
    return steps


def _fusable(layer, nxt, kinds):
    """A layer of one of ``kinds`` (exact types) followed by a ReLU, neither with hooks."""
    if type(layer) not in kinds or type(nxt) is not ReLU:
        return False
    return not any(m.__dict__.get(h) for m in (layer, nxt)
                   for h in ("_forward_pre_hooks", "_forward_hooks"))


# what the recurrent layers return (PyTorch's structures)
_RETURNS = {"LSTM": "(output, (h_n, c_n))", "RNN": "(output, h_n)", "GRU": "(output, h_n)"}


def raise_not_one_array(name, layer, next_name, next_layer, out, cause=None):
    """Sequential feeds each layer's result to the next as one array; a layer returning a
    tuple (a recurrent layer's ``(output, state)``) would otherwise reach the next layer
    as a ragged NumPy conversion error."""
    kind = type(layer).__name__
    what = _RETURNS.get(kind, f"a {type(out).__name__} of {len(out)}")
    raise TypeError(
        f"Sequential passes one array from layer to layer, but layer {name!r} ({kind}) "
        f"returns {what}, which layer {next_name!r} ({type(next_layer).__name__}) cannot "
        f"take; use a custom Module whose forward unpacks it, e.g. "
        f"`out, _ = self.rnn(x); return self.fc(out[:, -1])`") from cause


class Identity(Module):
    """``y = x``; ``dL/dx = dL/dy``."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
