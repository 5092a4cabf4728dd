"""A lookup table of learned vectors (PyTorch's Embedding)."""
from __future__ import annotations

from .. import backend as B
from .. import dtypes, init
from .inputs import as_array
from .module import Module
from .parameter import Parameter


class Embedding(Module):
    r"""``y[..., :] = W[idx[...], :]`` for integer indices ``idx`` of any shape and the
    table ``W (num_embeddings, embedding_dim)``; ``y`` has shape ``idx.shape + (D,)``.

    Backward with ``g = dL/dy``: every use of a row adds its gradient (scatter-add)::

        dL/dW[v] = Σ_{positions p with idx[p] = v} g[p]        (0 for v = padding_idx)

    The indices are data: they get no gradient (``backward`` returns ``None``).
    ``padding_idx`` (negative counts from the end, as PyTorch): that row starts at zeros and
    never receives a gradient.  Initialisation: ``W ~ N(0, 1)``, as PyTorch."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError(f"Embedding: num_embeddings and embedding_dim must be positive, "
                             f"got {num_embeddings}, {embedding_dim}")
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is outside "
                                 f"[-{self.num_embeddings}, {self.num_embeddings})")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        xp = B.get().xp
        self.weight = Parameter(xp.empty((self.num_embeddings, self.embedding_dim),
                                         dtype=dtypes.resolve(dtype)))
        init.normal_(self.weight)
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, input):
        self.ctx.idx = idx = check_indices(input, self.num_embeddings)
        return self.weight.data[idx]

    def backward(self, dy):
        self.weight.accumulate(embedding_backward(self.ctx.idx, dy, self.weight.data.shape,
                                                  self.padding_idx))
        return None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"


def check_indices(input, num_embeddings):
    """``input`` as a backend integer array, every entry in ``[0, num_embeddings)``."""
    be = B.get()
    idx = as_array(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"Embedding expects integer indices, got dtype {idx.dtype}")
    outside = (idx < 0) | (idx >= num_embeddings)
    if idx.size and bool(outside.any()):
        bad = int(be.to_numpy(idx[outside])[0])
        raise IndexError(f"Embedding: index {bad} is outside [0, {num_embeddings})")
    return idx


def embedding_backward(idx, dy, weight_shape, padding_idx=None):
    """``dL/dW``: each row of ``dy`` added (scatter-add) into the row its index chose."""
    xp = B.get().xp
    dw = xp.zeros(weight_shape, dtype=dy.dtype)
    xp.add.at(dw, idx.reshape(-1), dy.reshape(-1, weight_shape[1]))
    if padding_idx is not None:
        dw[padding_idx] = 0
    return dw
