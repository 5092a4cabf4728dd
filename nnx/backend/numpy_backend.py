"""The NumPy (CPU) backend: the reference implementation of every backend operation."""
from __future__ import annotations

import numpy as np

from .base import Backend
from . import cpu_batchnorm, cpu_conv, cpu_direct, cpu_elementwise, cpu_memory, cpu_rnn
from .cpu_parallel import parallel_chunks


class NumpyBackend(Backend):
    name = "cpu"
    xp = np

    def __init__(self):
        self._rng = np.random.default_rng(0)
        cpu_memory.keep_freed_memory()   # steps reuse freed activations instead of faulting

    # ---------------------------------------------------------------- arrays
    def asarray(self, x, dtype=None):
        if _is_cupy_array(x):
            from .errors import BackendMismatchError
            raise BackendMismatchError(
                "got a CuPy (GPU) array on the 'cpu' backend; move it with "
                "nnx.backend.get().asarray(x.get()) or switch with nnx.backend.use('cuda')")
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        if _is_cupy_array(x):
            return x.get()
        return np.asarray(x)

    def is_native(self, x) -> bool:
        return isinstance(x, np.ndarray)

    # ---------------------------------------------------------------- random
    def manual_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def random(self, shape, dtype="float32"):
        dt = np.dtype(dtype)
        if dt in (np.float32, np.float64):
            return self._rng.random(shape, dtype=dt)
        return self._rng.random(shape).astype(dt)

    def randint(self, low, high, shape):
        return self._rng.integers(low, high, size=shape, dtype=np.int64)

    def rng_state(self):
        return self._rng.bit_generator.state

    def set_rng_state(self, state):
        self._rng.bit_generator.state = state

    # ---------------------------------------------------------------- element-wise
    def tanh_backward(self, y, gy):
        # one output buffer, no temporaries (3 passes instead of 3 passes + 2 allocations)
        out = np.multiply(y, y, dtype=np.result_type(y.dtype, gy.dtype))
        np.subtract(1, out, out=out)
        if np.broadcast_shapes(out.shape, gy.shape) != out.shape:
            return out * gy
        return np.multiply(out, gy, out=out)

    def add(self, a, b):
        out = cpu_elementwise.add(a, b)
        return a + b if out is None else out

    def relu(self, x):
        out = cpu_elementwise.relu(x)
        if out is not None:
            return out
        if not _splittable(x):
            return np.maximum(x, 0)
        out = np.empty(x.shape, dtype=np.result_type(x, 0))
        _batch_chunks(x, lambda a, b: np.maximum(x[a:b], 0, out=out[a:b]))
        return out

    def bias_relu(self, x, b):
        out = cpu_elementwise.bias_relu(x, b)
        if out is not None:
            return out
        shape = (1, -1) + (1,) * (x.ndim - 2)
        b = b.reshape(shape)
        if not _splittable(x):
            out = x + b
            return np.maximum(out, 0, out=out)
        out = np.empty(x.shape, dtype=np.result_type(x, b))

        def part(i, j):
            np.add(x[i:j], b, out=out[i:j])
            np.maximum(out[i:j], 0, out=out[i:j])

        _batch_chunks(x, part)
        return out

    def relu_backward(self, y, gy):
        out = cpu_elementwise.relu_backward(y, gy)
        if out is not None:
            return out
        if not (_splittable(gy) and y.shape == gy.shape):
            return gy * (y > 0)
        out = np.empty(gy.shape, dtype=np.result_type(gy, np.bool_))
        _batch_chunks(gy, lambda a, b: np.multiply(gy[a:b], y[a:b] > 0, out=out[a:b]))
        return out

    # ---------------------------------------------------------------- losses
    def softmax_cross_entropy_forward(self, logits, labels, label_smoothing=0.0):
        z = logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)
        n, c = z.shape
        m = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]           # log-sum-exp per row
        picked = z[np.arange(n), labels]
        loss = lse - picked                                          # -log p_label
        if label_smoothing:
            # -sum_c (s/C) log p_c = s * (lse - mean_c z_c)
            loss = (1 - label_smoothing) * loss + label_smoothing * (lse - z.mean(axis=1))
        return loss.astype(logits.dtype, copy=False)

    def softmax_cross_entropy_backward(self, logits, labels, label_smoothing, row_scale):
        n, c = logits.shape
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        if label_smoothing:
            p -= label_smoothing / c
        p[np.arange(n), labels] -= 1 - label_smoothing
        p *= np.asarray(row_scale, dtype=p.dtype).reshape(n, 1)
        return p

    # ---------------------------------------------------------------- cross-entropy loss, fused
    # The reference for the CUDA kernels: the array operations CrossEntropyLoss ran before
    # issue 15 (so CPU results are unchanged); host reads are free here.
    def cross_entropy_loss_forward(self, logits, labels, label_smoothing, ignore_index,
                                   reduction, status):
        valid, bad, safe = _ce_rows(labels, ignore_index, logits.shape[1])
        per = self.softmax_cross_entropy_forward(logits, safe, label_smoothing) * valid
        if bad.any():
            per[bad] = np.nan
            if status[0] == 0:
                status[1] = labels[bad][0]
            status[0] += int(bad.sum())
        count = int(valid.sum())
        if reduction == "none":
            return per, count
        total = per.sum()
        return np.asarray(total / (count or 1) if reduction == "mean" else total), count

    def cross_entropy_loss_backward(self, logits, labels, label_smoothing, ignore_index,
                                    upstream, count):
        valid, bad, safe = _ce_rows(labels, ignore_index, logits.shape[1])
        g = upstream if count is None else upstream / (count or 1)
        scale = (valid * np.reshape(g, -1)).astype(logits.dtype, copy=False)
        d = self.softmax_cross_entropy_backward(logits, safe, label_smoothing, scale)
        d[bad] = np.nan
        return d

    # ---------------------------------------------------------------- conv and pooling
    def im2col(self, x, kernel, stride, padding, dilation):
        return cpu_conv.im2col(x, kernel, stride, padding, dilation)

    def col2im(self, cols, x_shape, kernel, stride, padding, dilation):
        return cpu_conv.col2im(cols, x_shape, kernel, stride, padding, dilation)

    # groups 1 (stride 1, or dilation 1): the C kernels' direct convolution when available
    def conv2d_forward(self, x, w, bias, stride, padding, dilation, groups=1, relu=False):
        if cpu_direct.conv_supported(x.dtype, stride, padding, dilation, w.shape[2:], groups):
            y, x_c = cpu_direct.conv2d_forward(x, w, bias, padding, dilation, tuple(stride))
            if relu:
                np.maximum(y, 0, out=y)
            return y, ("direct", x_c)
        return super().conv2d_forward(x, w, bias, stride, padding, dilation, groups, relu)

    def conv2d_backward(self, dy, saved, w, has_bias, need_dx, stride, padding, dilation,
                        groups=1, relu_y=None):
        if relu_y is not None:
            dy = self.relu_backward(relu_y, dy)
        if saved[0] == "direct":
            return cpu_direct.conv2d_backward(saved[1], w, dy, has_bias, need_dx, padding,
                                              dilation, tuple(stride))
        return super().conv2d_backward(dy, saved, w, has_bias, need_dx, stride, padding,
                                       dilation, groups)

    # groups == 1: batch-chunked (and, for thin column matrices, per-image) GEMMs
    def conv2d_gemm_forward(self, w2, cols, bias, n, oh, ow, groups=1, relu=False):
        if groups != 1:
            return super().conv2d_gemm_forward(w2, cols, bias, n, oh, ow, groups, relu)
        y = cpu_conv.conv_forward_gemm(w2, cols, bias, n, oh, ow,
                                       cols.shape[0] <= cpu_conv.PER_IMAGE_MAX_ROWS)
        return np.maximum(y, 0, out=y) if relu else y

    def conv2d_gemm_backward(self, w2, cols, dy, has_bias, need_dx, groups=1, relu_y=None):
        if relu_y is not None:
            dy = self.relu_backward(relu_y, dy)
        if groups != 1:
            return super().conv2d_gemm_backward(w2, cols, dy, has_bias, need_dx, groups)
        return cpu_conv.conv_backward_gemm(w2, cols, dy, has_bias, need_dx,
                                           cols.shape[0] <= cpu_conv.PER_IMAGE_MAX_ROWS)

    def maxpool2d_forward(self, x, kernel, stride, padding):
        if cpu_direct.pool_supported(x.dtype):
            oh, ow = cpu_conv.pool_output_size(x.shape, kernel, stride, padding)
            return cpu_direct.maxpool2d_forward(x, kernel, stride, padding, oh, ow)
        return cpu_conv.maxpool2d_forward(x, kernel, stride, padding)

    def maxpool2d_backward(self, gy, saved, x_shape, kernel, stride, padding):
        if isinstance(saved, cpu_direct.PoolIndices):
            return cpu_direct.maxpool2d_backward(gy, saved, tuple(x_shape))
        return cpu_conv.maxpool2d_backward(gy, saved, x_shape, kernel, stride, padding)

    def avgpool2d_forward(self, x, kernel, stride, padding, count_include_pad=True):
        return cpu_conv.avgpool2d_forward(x, kernel, stride, padding, count_include_pad)

    def avgpool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad=True):
        return cpu_conv.avgpool2d_backward(gy, x_shape, kernel, stride, padding,
                                           count_include_pad)

    # ---------------------------------------------------------------- batch normalisation
    # (issue 17) the C kernels when available; base.py's array math is the reference
    # BatchNorm + ReLU in one C pass each way (Sequential fuses the pair; see base.py)
    fuses_batchnorm_relu = True

    def batchnorm_forward(self, x, weight, bias, mean=None, var=None, eps=1e-5, relu=False):
        if cpu_batchnorm.supported(x, weight, bias, mean, var):
            return cpu_batchnorm.forward(x, weight, bias, mean, var, eps, relu)
        return super().batchnorm_forward(x, weight, bias, mean, var, eps, relu)

    def batchnorm_backward(self, dy, saved, weight, use_batch, need_dx=True, relu_y=None):
        if isinstance(saved, cpu_batchnorm.BatchNormSaved):
            return cpu_batchnorm.backward(dy, saved, weight, use_batch, need_dx, relu_y)
        return super().batchnorm_backward(dy, saved, weight, use_batch, need_dx, relu_y)

    def add_relu(self, a, b):
        out = cpu_elementwise.add_relu(a, b)
        if out is not None:
            return out
        if not (_splittable(a) and a.shape == b.shape):
            return super().add_relu(a, b)
        out = np.empty(a.shape, dtype=np.result_type(a, b))

        def part(i, j):
            np.add(a[i:j], b[i:j], out=out[i:j])
            np.maximum(out[i:j], 0, out=out[i:j])

        _batch_chunks(a, part)
        return out

    # ---------------------------------------------------------------- recurrent cells
    def lstm_cell_forward(self, gates, c_prev):
        return cpu_rnn.lstm_cell_forward(gates, c_prev)

    def lstm_cell_backward(self, dh, dc, saved):
        return cpu_rnn.lstm_cell_backward(dh, dc, saved)

    def gru_cell_forward(self, gi, gh, h_prev):
        return cpu_rnn.gru_cell_forward(gi, gh, h_prev)

    def gru_cell_backward(self, dh, saved):
        return cpu_rnn.gru_cell_backward(dh, saved)

    # ---------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        g = grad + weight_decay * param if weight_decay else grad
        if momentum:
            if first_step:  # PyTorch: the first buffer is g itself, undamped
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        param -= lr * d

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        if weight_decay:
            if decoupled:
                param *= 1 - lr * weight_decay
                g = grad
            else:
                g = grad + weight_decay * param
        else:
            g = grad
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        bc1 = 1 - beta1 ** step
        bc2 = 1 - beta2 ** step
        denom = np.sqrt(v / bc2) + eps
        param -= (lr / bc1) * (m / denom)


def _splittable(x) -> bool:
    """Large enough (and shaped) for batch-parallel element-wise passes."""
    return x.ndim >= 1 and x.shape[0] > 1 and x.size >= 2 * cpu_conv.min_items(1)


def _batch_chunks(x, fn):
    """``fn(start, stop)`` over batch chunks of ``x`` (each writes its own output slice)."""
    parallel_chunks(x.shape[0], fn, cpu_conv.min_items(x.size // x.shape[0]))


def _is_cupy_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _ce_rows(labels, ignore_index, classes):
    """``(valid, bad, safe)`` of cross-entropy labels: not ignored; not ignored but outside
    ``[0, classes)``; the labels with 0 on ignored and bad rows (safe to index with)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= classes))
    return valid, bad, np.where(valid & ~bad, labels, 0)
