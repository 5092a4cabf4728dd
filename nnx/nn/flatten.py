"""Reshape a range of axes into one."""
from __future__ import annotations

from .inputs import as_array
from .module import Module


class Flatten(Module):
    """``y = x.reshape(x.shape[:s] + (prod(x.shape[s:e+1]),) + x.shape[e+1:])``;
    ``dL/dx = dL/dy.reshape(x.shape)``.  Defaults keep the batch axis (PyTorch's Flatten)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def output_shape(self, input_shape):
        nd = len(input_shape)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < max(nd, 1) and 0 <= e < max(nd, 1)) or s > e:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) "
                             f"is invalid for an input of shape {tuple(input_shape)}")
        size = 1
        for d in input_shape[s:e + 1]:
            size *= d
        return tuple(input_shape[:s]) + (size,) + tuple(input_shape[e + 1:])

    def forward(self, x):
        x = as_array(x)
        self.ctx.shape = x.shape
        if x.ndim == 0:
            return x.reshape(1)
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dy):
        return dy.reshape(self.ctx.shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
