"""``Sequential`` and ``Identity``.  Sequential is an ordinary composite: its backward is the
tape's (``Module.backward``), including ``backward(dy, input_grad=False)``."""
from __future__ import annotations

from .activation import ReLU
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
        mods = list(self._modules.values())
        for i in range(len(mods) - 1):
            if type(mods[i]) is ReLU and isinstance(mods[i + 1], MaxPool2d):
                mods[i], mods[i + 1] = mods[i + 1], mods[i]
        return mods

    def forward(self, x):
        prev = None
        for m in self._execution_order():
            if isinstance(x, (tuple, list)) and prev is not None:
                try:            # (a layer written to take the tuple is fine)
                    x = m(x)
                except (TypeError, ValueError, AttributeError) as e:
                    names = {id(c): n for n, c in self.named_children()}
                    raise_not_one_array(names[id(prev)], prev, names[id(m)], m, x, e)
            else:
                x = m(x)
            prev = m
        return x


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
