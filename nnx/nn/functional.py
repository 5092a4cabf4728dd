r"""Differentiable functions for the ``forward`` of a composite model (PyTorch's names).

Inside the ``forward`` of a module without a hand-written ``backward``, combine layer
outputs with these instead of plain array arithmetic: each call is recorded on the
module's tape (see :mod:`nnx.nn.tape`) and its backward runs when the module's does.
Called anywhere else they just compute.  Arguments are arrays of the active backend (a
:class:`~nnx.nn.Parameter` is accepted too and receives its gradient); results are plain
arrays.  With ``δ = dL/dy`` the backward of each is::

    add(a, b)    = a + b          da = Σ_bcast δ        db = Σ_bcast δ
    sub(a, b)    = a - b          da = Σ_bcast δ        db = -Σ_bcast δ
    mul(a, b)    = a ⊙ b          da = Σ_bcast δ ⊙ b    db = Σ_bcast δ ⊙ a
    div(a, b)    = a / b          da = Σ_bcast δ / b    db = -Σ_bcast δ ⊙ a / b²
    matmul(a, b) = a @ b          da = δ @ bᵀ           db = aᵀ @ δ   (batch axes summed
                                                                      where broadcast)
    linear(x, W, b) = x Wᵀ + b    dx = δ W   dW = Σ_rows δᵀ x   db = Σ_rows δ
    cat(xs, dim), stack(xs, dim)  dx_k = the k-th piece of δ along dim
    split, chunk, narrow, select  dx = the pieces' δ put back in place (zeros elsewhere)
    clone(x) = a copy of x        dx = δ
    reshape, flatten, transpose, permute    dx = δ reshaped / axes moved back
    sum(x, dim), mean(x, dim)     dx = δ broadcast back over the reduced axes (÷ n)
    relu, leaky_relu, tanh, sigmoid, softmax, log_softmax, gelu, dropout: one call of the
        layer of that name (equations in its docstring)
    layer_norm(x, shape, W, b)    LayerNorm's equations; dW, db as its parameters'
    embedding(idx, W)             y = W[idx]   dW = scatter-add of δ into the chosen rows

``Σ_bcast`` sums over the axes along which the argument was broadcast, so the gradient
has the argument's shape.  Non-array arguments (Python numbers) receive no gradient.
"""
from __future__ import annotations

import builtins

from .. import backend as B
from .activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .dropout import Dropout
from .embedding import check_indices, embedding_backward
from .inputs import as_array, as_input, check_float, pair  # noqa: F401 (public helpers)
from .normalization import layer_norm_backward, layer_norm_forward
from .parameter import Parameter
from .tape import Context, _state


class Function:
    """A differentiable operation: ``forward(ctx, *args) -> y`` saves what it needs in
    ``ctx``; ``backward(ctx, *dys)`` returns the gradient of each positional argument (a
    tuple when there are several; ``None`` for arguments without one).  ``apply`` runs
    forward and records the call when a composite's tape is active."""

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args):
        st = _state
        tape = st.tape if st.grad_enabled else None
        ctx = Context()
        out = cls.forward(ctx, *[_data(a) for a in args])
        if tape is not None:
            tape.record(cls, ctx, args, out)
        return out


def _data(a):
    if type(a) is Parameter:
        return a.data
    if type(a) in (list, tuple):
        return type(a)(_data(x) for x in a)
    return a


def _shape(a):
    return getattr(a, "shape", None) if hasattr(a, "dtype") else None


def _unbroadcast(g, shape):
    """Sum ``g`` over the axes along which an argument of ``shape`` was broadcast."""
    if shape is None:
        return None                      # a Python number: no gradient
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes).reshape(shape)


# ---------------------------------------------------------------------- arithmetic
class _Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = _shape(a), _shape(b)
        return a + b

    @staticmethod
    def backward(ctx, dy):
        sa, sb = ctx.shapes
        return _unbroadcast(dy, sa), _unbroadcast(dy, sb)


class _Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = _shape(a), _shape(b)
        return a - b

    @staticmethod
    def backward(ctx, dy):
        sa, sb = ctx.shapes
        return _unbroadcast(dy, sa), (None if sb is None else _unbroadcast(-dy, sb))


class _Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.a, ctx.b
        sa, sb = _shape(a), _shape(b)
        return (None if sa is None else _unbroadcast(dy * b, sa),
                None if sb is None else _unbroadcast(dy * a, sb))


class _Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a / b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.a, ctx.b
        da = dy / b
        db = None if _shape(b) is None else _unbroadcast(-da * a / b, b.shape)
        return _unbroadcast(da, _shape(a)), db


def add(input, other):
    """``input + other`` (broadcasting)."""
    return _Add.apply(input, other)


def sub(input, other):
    """``input - other`` (broadcasting)."""
    return _Sub.apply(input, other)


def mul(input, other):
    """``input ⊙ other`` (broadcasting)."""
    return _Mul.apply(input, other)


def div(input, other):
    """``input / other`` (broadcasting)."""
    return _Div.apply(input, other)


class _Matmul(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul expects arrays with at least 2 dimensions, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        ctx.a, ctx.b = a, b
        return a @ b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.a, ctx.b
        xp = B.get().xp
        return (_unbroadcast(dy @ xp.swapaxes(b, -1, -2), a.shape),
                _unbroadcast(xp.swapaxes(a, -1, -2) @ dy, b.shape))


def matmul(input, other):
    """Matrix product of the last two axes (leading axes broadcast), both at least 2-D."""
    return _Matmul.apply(input, other)


class _Linear(Function):
    @staticmethod
    def forward(ctx, x, w, b=None):
        ctx.x, ctx.w, ctx.has_bias = x, w, b is not None
        y = x @ w.T
        if b is not None:
            y += b
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.x, ctx.w
        d2 = dy.reshape(-1, w.shape[0])
        dw = d2.T @ x.reshape(-1, w.shape[1])
        db = d2.sum(axis=0) if ctx.has_bias else None
        return (d2 @ w).reshape(x.shape), dw, db


def linear(input, weight, bias=None):
    """``input @ weightᵀ + bias`` over the last axis (``weight`` is ``(out, in)``)."""
    return _Linear.apply(input, weight, bias)


# ---------------------------------------------------------------------- joining, slicing
class _Cat(Function):
    @staticmethod
    def forward(ctx, xs, dim):
        ctx.sizes, ctx.dim = [x.shape[dim] for x in xs], dim
        return B.get().xp.concatenate(xs, axis=dim)

    @staticmethod
    def backward(ctx, dy):
        return _pieces(dy, ctx.sizes, ctx.dim), None


class _Stack(Function):
    @staticmethod
    def forward(ctx, xs, dim):
        ctx.n, ctx.dim = len(xs), dim
        return B.get().xp.stack(xs, axis=dim)

    @staticmethod
    def backward(ctx, dy):
        xp = B.get().xp
        return tuple(xp.take(dy, i, axis=ctx.dim) for i in range(ctx.n)), None


def _pieces(a, sizes, dim):
    """``a`` cut along ``dim`` into consecutive pieces of ``sizes`` (views)."""
    xp = B.get().xp
    bounds = list(_cumsum(sizes))[:-1]
    return tuple(xp.split(a, bounds, axis=dim))


def _cumsum(sizes):
    total = 0
    for n in sizes:
        total += n
        yield total


def cat(tensors, dim=0):
    """Concatenate arrays along an existing axis ``dim`` (PyTorch's ``torch.cat``)."""
    return _Cat.apply(tuple(tensors), dim)


def stack(tensors, dim=0):
    """Stack equally shaped arrays along a new axis ``dim``."""
    return _Stack.apply(tuple(tensors), dim)


class _Split(Function):
    @staticmethod
    def forward(ctx, x, sizes, dim):
        if builtins.sum(sizes) != x.shape[dim]:
            raise ValueError(f"split: sizes {list(sizes)} do not add up to {x.shape[dim]}, "
                             f"the size of dimension {dim} of {tuple(x.shape)}")
        ctx.shape, ctx.dtype, ctx.sizes, ctx.dim = x.shape, x.dtype, sizes, dim
        return _pieces(x, sizes, dim)

    @staticmethod
    def backward(ctx, *dys):
        xp = B.get().xp
        parts = []
        for g, n in zip(dys, ctx.sizes):   # outputs without gradient contribute zeros
            if g is None:
                shape = list(ctx.shape)
                shape[ctx.dim] = n
                g = xp.zeros(shape, dtype=ctx.dtype)
            parts.append(g)
        return xp.concatenate(parts, axis=ctx.dim), None, None


def split(tensor, split_size_or_sections, dim=0):
    """Pieces of ``tensor`` along ``dim``: of size ``split_size_or_sections`` each (the last
    may be smaller) when it is an int, else of the listed sizes (PyTorch's semantics)."""
    n = tensor.shape[dim]
    if isinstance(split_size_or_sections, int):
        k = split_size_or_sections
        if k < 1:
            raise ValueError(f"split: split_size must be positive, got {k}")
        sizes = [k] * (n // k) + ([n % k] if n % k else [])
    else:
        sizes = [int(s) for s in split_size_or_sections]
    return _Split.apply(tensor, tuple(sizes), dim)


def chunk(input, chunks, dim=0):
    """``chunks`` pieces along ``dim`` of size ``ceil(n / chunks)`` (the last may be
    smaller; fewer pieces when ``n`` is small), as PyTorch's ``torch.chunk``."""
    n = input.shape[dim]
    size = max(-(-n // int(chunks)), 1)
    return split(input, size, dim)


class _Index(Function):
    """``x[key]`` for a basic index (ints and slices); ``dx`` scatters ``δ`` back."""

    @staticmethod
    def forward(ctx, x, key):
        ctx.shape, ctx.dtype, ctx.key = x.shape, x.dtype, key
        return x[key]

    @staticmethod
    def backward(ctx, dy):
        dx = B.get().xp.zeros(ctx.shape, dtype=ctx.dtype)
        dx[ctx.key] = dy
        return dx, None


def _axis_key(ndim, dim, index):
    return (slice(None),) * (dim % ndim) + (index,)


def narrow(input, dim, start, length):
    """``input`` restricted to ``start <= i < start + length`` along ``dim`` (a view)."""
    return _Index.apply(input, _axis_key(input.ndim, dim, slice(start, start + length)))


def select(input, dim, index):
    """``input`` at position ``index`` of ``dim``, which is removed (``x[:, i]`` for
    ``dim=1``)."""
    return _Index.apply(input, _axis_key(input.ndim, dim, index))


# ---------------------------------------------------------------------- shapes
class _Clone(Function):
    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, dy):
        return dy


def clone(input):
    """A copy of ``input`` (e.g. before a layer that works in place)."""
    return _Clone.apply(input)


class _Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        return dy.reshape(ctx.shape), None


def reshape(input, shape):
    """``input`` with a new shape (one entry may be -1)."""
    return _Reshape.apply(input, tuple(shape))


def flatten(input, start_dim=0, end_dim=-1):
    """Merge axes ``start_dim..end_dim`` into one (PyTorch's ``torch.flatten``)."""
    nd = input.ndim
    s, e = start_dim % max(nd, 1), end_dim % max(nd, 1)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for shape {tuple(input.shape)}")
    shape = input.shape
    return reshape(input, shape[:s] + (-1,) + shape[e + 1:]) if nd else reshape(input, (1,))


class _Permute(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return x.transpose(dims)

    @staticmethod
    def backward(ctx, dy):
        inverse = [0] * len(ctx.dims)
        for i, d in enumerate(ctx.dims):
            inverse[d] = i
        return dy.transpose(inverse), None


def permute(input, dims):
    """Axes reordered: output axis ``i`` is input axis ``dims[i]`` (a view)."""
    return _Permute.apply(input, tuple(d % input.ndim for d in dims))


def transpose(input, dim0, dim1):
    """Axes ``dim0`` and ``dim1`` swapped (a view; PyTorch's ``torch.transpose``)."""
    dims = list(range(input.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(input, dims)


# ---------------------------------------------------------------------- reductions
class _Sum(Function):
    @staticmethod
    def forward(ctx, x, dim, keepdim, mean):
        axes = tuple(range(x.ndim)) if dim is None else tuple(d % x.ndim for d in dim)
        ctx.shape, ctx.axes, ctx.keepdim = x.shape, axes, keepdim
        ctx.scale = 1
        for a in axes:
            ctx.scale *= x.shape[a]
        xp = B.get().xp                  # (0-d arrays, not NumPy scalars, for full sums)
        if mean:
            return xp.asarray(x.mean(axis=axes, keepdims=keepdim, dtype=x.dtype))
        ctx.scale = 1
        return xp.asarray(x.sum(axis=axes, keepdims=keepdim, dtype=x.dtype))

    @staticmethod
    def backward(ctx, dy):
        xp = B.get().xp
        if not ctx.keepdim:
            dy = xp.expand_dims(dy, ctx.axes)
        if ctx.scale != 1:
            dy = dy / dy.dtype.type(ctx.scale)
        return xp.broadcast_to(dy, ctx.shape).copy(), None, None, None


def _dims(dim):
    return None if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))


def sum(input, dim=None, keepdim=False):
    """Sum over ``dim`` (an int, a tuple, or all axes)."""
    return _Sum.apply(input, _dims(dim), keepdim, False)


def mean(input, dim=None, keepdim=False):
    """Mean over ``dim`` (an int, a tuple, or all axes)."""
    return _Sum.apply(input, _dims(dim), keepdim, True)


# ---------------------------------------------------------------------- activations
# A fresh layer per call: the layer's own forward and backward (equations in its
# docstring), recorded as one node; calls own their state, so nothing is shared.
def relu(input):
    """``max(x, 0)`` (:class:`~nnx.nn.ReLU`)."""
    return ReLU()(input)


def leaky_relu(input, negative_slope=0.01):
    """``x if x > 0 else negative_slope·x`` (:class:`~nnx.nn.LeakyReLU`)."""
    return LeakyReLU(negative_slope)(input)


def tanh(input):
    """:class:`~nnx.nn.Tanh`."""
    return Tanh()(input)


def sigmoid(input):
    """``1 / (1 + e^{-x})``, computed without overflow (:class:`~nnx.nn.Sigmoid`)."""
    return Sigmoid()(input)


def softmax(input, dim=None):
    """:class:`~nnx.nn.Softmax` along ``dim`` (``None``: PyTorch's implicit choice, with its
    warning)."""
    return Softmax(dim)(input)


def dropout(input, p=0.5, training=True):
    """Inverted dropout with a fresh mask for this call (:class:`~nnx.nn.Dropout`); the
    identity when not ``training`` or ``p == 0``."""
    return Dropout(p).train(training)(input)


def log_softmax(input, dim=None):
    """``x - logsumexp(x)`` along ``dim`` (:class:`~nnx.nn.LogSoftmax`; ``None``: as
    :func:`softmax`)."""
    return LogSoftmax(dim)(input)


def gelu(input, approximate="none"):
    """``x Φ(x)`` (or its tanh approximation) (:class:`~nnx.nn.GELU`)."""
    return GELU(approximate)(input)


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, axes, eps, w=None, b=None):
        ctx.axes, ctx.w, ctx.has_bias = axes, w, b is not None
        y, ctx.saved = layer_norm_forward(check_float(x, "layer_norm"), axes, eps, w, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dw, db = layer_norm_backward(dy, ctx.saved, ctx.axes, ctx.w, ctx.has_bias)
        return dx, None, None, dw, db


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """:class:`~nnx.nn.LayerNorm` over the trailing ``normalized_shape`` dimensions with
    the given ``weight`` and ``bias`` (each optional; they receive gradients)."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    d = len(normalized_shape)
    x = _data(input)
    if x.ndim < d or tuple(x.shape[x.ndim - d:]) != tuple(normalized_shape):
        raise ValueError(f"layer_norm: normalized_shape {tuple(normalized_shape)} does not "
                         f"match the last dimensions of the input shape {tuple(x.shape)}")
    return _LayerNorm.apply(input, tuple(range(x.ndim - d, x.ndim)), float(eps), weight, bias)


class _Embedding(Function):
    @staticmethod
    def forward(ctx, idx, w, padding_idx):
        ctx.idx = check_indices(idx, w.shape[0])
        ctx.shape, ctx.padding_idx = w.shape, padding_idx
        return w[ctx.idx]

    @staticmethod
    def backward(ctx, dy):
        return None, embedding_backward(ctx.idx, dy, ctx.shape, ctx.padding_idx), None


def embedding(input, weight, padding_idx=None):
    """``weight[input]`` (:class:`~nnx.nn.Embedding`): the indices get no gradient, ``weight``
    the scatter-added rows of ``δ`` (none for ``padding_idx``)."""
    if padding_idx is not None:
        padding_idx = int(padding_idx) % _data(weight).shape[0]
    return _Embedding.apply(input, weight, padding_idx)


__all__ = ["Function", "add", "sub", "mul", "div", "matmul", "linear", "cat", "stack",
           "split", "chunk", "narrow", "select", "clone", "reshape", "flatten", "transpose",
           "permute", "sum", "mean", "relu", "leaky_relu", "tanh", "sigmoid", "softmax",
           "log_softmax", "dropout", "gelu", "layer_norm", "embedding"]
