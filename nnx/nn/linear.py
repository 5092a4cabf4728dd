"""Fully connected layer."""
from __future__ import annotations

import math

from .. import backend as B
from .. import dtypes, init
from .inputs import as_input
from .module import Module
from .parameter import Parameter


class Linear(Module):
    r"""Affine map ``y = x W^T + b`` over the last axis of ``x``.

    Shapes: ``x (..., in_features)``, ``W (out_features, in_features)``, ``b (out_features,)``,
    ``y (..., out_features)``.  With ``δ = dL/dy`` flattened to ``(M, out)`` and ``x`` to
    ``(M, in)``, backpropagation gives (seeds: ∂l/∂Ω = ∂l/∂f · hᵀ, ∂l/∂β = ∂l/∂f)::

        dL/dW = δᵀ x        dL/db = Σ_rows δ        dL/dx = δ W

    Initialisation is PyTorch's: ``W, b ~ U(-1/sqrt(in), 1/sqrt(in))``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        xp = B.get().xp
        dt = dtypes.resolve(dtype)
        self.weight = Parameter(xp.empty((self.out_features, self.in_features), dtype=dt))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            self.bias = Parameter(xp.empty((self.out_features,), dtype=dt))
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)
        else:
            self.bias = None

    def forward(self, x, relu=False):
        """``relu=True`` returns ``max(y, 0)`` (a following ReLU fused in: see
        :class:`~nnx.nn.container.Sequential`); backward then applies ``[y > 0]`` first."""
        x = as_input(x, self.weight.data.dtype, "Linear")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            got = x.shape[-1] if x.ndim else "a scalar"
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) expects "
                             f"{self.in_features} input features in the last axis, got {got} "
                             f"(input shape {tuple(x.shape)})")
        self.ctx.x = x
        y = x @ self.weight.data.T
        if relu:
            return self._bias_relu(y)
        if self.bias is not None:
            y += self.bias.data
        return y

    def _bias_relu(self, y):
        """``max(y + b, 0)`` in one pass, saved for the fused backward."""
        be = B.get()
        y2 = y.reshape(-1, self.out_features)
        y2 = be.relu(y2) if self.bias is None else be.bias_relu(y2, self.bias.data)
        self.ctx.relu_y = y2
        return y2.reshape(y.shape)

    def backward(self, dy):
        d2 = self._param_grads(dy)
        return (d2 @ self.weight.data).reshape(self.ctx.x.shape)

    def backward_params(self, dy):
        """Accumulate ``dL/dW`` and ``dL/db`` only (skips ``dL/dx = δ W``)."""
        self._param_grads(dy)
        return None

    def _param_grads(self, dy):
        x2 = self.ctx.x.reshape(-1, self.in_features)
        d2 = dy.reshape(-1, self.out_features)
        relu_y = getattr(self.ctx, "relu_y", None)
        if relu_y is not None:      # δ = dy ⊙ [y > 0] and Σ_rows δ in one pass
            d2, db = B.get().bias_grad(d2, relu_y, self.bias is not None)
        elif self.bias is not None:
            db = d2.sum(axis=0)
        self.weight.accumulate(d2.T @ x2, owned=True)
        if self.bias is not None:
            self.bias.accumulate(db, owned=True)
        return d2

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
