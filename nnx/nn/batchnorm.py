"""Batch normalisation over the channel axis 1 (PyTorch's BatchNorm1d / BatchNorm2d)."""
from __future__ import annotations

import numpy as np

from .. import backend as B
from .. import dtypes, init
from .inputs import as_array, as_input, check_float
from .module import Module
from .parameter import Parameter


class _BatchNorm(Module):
    r"""Per channel ``c``, over the ``m`` values of the batch and spatial axes::

        train:  μ = mean(x),  σ² = mean((x - μ)²)               (biased, used to normalise)
                running_mean ← (1 - momentum)·running_mean + momentum·μ
                running_var  ← (1 - momentum)·running_var  + momentum·σ²·m/(m-1)   (unbiased)
        eval:   μ, σ² = running_mean, running_var   (when track_running_stats)
        x̂ = (x - μ) / √(σ² + ε),    y = γ·x̂ + β

    Backward with ``g = dL/dy``, ``s = 1/√(σ² + ε)``::

        dL/dγ = Σ g·x̂          dL/dβ = Σ g
        train:  dL/dx = (γ·s/m) · (m·g - Σ g - x̂·Σ g·x̂)      (μ and σ² depend on x)
        eval:   dL/dx = γ·s·g                                   (constants)

    ``forward(x, relu=True)`` (what ``Sequential`` calls for a BatchNorm directly followed
    by a ``ReLU`` on a backend with ``fuses_batchnorm_relu``, the CPU's) returns
    ``y = max(γ·x̂ + β, 0)`` in the same pass, and its backward first applies ReLU's
    ``g = dL/dy·[y > 0]``: the same numbers as the two layers, one pass over the activation
    fewer each way.

    The backend computes these (``batchnorm_forward`` / ``batchnorm_backward``): the
    reference in array math is in ``nnx/backend/base.py`` (the CUDA backend runs it), the CPU
    backend uses C kernels (``kernels/cpu/batchnorm2d.c``) tested against it; this layer
    keeps the running statistics.
    ``momentum=None`` uses the cumulative average ``momentum = 1/num_batches_tracked``.
    Buffers (state_dict keys as PyTorch): ``running_mean``, ``running_var``,
    ``num_batches_tracked`` (int64, 0-d).
    """

    _expected_dims: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=None):
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        xp = B.get().xp
        dt = dtypes.resolve(dtype)
        if self.affine:
            self.weight = Parameter(xp.empty((self.num_features,), dtype=dt))
            self.bias = Parameter(xp.empty((self.num_features,), dtype=dt))
            init.ones_(self.weight)
            init.zeros_(self.bias)
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", xp.zeros((self.num_features,), dtype=dt))
            self.register_buffer("running_var", xp.ones((self.num_features,), dtype=dt))
            self.register_buffer("num_batches_tracked", xp.zeros((), dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _param_dtype(self):
        if self.affine:
            return self.weight.data.dtype
        if self.track_running_stats:
            return self.running_mean.dtype
        return None        # nothing stored: any floating dtype works

    def forward(self, x, relu=False):
        name = type(self).__name__
        dt = self._param_dtype()
        x = check_float(as_array(x), name) if dt is None else as_input(x, dt, name)
        if x.ndim not in self._expected_dims:
            dims = " or ".join(f"{d}-D" for d in self._expected_dims)
            raise ValueError(f"{name} expects a {dims} input with channels in axis 1, got "
                             f"shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects {self.num_features} "
                             f"channels in axis 1, got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)})")
        m = x.size // self.num_features
        use_batch = self.training or not self.track_running_stats
        if use_batch and m <= 1:
            raise ValueError(f"{name}: expected more than 1 value per channel when "
                             f"training, got input shape {tuple(x.shape)}")
        # the backend computes the equations above (the NumPy reference in
        # nnx/backend/base.py, C kernels on the CPU); running statistics stay here
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        stats = (None, None) if use_batch else (self.running_mean, self.running_var)
        y, mean, var, saved = B.get().batchnorm_forward(x, w, b, *stats, eps=self.eps,
                                                        relu=relu)
        if use_batch and self.training and self.track_running_stats:
            self._update_running(mean, var, m)
        # a fused ReLU's backward needs y (the next layer keeps it anyway: no extra memory)
        self.ctx.saved = (saved, use_batch, y if relu else None)
        return y

    def _update_running(self, mean, var, m):
        self.num_batches_tracked[...] += 1        # in place: buffers must stay registered
        if self.momentum is None:
            mom = 1.0 / float(self.num_batches_tracked)
        else:
            mom = float(self.momentum)
        # update through locals: ``self.x *= a`` would re-assign the attribute and
        # unregister the buffer (Module.__setattr__)
        rm, rv = self.running_mean, self.running_var
        dt = rm.dtype.type
        rm *= dt(1 - mom)
        rm += dt(mom) * mean
        rv *= dt(1 - mom)
        rv += dt(mom * m / (m - 1)) * var

    def backward(self, dy):
        saved, use_batch, relu_y = self.ctx.saved
        w = self.weight.data if self.affine else None
        dx, dw, db = B.get().batchnorm_backward(dy, saved, w, use_batch, relu_y=relu_y)
        if self.affine:
            self.bias.accumulate(db)
            self.weight.accumulate(dw)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    __doc__ = ("Batch norm of ``(N, C)`` or ``(N, C, L)`` input.\n\n" + _BatchNorm.__doc__)
    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    __doc__ = ("Batch norm of ``(N, C, H, W)`` input.\n\n" + _BatchNorm.__doc__)
    _expected_dims = (4,)
