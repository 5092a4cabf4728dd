r"""Batch normalisation whose statistics and gradients cover the global batch of all ranks
(PyTorch's ``SyncBatchNorm``).

Per channel, rank ``r`` holds ``m_r`` values of the batch and spatial axes; ``M = Σ_r m_r``.
Training (two all-reduces of ``C`` values, the same two passes as one process)::

    μ  = (Σ_r Σ x) / M                       all-reduce of [Σ x, m_r]
    σ² = (Σ_r Σ (x - μ)²) / M                all-reduce of Σ (x - μ)²   (biased)
    running_mean ← (1 - momentum)·running_mean + momentum·μ
    running_var  ← (1 - momentum)·running_var  + momentum·σ²·M/(M-1)
    x̂ = (x - μ)/√(σ² + ε),   y = γ·x̂ + β

Backward with ``g = dL/dy`` and ``s = 1/√(σ² + ε)`` (one all-reduce of ``[Σ g, Σ g·x̂]``)::

    dL/dγ = Σ g·x̂,  dL/dβ = Σ g              (this rank's sums: the data-parallel
                                               gradient average combines them)
    dL/dx = (γ·s/M)·(M·g - Σ_r Σ g - x̂·Σ_r Σ g·x̂)

Evaluation (``eval()`` with running statistics) is local: no communication.  With one
process (or ``process_group`` None and no MPI world initialised) it is ``BatchNorm``.
Relies on ``_BatchNorm``'s constructor and public attributes only (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``, ``eps``, ``momentum``,
``affine``, ``track_running_stats``).
"""
from __future__ import annotations

from .. import backend as B
from ..nn.batchnorm import _BatchNorm
from ..nn.inputs import as_array, as_input, check_float


def _stored_dtype(bn):
    """The dtype of a batch norm's parameters or statistics (None: it stores neither)."""
    if bn.affine:
        return bn.weight.data.dtype
    return bn.running_mean.dtype if bn.track_running_stats else None


def _default_group():
    from . import communicator
    return communicator._WORLD


class SyncBatchNorm(_BatchNorm):
    """Batch norm over ``(N, C, ...)`` input, synchronised over ``process_group`` (a
    :class:`~nnx.distributed.Communicator`; default: the MPI world, if initialised)."""

    _expected_dims = (2, 3, 4, 5)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        self.process_group = process_group

    def _group(self):
        group = self.process_group if self.process_group is not None else _default_group()
        return group if group is not None and group.size > 1 else None

    def _allreduce(self, *parts):
        """Sum the per-channel vectors ``parts`` over the ranks in one call."""
        group = self._group()
        if group is None:
            return parts
        xp = B.get().xp
        flat = xp.concatenate([p.reshape(-1) for p in parts])
        group.allreduce_(flat)
        c = self.num_features
        return tuple(flat[i * c:(i + 1) * c] if p.size == c else flat[i * c:i * c + p.size]
                     for i, p in enumerate(parts))

    def _check(self, x):
        name = type(self).__name__
        dt = _stored_dtype(self)
        x = check_float(as_array(x), name) if dt is None else as_input(x, dt, name)
        if x.ndim not in self._expected_dims or x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects input of shape (N, "
                             f"{self.num_features}, ...) with 2 to 5 dimensions, got "
                             f"{tuple(x.shape)}")
        return x

    def forward(self, x):
        x = self._check(x)
        xp = B.get().xp
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, -1) + (1,) * (x.ndim - 2)
        m = x.size // self.num_features
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            local_sum = x.sum(axis=axes, dtype=x.dtype)
            total, count = self._allreduce(local_sum, xp.full((1,), m, dtype=x.dtype))
            m = int(round(float(count[0])))
            if m <= 1:
                raise ValueError(f"{type(self).__name__}: expected more than 1 value per "
                                 f"channel when training, got input shape {tuple(x.shape)}")
            mean = total / x.dtype.type(m)
            xc = x - mean.reshape(bshape)
            var, = self._allreduce((xc * xc).sum(axis=axes, dtype=x.dtype))
            var = var / x.dtype.type(m)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, m)   # global statistics, BatchNorm's update
        else:
            mean, var = self.running_mean, self.running_var
            xc = x - mean.reshape(bshape)
        inv_std = 1.0 / xp.sqrt(var + x.dtype.type(self.eps))
        xhat = xc * inv_std.reshape(bshape)
        y = xhat
        if self.affine:
            y = xhat * self.weight.data.reshape(bshape) + self.bias.data.reshape(bshape)
        self.ctx.saved = (xhat, inv_std, use_batch, axes, bshape, m)
        return y

    def backward(self, dy):
        xhat, inv_std, use_batch, axes, bshape, m = self.ctx.saved
        sum_g = dy.sum(axis=axes)
        sum_gx = (dy * xhat).sum(axis=axes)
        if self.affine:
            self.bias.accumulate(sum_g)
            self.weight.accumulate(sum_gx)
            scale = self.weight.data * inv_std
        else:
            scale = inv_std
        if not use_batch:
            return dy * scale.reshape(bshape)
        sum_g, sum_gx = self._allreduce(sum_g, sum_gx)
        dx = dy * dy.dtype.type(m) - sum_g.reshape(bshape) - xhat * sum_gx.reshape(bshape)
        dx *= (scale / dy.dtype.type(m)).reshape(bshape)
        return dx

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``module`` with every ``BatchNorm1d/2d`` replaced by a :class:`SyncBatchNorm`
        that shares its parameters and buffers (PyTorch's classmethod of this name)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, process_group,
                       dtype=_stored_dtype(module))
            if module.affine:
                sync.weight, sync.bias = module.weight, module.bias
            if module.track_running_stats:
                sync.running_mean = module.running_mean
                sync.running_var = module.running_var
                sync.num_batches_tracked = module.num_batches_tracked
            sync.train(module.training)
            return sync
        for name, child in list(module.named_children()):
            new = cls.convert_sync_batchnorm(child, process_group)
            if new is not child:
                setattr(module, name, new)
        return module


convert_sync_batchnorm = SyncBatchNorm.convert_sync_batchnorm
