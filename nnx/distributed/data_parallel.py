"""Data parallelism: every rank holds the whole model and trains on its shard of each batch;
after the backward pass the gradients are averaged over the ranks, so every rank takes the
same optimizer step (PyTorch's ``DistributedDataParallel``, ChainerMN's multi-node
optimizer).

With ``L_r`` the mean loss over rank ``r``'s ``b`` samples of a global batch of ``B = N·b``,
the gradient of the global mean loss is ``∇L = (1/N) Σ_r ∇L_r``: an all-reduce (sum) and a
scale by ``1/N``.  The gradients go through a few flat *buckets* (one all-reduce each, not
one per parameter): parameters, in order, are packed into buffers of at most
``bucket_bytes`` per dtype.  Each gradient becomes a view into its bucket (PyTorch's
``gradient_as_bucket_view``), so a gradient accumulated in place (``zero_grad(set_to_none=
False)``) already lies in the bucket and is not copied; a freshly allocated one is copied in
once.  A parameter without a gradient on a rank contributes zeros (every rank must join each
all-reduce), and afterwards has the averaged gradient.
"""
from __future__ import annotations

from .. import backend as B


def broadcast_parameters(model, comm, root: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``root``'s (in place): run
    once after building the model, so that all ranks start from the same weights."""
    for p in model.parameters():
        comm.bcast_(p.data, root)
    for b in model.buffers():
        comm.bcast_(b, root)


class _Bucket:
    """One flat buffer and the parameters whose gradients it holds."""

    def __init__(self, params, dtype):
        self.params = params
        xp = B.get().xp
        self.flat = xp.empty(sum(p.data.size for p in params), dtype=dtype)
        self.views, offset = [], 0
        for p in params:
            n = p.data.size
            self.views.append(self.flat[offset:offset + n].reshape(p.data.shape))
            offset += n

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)

    def gather(self) -> None:
        for p, view in zip(self.params, self.views):
            if p.grad is None:
                view[...] = 0
            elif p.grad is not view:
                view[...] = p.grad
            p.grad = view


class DistributedDataParallel:
    """``model`` trained data-parallel over ``comm`` (a
    :class:`~nnx.distributed.Communicator`).

    Construction broadcasts rank 0's parameters and buffers.  Call the wrapper as the
    model; :meth:`backward` runs the model's backward and then averages the gradients
    (:meth:`sync_gradients`, which a custom loop may also call itself).  ``bucket_mb``:
    the most bytes of one bucket (PyTorch's ``bucket_cap_mb``)."""

    def __init__(self, model, comm, bucket_mb: float = 25.0, broadcast: bool = True):
        self.module, self.comm = model, comm
        self.bucket_bytes = max(1, int(bucket_mb * 2 ** 20))
        if broadcast:
            broadcast_parameters(model, comm)
        self.buckets = self._make_buckets()

    def _make_buckets(self):
        buckets, current, size, dtype = [], [], 0, None
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            nbytes = p.data.size * p.data.dtype.itemsize
            if current and (p.data.dtype != dtype or size + nbytes > self.bucket_bytes):
                buckets.append(_Bucket(current, dtype))
                current, size = [], 0
            current.append(p)
            size += nbytes
            dtype = p.data.dtype
        if current:
            buckets.append(_Bucket(current, dtype))
        return buckets

    @property
    def bytes_per_step(self) -> int:
        """Bytes all-reduced by one :meth:`sync_gradients` (every rank's buffer size)."""
        return sum(b.nbytes for b in self.buckets)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, *grads, **kwargs):
        out = self.module.backward(*grads, **kwargs)
        self.sync_gradients()
        return out

    def sync_gradients(self) -> None:
        """Average every gradient over the ranks: one in-place all-reduce per bucket."""
        if self.comm.size == 1:
            return
        scale = 1.0 / self.comm.size
        for bucket in self.buckets:
            bucket.gather()
            self.comm.allreduce_(bucket.flat)
            bucket.flat *= bucket.flat.dtype.type(scale)

    def __getattr__(self, name):
        # train(), eval(), parameters(), state_dict() ... are the model's
        return getattr(self.__dict__["module"], name)
