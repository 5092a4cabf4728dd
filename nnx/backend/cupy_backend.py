"""The CUDA backend: CuPy arrays plus nnx's own kernels (``kernels/*.cu``).

Every fused operation of :class:`~nnx.backend.base.Backend` runs as one of our kernels,
dispatched on dtype (the template instantiation ``<name><float>`` / ``<name><double>``; other
dtypes raise ``TypeError``) and compiled lazily by :mod:`nnx.backend.kernel_loader`.  Inputs are made C-contiguous first (the
kernels index flat memory).  Kernel scalars are passed as NumPy scalars of the exact C type
(CuPy would turn a Python float into a C ``double``).

Construction fails with :class:`BackendUnavailableError` (one line, no chained traceback)
when CuPy is missing or no CUDA device/driver is present.  The device is the constructor's
``device`` argument, else ``$NNX_DEVICE`` (``1`` or ``cuda:1``), else device 0.  CUDA's current
device is per thread, so every public method runs inside ``with self.device:``: called from a
data-loader or pool thread, kernel compilation, the grid cap and allocations still happen on
the backend's device.
"""
from __future__ import annotations

import functools
import inspect
import os

import numpy as np

from . import kernel_loader as kl
from .base import Backend, out_size
from .errors import BackendMismatchError, BackendUnavailableError

_i32, _i64 = np.int32, np.int64
# CURAND_RNG_PSEUDO_PHILOX4_32_10 of curand.h (a stable enum; reading it through
# cupy.cuda.curand would load libcurand at import of this value)
_CURAND_PHILOX = 161
_MAX_TABLES = 64   # cached multi-tensor pointer tables per backend


def _import_cupy():
    try:
        import cupy
    except ModuleNotFoundError:
        raise BackendUnavailableError(
            "the 'cuda' backend needs CuPy, which is not installed: pip install "
            "'nnx[cuda12]' (CUDA 12) or 'nnx[cuda13]' (CUDA 13)") from None
    except Exception as exc:  # a broken install: missing CUDA libraries, ABI mismatch...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailableError(f"the 'cuda' backend could not import CuPy: {first}") \
            from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailableError(
            f"the 'cuda' backend found no usable CUDA GPU/driver ({first}); use "
            "NNX_BACKEND=cpu") from None
    if count == 0:
        raise BackendUnavailableError(
            "the 'cuda' backend found no CUDA GPU (0 devices); use NNX_BACKEND=cpu")
    return cupy, count


def _parse_device(device) -> int:
    if device is None:
        device = os.environ.get("NNX_DEVICE", "0").strip() or "0"
    if isinstance(device, str):
        text = device.lower()
        text = text.split(":", 1)[1] if text.startswith("cuda:") else text
        try:
            return int(text)
        except ValueError:
            raise BackendUnavailableError(
                f"bad CUDA device {device!r}: use an index such as 0 or 'cuda:1'") from None
    return int(device)


def _on_device(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.device:
            return method(self, *args, **kwargs)
    return run


def _every_entry_on_device(cls):
    """Wrap every public method (own and inherited from Backend) in ``with self.device:``."""
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("_") and name not in _HOST_ONLY:
            setattr(cls, name, _on_device(fn))
    return cls


_HOST_ONLY = {"manual_seed", "rng_state", "set_rng_state", "is_native"}  # touch no device


@_every_entry_on_device
class CupyBackend(Backend):
    """CuPy arrays on one CUDA device, with nnx's fused kernels."""

    name = "cuda"
    xp = None  # set to the cupy module by __init__

    def __init__(self, device=None):
        cupy, count = _import_cupy()
        index = _parse_device(device)
        if not 0 <= index < count:
            raise BackendUnavailableError(
                f"CUDA device {index} requested (NNX_DEVICE or device=) but only {count} "
                f"device(s) found")
        self.xp = cupy
        self.device = cupy.cuda.Device(index)
        self.device.use()
        self._tables = {}   # pointer-table bytes -> device copy (see _tensor_table)
        self.manual_seed(0)

    # ---------------------------------------------------------------- helpers
    def _native(self, x, what):
        if not isinstance(x, self.xp.ndarray):
            if isinstance(x, np.ndarray):
                raise BackendMismatchError(
                    f"{what}: got a NumPy (host) array on the 'cuda' backend; move it with "
                    "nnx.backend.get().asarray(x)")
            raise TypeError(f"{what}: expected a CuPy array, got {type(x).__name__}")
        return self.xp.ascontiguousarray(x)

    @staticmethod
    def _kernel_dtype(x, what):
        """The dtype of ``x`` if a kernel instantiation exists for it, else TypeError."""
        try:
            kl.element_type(x.dtype)
        except TypeError as exc:
            raise TypeError(f"{what}: {exc}") from None
        return x.dtype

    def _same(self, ref, x, what, shape=None):
        x = self._native(x, what)
        if x.dtype != ref.dtype:
            raise TypeError(f"{what}: dtype {x.dtype} does not match {ref.dtype}")
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(f"{what}: shape {tuple(x.shape)} does not match expected "
                             f"{tuple(shape)}")
        return x

    def _saved(self, saved, count, what, layout):
        """The ``saved`` tuple of a forward pass, each entry a contiguous CuPy array."""
        if not isinstance(saved, (tuple, list)) or len(saved) != count:
            raise ValueError(f"{what}: saved must be the {layout} tuple returned by the "
                             f"forward pass, got {_describe(saved)}")
        return tuple(self._native(a, f"{what} saved") for a in saved)

    @staticmethod
    def _matrix(x, what):
        if x.ndim != 2:
            raise ValueError(f"{what}: expected a 2-D (N, H) array, got shape {tuple(x.shape)}")
        return x.shape

    @staticmethod
    def _launch(stem, name, dtype, n, args):
        if n > 0:
            grid, block = kl.launch_config(n)
            kl.get_kernel(stem, name, dtype)(grid, block, args)

    # ---------------------------------------------------------------- arrays
    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return np.asarray(x)

    def is_native(self, x) -> bool:
        return isinstance(x, self.xp.ndarray)

    def synchronize(self) -> None:
        self.device.synchronize()

    def memory_info(self) -> dict:
        """Bytes held by CuPy's memory pool (``used``/``total``) and the device's free/total."""
        pool = self.xp.get_default_memory_pool()
        free, total = self.xp.cuda.runtime.memGetInfo()
        return {"pool_used_bytes": int(pool.used_bytes()),
                "pool_total_bytes": int(pool.total_bytes()),
                "device_free_bytes": int(free), "device_total_bytes": int(total)}

    # ---------------------------------------------------------------- random
    # cuRAND generators cannot export their state, so each draw re-seeds the backend's one
    # generator from (seed, draw counter): the pair is the whole state, which makes
    # checkpoints resumable.  Re-seeding is host-side (curandSetPseudoRandomGeneratorSeed and
    # offset 0: no allocation, no synchronisation); Philox4x32-10 is counter-based, so a new
    # seed costs no state-initialisation kernel (XORWOW's would).  Creating a generator per
    # draw instead would allocate and free its state every time.
    def manual_seed(self, seed: int) -> None:
        self._seed, self._draws = int(seed), 0

    def _next_rng(self):
        self._draws += 1
        mixed = (self._seed * 0x9E3779B97F4A7C15 + self._draws) % (2 ** 63)
        rs = getattr(self, "_rs", None)
        if rs is None:
            rs = self._rs = self.xp.random.RandomState(mixed, method=_CURAND_PHILOX)
        else:
            rs.seed(mixed)
        return rs

    def rng_state(self):
        return {"seed": self._seed, "draws": self._draws}

    def set_rng_state(self, state):
        self._seed, self._draws = int(state["seed"]), int(state["draws"])

    def random(self, shape, dtype="float32"):
        dt = np.dtype(dtype)
        rs = self._next_rng()
        if dt in (np.float32, np.float64):
            return rs.random_sample(shape, dtype=dt)
        return rs.random_sample(shape).astype(dt)

    def randint(self, low, high, shape):
        return self._next_rng().randint(low, high, size=shape, dtype=np.int64)

    # ---------------------------------------------------------------- element-wise
    def _unary(self, stem, kname, a, b, what):
        a = self._native(a, what)
        kdt = self._kernel_dtype(a, what)
        b = self._same(a, b, what, a.shape)
        out = self.xp.empty_like(a)
        self._launch(stem, kname, kdt, a.size, (_i64(a.size), a, b, out))
        return out

    def tanh_backward(self, y, gy):
        return self._unary("tanh_backward", "tanh_backward", y, gy, "tanh_backward")

    def relu_backward(self, y, gy):
        return self._unary("relu", "relu_backward", y, gy, "relu_backward")

    def relu(self, x):
        x = self._native(x, "relu")
        kdt = self._kernel_dtype(x, "relu")
        out = self.xp.empty_like(x)
        self._launch("relu", "relu", kdt, x.size, (_i64(x.size), x, out))
        return out

    def bias_relu(self, x, b):
        x = self._native(x, "bias_relu")
        kdt = self._kernel_dtype(x, "bias_relu")
        if x.ndim < 2:
            raise ValueError(f"bias_relu: x must have at least 2 dims (N, C, ...), got "
                             f"shape {tuple(x.shape)}")
        channels = x.shape[1]
        b = self._same(x, b, "bias_relu bias", (channels,))
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        out = self.xp.empty_like(x)
        self._launch("relu", "bias_relu", kdt, x.size,
                     (_i64(x.size), _i64(channels), _i64(max(inner, 1)), x, b, out))
        return out

    # ---------------------------------------------------------------- losses
    def _sce_inputs(self, logits, labels, what):
        z = self._native(logits, what)
        kdt = self._kernel_dtype(z, what)
        if z.ndim != 2 or z.shape[1] == 0:
            raise ValueError(f"{what}: logits must be (N, C) with C >= 1, got {tuple(z.shape)}")
        lab = self.xp.ascontiguousarray(self.xp.asarray(labels), dtype=self.xp.int64)
        if lab.shape != (z.shape[0],):
            raise ValueError(f"{what}: labels shape {tuple(lab.shape)} does not match "
                             f"({z.shape[0]},)")
        return z, lab, kdt

    def softmax_cross_entropy_forward(self, logits, labels, label_smoothing=0.0):
        z, lab, kdt = self._sce_inputs(logits, labels, "softmax_cross_entropy_forward")
        n, c = z.shape
        loss = self.xp.empty(n, dtype=z.dtype)
        if n:
            grid, block = kl.rows_config(n, c)
            kl.get_kernel("softmax_cross_entropy", "softmax_cross_entropy_forward", kdt)(
                grid, block, (_i64(n), _i32(c), z, lab, _i32(0), _i64(0),
                              z.dtype.type(label_smoothing), loss))
        return loss

    def softmax_cross_entropy_backward(self, logits, labels, label_smoothing, row_scale):
        z, lab, kdt = self._sce_inputs(logits, labels, "softmax_cross_entropy_backward")
        n, c = z.shape
        scale = self.xp.ascontiguousarray(
            self.xp.broadcast_to(self.xp.asarray(row_scale, dtype=z.dtype), (n,)))
        grad = self.xp.empty_like(z)
        if n:
            grid, block = kl.rows_config(n, c)
            t = z.dtype.type
            kl.get_kernel("softmax_cross_entropy", "softmax_cross_entropy_backward", kdt)(
                grid, block, (_i64(n), _i32(c), z, lab, _i32(0), _i64(0), t(label_smoothing),
                              t(1), scale, _i32(1), scale, _i32(0), grad))
        return grad

    # ---------------------------------------------------------------- cross-entropy loss, fused
    def cross_entropy_loss_forward(self, logits, labels, label_smoothing, ignore_index,
                                   reduction, status):
        z, lab, kdt = self._sce_inputs(logits, labels, "cross_entropy_loss_forward")
        n, c = z.shape
        t = z.dtype.type
        rows = self.xp.empty(n, dtype=z.dtype)
        stats = self.xp.empty(2, dtype=z.dtype)          # [reduced loss, count]
        ignore = (_i32(1), _i64(ignore_index))
        if n:
            grid, block = kl.rows_config(n, c)
            kl.get_kernel("softmax_cross_entropy", "softmax_cross_entropy_forward", kdt)(
                grid, block, (_i64(n), _i32(c), z, lab, *ignore, t(label_smoothing), rows))
        _, block = kl.rows_config(1, n)                   # one block over the rows
        kl.get_kernel("softmax_cross_entropy", "cross_entropy_reduce", kdt)(
            (1,), block, (_i64(n), _i32(c), rows, lab, *ignore, _i32(reduction == "mean"),
                          stats, status))
        return (rows if reduction == "none" else stats[0]), stats[1]

    def cross_entropy_loss_backward(self, logits, labels, label_smoothing, ignore_index,
                                    upstream, count):
        z, lab, kdt = self._sce_inputs(logits, labels, "cross_entropy_loss_backward")
        n, c = z.shape
        t = z.dtype.type
        grad = self.xp.empty_like(z)
        if self.is_native(upstream):   # an upstream array (reduction 'none', or 0-d)
            g = self.xp.asarray(upstream, dtype=z.dtype)
            row = self.xp.ascontiguousarray(
                self.xp.broadcast_to(g.reshape(-1) if g.ndim else g, (n,)))
            scalar, has_row = t(1), _i32(1)
        else:
            row, scalar, has_row = z, t(upstream), _i32(0)  # z: an unread placeholder
        denom = z if count is None else self._same(z, count.reshape(1), "count", (1,))
        if n:
            grid, block = kl.rows_config(n, c)
            kl.get_kernel("softmax_cross_entropy", "softmax_cross_entropy_backward", kdt)(
                grid, block, (_i64(n), _i32(c), z, lab, _i32(1), _i64(ignore_index),
                              t(label_smoothing), scalar, row, has_row, denom,
                              _i32(count is not None), grad))
        return grad

    # ---------------------------------------------------------------- trainer bookkeeping
    def step_metrics_add(self, loss_sum, correct, loss, n, logits, labels):
        """:meth:`Backend.step_metrics_add` in one launch (kernels/step_metrics.cu): both sums
        live in one float64 device pair ``[loss_sum, correct]``, returned as its two 0-d
        views; the next call that passes back the views it returned last updates the pair in
        place (anything else starts a new pair from the given values)."""
        xp = self.xp
        fusable = (isinstance(logits, xp.ndarray) and logits.ndim == 2 and logits.shape[1] > 0
                   and isinstance(loss, xp.ndarray) and loss.size == 1
                   and loss.dtype == logits.dtype and logits.dtype in (np.float32, np.float64))
        if not fusable:
            return super().step_metrics_add(loss_sum, correct, loss, n, logits, labels)
        last = getattr(self, "_step_totals", None)
        if last is not None and loss_sum is last[0] and correct is last[1]:
            acc = last[2]
        else:                                   # a new epoch: start from the given sums
            acc = xp.empty(2, np.float64)
            for i, v in enumerate((loss_sum, correct)):
                if isinstance(v, xp.ndarray):   # a device copy, not a host read
                    acc[i:i + 1] = v.reshape(1).astype(np.float64)
                else:
                    acc[i] = v
        z = xp.ascontiguousarray(logits)
        lab = xp.ascontiguousarray(xp.asarray(labels), dtype=xp.int64)
        if lab.shape != (z.shape[0],):
            raise ValueError(f"step_metrics_add: labels shape {tuple(lab.shape)} does not "
                             f"match ({z.shape[0]},)")
        _, block = kl.rows_config(1, z.shape[0])           # one block over the rows
        kl.get_kernel("step_metrics", "step_metrics_add", z.dtype)(
            (1,), block, (_i64(z.shape[0]), _i32(z.shape[1]), z, lab,
                          xp.ascontiguousarray(loss), np.float64(n), acc))
        self._step_totals = (acc[0], acc[1], acc)
        return self._step_totals[:2]

    # ---------------------------------------------------------------- conv and pooling
    @staticmethod
    def _geometry(x_shape, kernel, stride, padding, dilation=(1, 1)):
        if len(x_shape) != 4:
            raise ValueError(f"expected an NCHW shape (4 dims), got {tuple(x_shape)}")
        n, c, h, w = (int(v) for v in x_shape)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph}x{pw})")
        return n, c, h, w, oh, ow

    def im2col(self, x, kernel, stride, padding, dilation):
        x = self._native(x, "im2col")
        kdt = self._kernel_dtype(x, "im2col")
        n, c, h, w, oh, ow = self._geometry(x.shape, kernel, stride, padding, dilation)
        cols = self.xp.empty((c * kernel[0] * kernel[1], n * oh * ow), dtype=x.dtype)
        geo = [_i32(v) for v in (n, c, h, w, *kernel, oh, ow, *stride, *padding, *dilation)]
        self._launch("im2col", "im2col", kdt, cols.size, (_i64(cols.size), *geo, x, cols))
        return cols

    def col2im(self, cols, x_shape, kernel, stride, padding, dilation):
        cols = self._native(cols, "col2im")
        kdt = self._kernel_dtype(cols, "col2im")
        n, c, h, w, oh, ow = self._geometry(x_shape, kernel, stride, padding, dilation)
        expect = (c * kernel[0] * kernel[1], n * oh * ow)
        if tuple(cols.shape) != expect:
            raise ValueError(f"col2im: cols shape {tuple(cols.shape)} does not match {expect}")
        x = self.xp.empty((n, c, h, w), dtype=cols.dtype)
        geo = [_i32(v) for v in (n, c, h, w, *kernel, oh, ow, *stride, *padding, *dilation)]
        self._launch("col2im", "col2im", kdt, x.size, (_i64(x.size), *geo, cols, x))
        return x

    def conv2d_gemm_forward(self, w2, cols, bias, n, oh, ow, groups=1, relu=False):
        """As :meth:`Backend.conv2d_gemm_forward`; for ``groups == 1`` the bias, the copy to
        NCHW and the ReLU are one ``conv_output_nchw`` launch after the GEMM."""
        if groups != 1:
            return super().conv2d_gemm_forward(w2, cols, bias, n, oh, ow, groups, relu)
        g = self.xp.matmul(w2, cols)
        return self.conv_output_nchw(g, bias, n, oh, ow, relu)

    def conv2d_gemm_backward(self, w2, cols, dy, has_bias, need_dx, groups=1, relu_y=None):
        """As :meth:`Backend.conv2d_gemm_backward`, but ``dW = D @ colsᵀ`` in the orientation
        that gives a C-contiguous ``dW`` (the base class's ``(cols @ Dᵀ)ᵀ`` suits OpenBLAS and
        returns a transposed view, which the multi-tensor optimizer kernels, indexing flat
        memory, would have to copy); ``D`` and ``db`` (and the ReLU mask) are one
        :meth:`bias_grad` launch."""
        if groups != 1:
            return super().conv2d_gemm_backward(w2, cols, dy, has_bias, need_dx, groups,
                                                relu_y)
        xp = self.xp
        d2, db = self.bias_grad(dy, relu_y, has_bias, transpose=True)
        dcols = xp.matmul(w2.T, d2) if need_dx else None
        return xp.matmul(d2, cols.T), db, dcols

    # ---------------------------------------------------------------- Linear/Conv2d + ReLU
    fuses_bias_relu = True

    def conv_output_nchw(self, g, bias, n, oh, ow, relu=False):
        """``y[n,o,p] = g[o, n·OH·OW + p] + bias[o]`` (bias optional), then ``max(y, 0)``
        when ``relu``: a GEMM result ``(O, N·OH·OW)`` as the NCHW output, one launch."""
        g = self._native(g, "conv_output_nchw")
        kdt = self._kernel_dtype(g, "conv_output_nchw")
        o, hw = g.shape[0], int(oh) * int(ow)
        if g.ndim != 2 or g.shape[1] != n * hw:
            raise ValueError(f"conv_output_nchw: expected a ({o}, {n * hw}) GEMM result, got "
                             f"shape {tuple(g.shape)}")
        b = g if bias is None else self._same(g, bias, "conv_output_nchw bias", (o,))
        y = self.xp.empty((n, o, oh, ow), dtype=g.dtype)
        self._launch("bias_layout", "conv_output_nchw", kdt, y.size,
                     (_i64(y.size), _i64(o), _i64(hw), g, b, _i32(bias is not None),
                      _i32(relu), y))
        return y

    def bias_grad(self, dy, y=None, has_bias=True, transpose=False):
        """As :meth:`Backend.bias_grad`, in one ``bias_grad_rows`` launch (one block per
        channel)."""
        dy = self._native(dy, "bias_grad")
        kdt = self._kernel_dtype(dy, "bias_grad")
        if dy.ndim < 2:
            raise ValueError(f"bias_grad: dy must be (N, C, ...), got shape {tuple(dy.shape)}")
        outer, channels = dy.shape[0], dy.shape[1]
        inner = int(np.prod(dy.shape[2:], dtype=np.int64))
        relu = y is not None
        y = self._same(dy, y, "bias_grad y", dy.shape) if relu else dy
        d = self.xp.empty((channels, outer * inner) if transpose else dy.shape, dtype=dy.dtype)
        db = self.xp.empty((channels,), dtype=dy.dtype) if has_bias else None
        if channels > 0:
            grid, block = kl.rows_config(channels, outer * inner)
            kl.get_kernel("bias_layout", "bias_grad_rows", kdt)(
                grid, block, (_i64(outer), _i64(channels), _i64(max(inner, 1)), dy, y,
                              _i32(relu), _i32(transpose), _i32(has_bias), d,
                              d if db is None else db))
        return d, db

    def _pool_geo(self, x_shape, kernel, stride, padding):
        if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
            raise ValueError(f"pooling padding {tuple(padding)} must be at most half the kernel "
                             f"size {tuple(kernel)}")
        n, c, h, w, oh, ow = self._geometry(x_shape, kernel, stride, padding)
        geo = tuple(_i32(v) for v in (h, w, oh, ow, *kernel, *stride, *padding))
        return (n, c, h, w), (n, c, oh, ow), geo

    def maxpool2d_forward(self, x, kernel, stride, padding):
        """``saved`` is the int32 arg-max (flat index ``h*W + w`` into each input plane)."""
        x = self._native(x, "maxpool2d_forward")
        kdt = self._kernel_dtype(x, "maxpool2d_forward")
        _, yshape, geo = self._pool_geo(x.shape, kernel, stride, padding)
        y = self.xp.empty(yshape, dtype=x.dtype)
        arg = self.xp.empty(yshape, dtype=self.xp.int32)
        self._launch("pooling", "maxpool2d_forward", kdt, y.size,
                     (_i64(y.size), *geo, x, y, arg))
        return y, arg

    def maxpool2d_backward(self, gy, saved, x_shape, kernel, stride, padding):
        gy = self._native(gy, "maxpool2d_backward")
        kdt = self._kernel_dtype(gy, "maxpool2d_backward")
        xshape, yshape, geo = self._pool_geo(x_shape, kernel, stride, padding)
        _check_pooled_grad(gy, yshape, "maxpool2d_backward")
        # the kernel reads saved[o] for every output o: anything else reads out of bounds
        if not self.is_native(saved) or saved.dtype != np.int32 \
                or tuple(saved.shape) != tuple(yshape):
            raise ValueError(
                f"maxpool2d_backward: saved must be the int32 CuPy arg-max of shape "
                f"{tuple(yshape)} returned by maxpool2d_forward, got {_describe(saved)}")
        arg = self.xp.ascontiguousarray(saved)
        gx = self.xp.empty(xshape, dtype=gy.dtype)
        self._launch("pooling", "maxpool2d_backward", kdt, gx.size,
                     (_i64(gx.size), *geo, gy, arg, gx))
        return gx

    def avgpool2d_forward(self, x, kernel, stride, padding, count_include_pad=True):
        x = self._native(x, "avgpool2d_forward")
        kdt = self._kernel_dtype(x, "avgpool2d_forward")
        _, yshape, geo = self._pool_geo(x.shape, kernel, stride, padding)
        y = self.xp.empty(yshape, dtype=x.dtype)
        self._launch("pooling", "avgpool2d_forward", kdt, y.size,
                     (_i64(y.size), *geo, _i32(bool(count_include_pad)), x, y))
        return y

    def avgpool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad=True):
        gy = self._native(gy, "avgpool2d_backward")
        kdt = self._kernel_dtype(gy, "avgpool2d_backward")
        xshape, yshape, geo = self._pool_geo(x_shape, kernel, stride, padding)
        _check_pooled_grad(gy, yshape, "avgpool2d_backward")
        gx = self.xp.empty(xshape, dtype=gy.dtype)
        self._launch("pooling", "avgpool2d_backward", kdt, gx.size,
                     (_i64(gx.size), *geo, _i32(bool(count_include_pad)), gy, gx))
        return gx

    # ---------------------------------------------------------------- batch normalisation
    # (issue 17) the base class's array math on CuPy arrays; inputs checked to be on device
    def batchnorm_forward(self, x, weight, bias, mean=None, var=None, eps=1e-5, relu=False):
        x = self._native(x, "batchnorm_forward x")
        weight, bias, mean, var = (None if a is None else self._same(x, a, "batchnorm_forward")
                                   for a in (weight, bias, mean, var))
        return super().batchnorm_forward(x, weight, bias, mean, var, eps, relu)

    def batchnorm_backward(self, dy, saved, weight, use_batch, need_dx=True, relu_y=None):
        dy = self._native(dy, "batchnorm_backward dy")
        return super().batchnorm_backward(dy, saved, weight, use_batch, need_dx, relu_y)

    def add_relu(self, a, b):
        a = self._native(a, "add_relu a")
        return super().add_relu(a, self._same(a, b, "add_relu b", a.shape))

    # ---------------------------------------------------------------- recurrent cells
    def lstm_cell_forward(self, gates, c_prev):
        """``saved = (act, c_prev, c)`` with ``act`` the activated gates ``(N,4H)``."""
        gates = self._native(gates, "lstm_cell_forward gates")
        kdt = self._kernel_dtype(gates, "lstm_cell_forward")
        if gates.ndim != 2 or gates.shape[1] % 4:
            raise ValueError(f"lstm_cell_forward: gates must be (N, 4H), got "
                             f"{tuple(gates.shape)}")
        n, hid = gates.shape[0], gates.shape[1] // 4
        c_prev = self._same(gates, c_prev, "lstm_cell_forward c_prev", (n, hid))
        h = self.xp.empty((n, hid), dtype=gates.dtype)
        c = self.xp.empty_like(h)
        act = self.xp.empty_like(gates)
        self._launch("lstm_cell", "lstm_cell_forward", kdt, h.size,
                     (_i64(h.size), _i64(hid), gates, c_prev, h, c, act))
        return h, c, (act, c_prev, c)

    def lstm_cell_backward(self, dh, dc, saved):
        """``dh`` or ``dc`` may be None (zero)."""
        act, c_prev, c = self._saved(saved, 3, "lstm_cell_backward", "(act, c_prev, c)")
        kdt = self._kernel_dtype(c, "lstm_cell_backward")
        n, hid = self._matrix(c, "lstm_cell_backward saved c")
        self._same(c, act, "lstm_cell_backward saved act", (n, 4 * hid))
        self._same(c, c_prev, "lstm_cell_backward saved c_prev", (n, hid))
        dh_ = c if dh is None else self._same(c, dh, "lstm_cell_backward dh", (n, hid))
        dc_ = c if dc is None else self._same(c, dc, "lstm_cell_backward dc", (n, hid))
        dgates = self.xp.empty_like(act)
        dc_prev = self.xp.empty_like(c)
        self._launch("lstm_cell", "lstm_cell_backward", kdt, c.size,
                     (_i64(c.size), _i64(hid), dh_, dc_, _i32(dh is not None),
                      _i32(dc is not None), act, c_prev, c, dgates, dc_prev))
        return dgates, dc_prev

    def gru_cell_forward(self, gi, gh, h_prev):
        """``saved = (packed, h_prev)``, ``packed (N,4H) = [r | z | n | gh_n]``."""
        gi = self._native(gi, "gru_cell_forward gi")
        kdt = self._kernel_dtype(gi, "gru_cell_forward")
        if gi.ndim != 2 or gi.shape[1] % 3:
            raise ValueError(f"gru_cell_forward: gi must be (N, 3H), got {tuple(gi.shape)}")
        n, hid = gi.shape[0], gi.shape[1] // 3
        gh = self._same(gi, gh, "gru_cell_forward gh", gi.shape)
        h_prev = self._same(gi, h_prev, "gru_cell_forward h_prev", (n, hid))
        h = self.xp.empty((n, hid), dtype=gi.dtype)
        packed = self.xp.empty((n, 4 * hid), dtype=gi.dtype)
        self._launch("gru_cell", "gru_cell_forward", kdt, h.size,
                     (_i64(h.size), _i64(hid), gi, gh, h_prev, h, packed))
        return h, (packed, h_prev)

    def gru_cell_backward(self, dh, saved):
        packed, h_prev = self._saved(saved, 2, "gru_cell_backward", "(packed, h_prev)")
        kdt = self._kernel_dtype(h_prev, "gru_cell_backward")
        n, hid = self._matrix(h_prev, "gru_cell_backward saved h_prev")
        self._same(h_prev, packed, "gru_cell_backward saved packed", (n, 4 * hid))
        dh = self._same(h_prev, dh, "gru_cell_backward dh", (n, hid))
        dgi = self.xp.empty((n, 3 * hid), dtype=h_prev.dtype)
        dgh = self.xp.empty_like(dgi)
        dh_prev = self.xp.empty_like(h_prev)
        self._launch("gru_cell", "gru_cell_backward", kdt, dh.size,
                     (_i64(dh.size), _i64(hid), dh, packed, h_prev, dgi, dgh, dh_prev))
        return dgi, dgh, dh_prev

    # ---------------------------------------------------------------- optimizers
    def _inplace(self, arr, what):
        """A contiguous array to update in place, plus whether it must be copied back."""
        if not isinstance(arr, self.xp.ndarray):
            raise BackendMismatchError(f"{what}: expected a CuPy array, got {type(arr).__name__}")
        if arr.flags.c_contiguous:
            return arr, False
        return self.xp.ascontiguousarray(arr), True

    def sgd_update(self, param, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, first_step=False):
        kdt = self._kernel_dtype(param, "sgd_update")
        p, p_copy = self._inplace(param, "sgd_update param")
        g = self._same(p, grad, "sgd_update grad", p.shape)
        if momentum:
            if buf is None:
                raise ValueError("sgd_update: momentum needs a buffer (buf is None)")
            b, b_copy = self._inplace(buf, "sgd_update buf")
            self._same(p, b, "sgd_update buf", p.shape)
        else:
            b, b_copy = p, False  # never read when use_momentum == 0
        t = p.dtype.type
        self._launch("optim", "sgd_update", kdt, p.size,
                     (_i64(p.size), p, g, b, t(lr), t(momentum), t(1 - dampening),
                      t(weight_decay), _i32(bool(nesterov)), _i32(bool(first_step)),
                      _i32(bool(momentum))))
        if p_copy:
            param[...] = p
        if b_copy:
            buf[...] = b

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                    decoupled=False):
        kdt = self._kernel_dtype(param, "adam_update")
        p, p_copy = self._inplace(param, "adam_update param")
        g = self._same(p, grad, "adam_update grad", p.shape)
        m_, m_copy = self._inplace(m, "adam_update m")
        v_, v_copy = self._inplace(v, "adam_update v")
        self._same(p, m_, "adam_update m", p.shape)
        self._same(p, v_, "adam_update v", p.shape)
        mode = 0 if not weight_decay else (2 if decoupled else 1)
        t = p.dtype.type
        bc1 = 1 - beta1 ** step
        bc2 = 1 - beta2 ** step
        self._launch("optim", "adam_update", kdt, p.size,
                     (_i64(p.size), p, g, m_, v_, t(beta1), t(1 - beta1), t(beta2),
                      t(1 - beta2), t(eps), t(weight_decay), t(1 - lr * weight_decay),
                      t(lr / bc1), t(bc2), _i32(mode)))
        for copied, dst, src in ((p_copy, param, p), (m_copy, m, m_), (v_copy, v, v_)):
            if copied:
                dst[...] = src

    # ---------------------------------------------------------------- multi-tensor optimizers
    def _tensor_table(self, rows, what):
        """Device ``int64`` table for the ``*_multi`` kernels: ``n+1`` running element offsets,
        then each row's device addresses.  Every array must be a C-contiguous CuPy array of
        the first one's dtype and its row's shape (the kernel indexes flat memory).  Tables
        are cached by content: while the memory pool hands out the same addresses step after
        step (it does for a repeated step), no upload happens."""
        ref = rows[0][0]
        sizes = [0]
        ptrs = []
        for row in rows:
            for a in row:
                if not isinstance(a, self.xp.ndarray) or a.dtype != ref.dtype \
                        or not a.flags.c_contiguous or a.shape != row[0].shape:
                    raise ValueError(f"{what}: every array must be a C-contiguous CuPy array "
                                     f"of dtype {ref.dtype} shaped like its parameter, got "
                                     f"{_describe(a)}")
                ptrs.append(a.data.ptr)
            sizes.append(row[0].size)
        host = np.concatenate([np.cumsum(sizes, dtype=np.int64), np.array(ptrs, np.int64)])
        key = host.tobytes()
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= _MAX_TABLES:
                self._tables.clear()
            table = self._tables[key] = self.xp.asarray(host)
        return table, int(host[len(rows)])

    def sgd_update_multi(self, params, grads, bufs, lr, momentum=0.0, dampening=0.0,
                         nesterov=False, weight_decay=0.0, first_step=False):
        """:meth:`sgd_update` of every tensor in one launch; ``bufs`` is ignored (may be
        None) without momentum.  Same arithmetic per element as the one-tensor kernel."""
        if not params:
            return
        kdt = self._kernel_dtype(params[0], "sgd_update_multi")
        if momentum and (bufs is None or any(b is None for b in bufs)):
            raise ValueError("sgd_update_multi: momentum needs a buffer per parameter")
        rows = [(p, g, b) for p, g, b in zip(params, grads, bufs if momentum else params)]
        if len(rows) != len(params) or len(grads) != len(params):
            raise ValueError("sgd_update_multi: params, grads and bufs differ in length")
        table, total = self._tensor_table(rows, "sgd_update_multi")
        t = params[0].dtype.type
        self._launch("optim", "sgd_update_multi", kdt, total,
                     (_i32(len(rows)), table, t(lr), t(momentum), t(1 - dampening),
                      t(weight_decay), _i32(bool(nesterov)), _i32(bool(first_step)),
                      _i32(bool(momentum))))

    def adam_update_multi(self, params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay,
                          step, decoupled=False):
        """:meth:`adam_update` of every tensor (all at the same ``step``) in one launch."""
        if not params:
            return
        kdt = self._kernel_dtype(params[0], "adam_update_multi")
        rows = list(zip(params, grads, ms, vs))
        if not len(rows) == len(params) == len(grads) == len(ms) == len(vs):
            raise ValueError("adam_update_multi: params, grads, ms and vs differ in length")
        table, total = self._tensor_table(rows, "adam_update_multi")
        mode = 0 if not weight_decay else (2 if decoupled else 1)
        t = params[0].dtype.type
        self._launch("optim", "adam_update_multi", kdt, total,
                     (_i32(len(rows)), table, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
                      t(eps), t(weight_decay), t(1 - lr * weight_decay),
                      t(lr / (1 - beta1 ** step)), t(1 - beta2 ** step), _i32(mode)))


def _check_pooled_grad(gy, yshape, what):
    if tuple(gy.shape) != tuple(yshape):
        raise ValueError(f"{what}: gy shape {tuple(gy.shape)} does not match {tuple(yshape)}")


def _describe(x):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__} {x.dtype} of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return type(x).__name__
