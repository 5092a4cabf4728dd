"""The backend interface every array backend implements.

Layers, losses and optimizers are written once against this interface: they get array math
from ``backend.xp`` (numpy or cupy) and call the fused operations below for the hot paths.
The NumPy backend (``numpy_backend.py``) is the reference implementation of every method;
other backends must match it to float32 tolerance (the test suite checks that).

Conventions shared by all backends
----------------------------------
* Images are NCHW.  Convolution weights are ``(O, C/groups, KH, KW)``.
* ``im2col`` column layout: ``cols`` has shape ``(C*KH*KW, N*OH*OW)``; row index
  ``(c*KH + i)*KW + j`` and column index ``(n*OH + oh)*OW + ow``, so that
  ``weight.reshape(O, -1) @ cols`` is the convolution for ``groups == 1`` and group ``g`` uses
  rows ``g*Cg*KH*KW : (g+1)*Cg*KH*KW``.  Output size per axis:
  ``OH = (H + 2*ph - dh*(KH-1) - 1)//sh + 1``.
* Pooling forward returns what its backward needs as an opaque object (each backend may save
  what suits it, e.g. argmax indices); callers pass it back unchanged.
* Recurrent cells follow PyTorch's gate order: LSTM (i, f, g, o), GRU (r, z, n) with the reset
  gate applied to ``W_hn h + b_hn``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod


class Backend(ABC):
    """Abstract array backend.  See the module docstring for shared conventions."""

    name: str = "abstract"
    xp = None  # the array module: numpy or cupy

    # ---------------------------------------------------------------- arrays and transfers
    @abstractmethod
    def asarray(self, x, dtype=None):
        """Return ``x`` as an array of this backend (copying from host/device as needed)."""

    @abstractmethod
    def to_numpy(self, x):
        """Return a NumPy array with the values of ``x`` (a host copy for device arrays)."""

    @abstractmethod
    def is_native(self, x) -> bool:
        """True when ``x`` is an array that lives on this backend."""

    def synchronize(self) -> None:
        """Block until all queued work is done (no-op on the CPU)."""

    # ---------------------------------------------------------------- random numbers
    @abstractmethod
    def manual_seed(self, seed: int) -> None:
        """Seed this backend's generator (used for dropout masks and augmentation)."""

    @abstractmethod
    def random(self, shape, dtype="float32"):
        """Uniform [0, 1) samples of ``shape`` on this backend."""

    @abstractmethod
    def randint(self, low: int, high: int, shape):
        """Integer samples in [low, high) of ``shape`` on this backend (int64)."""

    @abstractmethod
    def rng_state(self):
        """The generator's state as JSON-able data (checkpoints store it for exact resume)."""

    @abstractmethod
    def set_rng_state(self, state) -> None:
        """Restore a state returned by :meth:`rng_state`."""

    # ---------------------------------------------------------------- element-wise fused ops
    @abstractmethod
    def tanh_backward(self, y, gy):
        """``gx = gy * (1 - y*y)`` where ``y = tanh(x)``, in one pass."""

    @abstractmethod
    def relu(self, x):
        """``max(x, 0)``."""

    @abstractmethod
    def bias_relu(self, x, b):
        """``max(x + b, 0)`` with ``b`` of shape ``(C,)`` broadcast along axis 1 of ``x``."""

    @abstractmethod
    def relu_backward(self, y, gy):
        """``gx = gy * [y > 0]`` where ``y = relu(x)``."""

    # ---------------------------------------------------------------- Linear/Conv2d + ReLU
    #: True where Linear/Conv2d + ReLU fused (``conv2d_forward(relu=True)``, ``bias_relu``,
    #: :meth:`bias_grad`) saves launches; ``Sequential`` then fuses such pairs.  The NumPy
    #: backend keeps the separate passes (the arithmetic is the same, nothing to gain).
    fuses_bias_relu = False

    def bias_grad(self, dy, y=None, has_bias=True, transpose=False):
        """For ``dy (N, C, *inner)``: ``d = dy ⊙ [y > 0]`` (``d = dy`` when ``y`` is None)
        and ``db[c] = Σ_{n, inner} d[n, c, inner]`` (None unless ``has_bias``).  Returns
        ``(d, db)``; ``d`` has ``dy``'s shape, or is ``(C, N·inner)`` C-contiguous when
        ``transpose`` (the convolution GEMM's layout).  Generic version: separate passes."""
        xp = self.xp
        d = dy if y is None else self.relu_backward(y, dy)
        if transpose:
            d = xp.ascontiguousarray(xp.moveaxis(d, 1, 0)).reshape(d.shape[1], -1)
            return d, (d.sum(axis=1) if has_bias else None)
        axes = (0,) + tuple(range(2, d.ndim))
        return d, (d.sum(axis=axes) if has_bias else None)

    # ---------------------------------------------------------------- losses
    @abstractmethod
    def softmax_cross_entropy_forward(self, logits, labels, label_smoothing=0.0):
        """Per-row loss of a softmax over the last axis of ``logits`` ``(N, C)``.

        ``loss_n = -sum_c q_nc * log softmax(z_n)_c`` with ``q = (1-s)*onehot(labels) + s/C``.
        Computed stably (max subtraction, log-sum-exp) with float32-or-wider accumulation.
        ``labels`` are integers in [0, C).  Returns ``(N,)`` in the dtype of ``logits``.
        """

    @abstractmethod
    def softmax_cross_entropy_backward(self, logits, labels, label_smoothing, row_scale):
        """``d loss / d logits = row_scale[:, None] * (softmax(z) - q)`` in one pass.

        ``row_scale`` is ``(N,)``: the upstream gradient of each row's loss (``1/N`` for a mean,
        ``0`` for masked rows).
        """

    # ---------------------------------------------------------------- convolution and pooling
    @abstractmethod
    def im2col(self, x, kernel, stride, padding, dilation):
        """``x (N,C,H,W)`` -> ``cols (C*KH*KW, N*OH*OW)``.  All geometry args are 2-tuples."""

    @abstractmethod
    def col2im(self, cols, x_shape, kernel, stride, padding, dilation):
        """Adjoint of :meth:`im2col`: sums column entries back into an ``x_shape`` array."""

    def conv2d_forward(self, x, w, bias, stride, padding, dilation, groups=1, relu=False):
        """Convolution ``y (N,O,OH,OW)`` of ``x (N,C,H,W)`` with ``w (O,C/g,KH,KW)`` (+ bias);
        returns ``(y, saved)``, ``saved`` opaque, for :meth:`conv2d_backward`.  Generic
        version: :meth:`im2col` + :meth:`conv2d_gemm_forward`; backends may compute it
        another way (the NumPy backend's C kernels convolve directly).  ``relu=True``
        returns ``max(y, 0)`` instead (see :attr:`fuses_bias_relu`)."""
        n, _, h, wd = x.shape
        o, _, kh, kw = w.shape
        oh = out_size(h, kh, stride[0], padding[0], dilation[0])
        ow = out_size(wd, kw, stride[1], padding[1], dilation[1])
        cols = self.im2col(x, (kh, kw), stride, padding, dilation)
        y = self.conv2d_gemm_forward(w.reshape(o, -1), cols, bias, n, oh, ow, groups, relu)
        return y, ("im2col", cols, tuple(x.shape))

    def conv2d_backward(self, dy, saved, w, has_bias, need_dx, stride, padding, dilation,
                        groups=1, relu_y=None):
        """Gradients of :meth:`conv2d_forward` for ``δ = dy``: ``(dx or None, dW (shape of
        w), db (O,) or None)`` with ``dW = D @ colsᵀ``, ``db = Σ δ``, ``dx = col2im(Wᵀ @ D)``
        per group.  ``need_dx=False`` skips ``dx`` (a first layer).  ``relu_y``: the output
        of a ``relu=True`` forward; then ``δ = dy ⊙ [relu_y > 0]``."""
        _, cols, x_shape = saved
        o, _, kh, kw = w.shape
        dw, db, dcols = self.conv2d_gemm_backward(w.reshape(o, -1), cols, dy, has_bias,
                                                  need_dx, groups, relu_y)
        dx = (self.col2im(dcols, x_shape, (kh, kw), stride, padding, dilation)
              if need_dx else None)
        return dx, dw.reshape(w.shape), db

    def conv2d_gemm_forward(self, w2, cols, bias, n, oh, ow, groups=1, relu=False):
        """``y (N,O,OH,OW) = w2_g (O/g, K/g) @ cols_g (K/g, N·OH·OW) (+ bias)`` for each group
        ``g`` — the GEMM stage of a convolution (``K = C·KH·KW``), then ``max(y, 0)`` when
        ``relu``.  Generic version; backends may override it."""
        xp = self.xp
        o = w2.shape[0]
        y = _grouped_matmul(xp, w2, cols, groups).reshape(o, n, oh, ow)
        out = xp.empty((n, o, oh, ow), dtype=cols.dtype)
        if bias is not None:
            xp.add(y.transpose(1, 0, 2, 3), bias.reshape(1, o, 1, 1), out=out)
        else:
            out[...] = y.transpose(1, 0, 2, 3)
        if relu:
            xp.maximum(out, 0, out=out)
        return out

    def conv2d_gemm_backward(self, w2, cols, dy, has_bias, need_dx, groups=1, relu_y=None):
        """Gradients of :meth:`conv2d_gemm_forward` for ``δ = dy (N,O,OH,OW)`` (times
        ``[relu_y > 0]`` after a ``relu=True`` forward): returns
        ``(dW (O,K/g), db (O,) or None, dcols (K, N·OH·OW) or None)``."""
        xp = self.xp
        if relu_y is not None:
            dy = self.relu_backward(relu_y, dy)
        o = w2.shape[0]
        d2 = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, -1)  # one copy
        db = d2.sum(axis=1) if has_bias else None
        if groups == 1:
            dw = (cols @ d2.T).T  # OpenBLAS runs this orientation ~1.5x faster than d2 @ colsᵀ
        else:
            og, kg = o // groups, cols.shape[0] // groups
            dw = xp.empty_like(w2)
            for k in range(groups):
                xp.matmul(d2[k * og:(k + 1) * og], cols[k * kg:(k + 1) * kg].T,
                          out=dw[k * og:(k + 1) * og])
        dcols = _grouped_matmul(xp, w2, d2, groups, a_t=True) if need_dx else None
        return dw, db, dcols

    @abstractmethod
    def maxpool2d_forward(self, x, kernel, stride, padding):
        """Max pooling (padding counts as -inf).  Returns ``(y, saved)``."""

    @abstractmethod
    def maxpool2d_backward(self, gy, saved, x_shape, kernel, stride, padding):
        """Gradient of max pooling: each window's ``gy`` goes to its (first) arg-max."""

    @abstractmethod
    def avgpool2d_forward(self, x, kernel, stride, padding, count_include_pad=True):
        """Average pooling with PyTorch's semantics for padding and ``count_include_pad``."""

    @abstractmethod
    def avgpool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad=True):
        """Gradient of :meth:`avgpool2d_forward`."""

    # ---------------------------------------------------------------- batch normalisation
    # (issue 17) reference versions in array math; the NumPy backend has C kernels
    def add(self, a, b):
        """``a + b`` as a new array (the tape sums the gradients an array receives from
        several uses with it)."""
        return a + b

    #: True where BatchNorm + ReLU run as one call each way (``batchnorm_forward(relu=True)``,
    #: ``batchnorm_backward(relu_y=...)``) and save a pass; ``Sequential`` then fuses such
    #: pairs.  The generic versions below compose the two, so every backend accepts the
    #: arguments.
    fuses_batchnorm_relu = False

    def batchnorm_forward(self, x, weight, bias, mean=None, var=None, eps=1e-5, relu=False):
        """Batch norm of ``x (N, C, *)`` over every axis but 1; returns ``(y, mean, var,
        saved)``, ``saved`` opaque for :meth:`batchnorm_backward`::

            mean is None (training):  μ = mean(x),  σ² = mean((x - μ)²)   (biased; returned)
            else (eval):              μ, σ² = mean, var                  (running statistics)
            x̂ = (x - μ)/√(σ² + ε),    y = γ·x̂ + β        (γ = 1, β = 0 when weight is None)
            relu=True:                y = max(γ·x̂ + β, 0)  (a following ReLU, fused)

        Running statistics are the caller's (the layer owns momentum)."""
        xp = self.xp
        axes, bshape = _bn_axes(x)
        if mean is None:
            mean = x.mean(axis=axes, dtype=x.dtype)
            xc = x - mean.reshape(bshape)
            var = (xc * xc).mean(axis=axes, dtype=x.dtype)
        else:
            xc = x - mean.reshape(bshape)
        inv_std = 1.0 / xp.sqrt(var + x.dtype.type(eps))
        xhat = xc * inv_std.reshape(bshape)
        y = xhat if weight is None else xhat * weight.reshape(bshape) + bias.reshape(bshape)
        if relu:
            y = self.relu(y)
        return y, mean, var, ("xhat", xhat, inv_std)

    def batchnorm_backward(self, dy, saved, weight, use_batch, need_dx=True, relu_y=None):
        """Gradients of :meth:`batchnorm_forward` for ``g = dy``: ``(dx or None, dγ, dβ)``
        with ``s = 1/√(σ² + ε)`` and ``m`` values per channel::

            dγ = Σ g·x̂,   dβ = Σ g      (returned also without affine parameters)
            use_batch (μ, σ² from x):  dx = (γ·s/m)·(m·g - Σ g - x̂·Σ g·x̂)
            else (constants):          dx = γ·s·g

        ``relu_y``: the output ``y`` of a ``relu=True`` forward; then ``g = dy·[y > 0]``.
        """
        if relu_y is not None:
            dy = self.relu_backward(relu_y, dy)
        _, xhat, inv_std = saved
        axes, bshape = _bn_axes(dy)
        m = dy.size // dy.shape[1]
        sum_g = dy.sum(axis=axes)
        sum_gx = (dy * xhat).sum(axis=axes)
        if not need_dx:
            return None, sum_gx, sum_g
        scale = inv_std if weight is None else weight * inv_std
        if not use_batch:
            return dy * scale.reshape(bshape), sum_gx, sum_g
        dx = dy * dy.dtype.type(m) - sum_g.reshape(bshape) - xhat * sum_gx.reshape(bshape)
        dx *= (scale / dy.dtype.type(m)).reshape(bshape)
        return dx, sum_gx, sum_g

    def add_relu(self, a, b):
        """``max(a + b, 0)`` for ``a``, ``b`` of one shape (a residual block's output), in
        one output buffer; its gradient is :meth:`relu_backward` of the result."""
        xp = self.xp
        out = xp.add(a, b)
        return xp.maximum(out, 0, out=out)

    # ---------------------------------------------------------------- recurrent cells
    @abstractmethod
    def lstm_cell_forward(self, gates, c_prev):
        """``gates (N,4H)`` are the pre-activations ``x W_ih^T + b_ih + h W_hh^T + b_hh``.

        ``i,f,o = sigmoid``, ``g = tanh``; ``c = f*c_prev + i*g``; ``h = o*tanh(c)``.
        Returns ``(h, c, saved)``.
        """

    @abstractmethod
    def lstm_cell_backward(self, dh, dc, saved):
        """Given ``dL/dh`` and ``dL/dc`` (from later steps), return ``(dgates, dc_prev)``."""

    @abstractmethod
    def gru_cell_forward(self, gi, gh, h_prev):
        """``gi = x W_ih^T + b_ih``, ``gh = h_prev W_hh^T + b_hh``, both ``(N,3H)`` as (r,z,n).

        ``r = sigmoid(gi_r + gh_r)``, ``z = sigmoid(gi_z + gh_z)``,
        ``n = tanh(gi_n + r*gh_n)``, ``h = (1-z)*n + z*h_prev``.  Returns ``(h, saved)``.
        """

    @abstractmethod
    def gru_cell_backward(self, dh, saved):
        """Return ``(dgi, dgh, dh_prev)``; ``dh_prev`` is only the direct ``z*h`` path —
        the caller adds ``dgh @ W_hh``."""

    # ---------------------------------------------------------------- optimizer updates
    @abstractmethod
    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        """SGD update of ``param`` in place (``buf`` updated in place, may be None when
        ``momentum == 0``), PyTorch's rule::

            g = grad + weight_decay * param
            buf = g if first_step else momentum*buf + (1-dampening)*g
            d = g + momentum*buf if nesterov else buf          (d = g when momentum == 0)
            param -= lr * d

        ``first_step`` is PyTorch's "no buffer yet" case (``buf``'s old contents are not
        read).  The seeds' EMA form ``buf = momentum*buf + (1-momentum)*g`` from ``buf = 0``
        is ``dampening=momentum`` with ``first_step=False`` on a zeroed buffer.
        """

    @abstractmethod
    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        """Adam (``decoupled=False``: L2 added to the gradient) or AdamW (decoupled decay
        ``param *= 1 - lr*weight_decay``) in place; ``step`` counts from 1::

            m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
            param -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
        """

    # ---------------------------------------------------------------- cross-entropy loss, fused
    @abstractmethod
    def cross_entropy_loss_forward(self, logits, labels, label_smoothing, ignore_index,
                                   reduction, status):
        """Softmax cross-entropy of ``logits (N, C)`` and int64 ``labels (N,)`` with PyTorch's
        ``ignore_index`` and ``reduction``, reduced on the device (no host read)::

            loss_n = softmax_cross_entropy_forward(z, y, s)_n   (0 if y_n == ignore_index;
                                                                  NaN if y_n is outside [0, C))
            count  = #{n : y_n != ignore_index}
            mean: sum_n loss_n / max(count, 1)     sum: sum_n loss_n     none: loss (N,)

        Returns ``(out, count)``: ``out`` a 0-d array (or ``(N,)`` for ``"none"``), ``count``
        opaque (pass it to :meth:`cross_entropy_loss_backward` for a mean).  Labels outside
        ``[0, C)`` that are not ignored are recorded in ``status`` (a ``(2,)`` int64 array of
        this backend, updated in place and sticky): ``status[0] += `` their number and, when
        ``status[0]`` was 0, ``status[1] = `` the first of them (lowest row)."""

    @abstractmethod
    def cross_entropy_loss_backward(self, logits, labels, label_smoothing, ignore_index,
                                    upstream, count):
        """``dL/dz = scale_n * (softmax(z_n) - q_n)`` for the loss of
        :meth:`cross_entropy_loss_forward`: ``scale_n = upstream_n / max(count, 1)`` (``count``
        is ``None`` except for a mean), 0 on ignored rows, NaN on rows whose label is outside
        ``[0, C)``.  ``upstream`` is a scalar of the logits' dtype or an array (one value per
        row for ``"none"``)."""

    # ---------------------------------------------------------------- trainer bookkeeping
    def step_metrics_add(self, loss_sum, correct, loss, n, logits, labels):
        """The trainer's running sums after one step, without a host read::

            loss_sum + loss * n,   correct + #{r : argmax(logits[r]) == labels[r]}

        ``loss_sum``/``correct`` are what the previous call returned (host numbers at the
        start).  Generic version: array operations (NumPy: the exact arithmetic the trainer
        always used); the CUDA backend fuses them into one launch."""
        return loss_sum + loss * n, correct + (logits.argmax(axis=1) == labels).sum()


def out_size(size, k, s, p, d=1):
    """Output length of a convolution or pooling axis:
    ``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _bn_axes(x):
    """Reduction axes (all but 1) and the broadcast shape of a per-channel vector."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def _grouped_matmul(xp, a, b, groups, a_t=False):
    """``out_g = A_g @ B_g`` (``A_gᵀ @ B_g`` with ``a_t``) for row blocks ``A_g``, ``B_g`` of
    ``a`` and ``b`` split into ``groups`` equal parts; the outputs are stacked by rows."""
    ra, rb = a.shape[0] // groups, b.shape[0] // groups
    ro = a.shape[1] if a_t else ra
    out = xp.empty((ro * groups, b.shape[1]), dtype=b.dtype)
    for k in range(groups):
        ak = a[k * ra:(k + 1) * ra]
        xp.matmul(ak.T if a_t else ak, b[k * rb:(k + 1) * rb], out=out[k * ro:(k + 1) * ro])
    return out
