r"""Multi-layer, optionally bidirectional sequence layers ``RNN``, ``LSTM`` and ``GRU`` with
explicit backpropagation through time (BPTT).

The per-step equations (forward and backward) are in :mod:`nnx.nn.rnn_cells`.  For one
layer and direction over a sequence ``x_1..x_T`` (reverse direction: ``t = T..1``)::

    forward:   G_ih = X W_ihᵀ + b_ih                   one GEMM, X = x reshaped (T·N, I)
               h_t, c_t = cell(G_ih[t], h_{t-1}, c_{t-1})        h_0, c_0 = given or zeros
    backward:  δh_T = dL/dh_n,  δc_T = dL/dc_n  (zeros when not given)
               for t = T..1:  (δgi_t, δgh_t, δh_{t-1}, δc_{t-1}) = cell_backward(
                                   dL/dout_t + δh_t, δc_t)
               dL/dX = δGI W_ih,   dW_ih = δGIᵀ X,   dW_hh = Σ_t δgh_tᵀ h_{t-1},
               db_ih = Σ δgi_t,    db_hh = Σ δgh_t,  dL/dh_0 = δh_0, dL/dc_0 = δc_0

i.e. the seeds' ``∂L/∂h_t = ∂L/∂y_t ∂y_t/∂h_t + ∂L/∂h_{t+1} ∂h_{t+1}/∂h_t``.  Layer ``l > 0``
takes the concatenated (forward, reverse) outputs of layer ``l-1`` as its input; with
``dropout = p > 0`` in training mode those inputs are multiplied by a Bernoulli(1-p)/(1-p)
mask (PyTorch's inter-layer dropout; the mask is reused by backward).

Truncated BPTT
--------------
A top-level call's ``backward`` goes back through that call's steps and no further (inside
a composite's ``forward`` the tape links the calls instead).  To truncate, run the sequence
in chunks and feed the final state of one chunk as the initial state of the next
(``detach_state`` makes a copy, which also stops the gradient inside a composite, and
later in-place updates cannot alias it)::

    h = None
    for chunk, target in chunks:
        out, h_n = rnn(chunk, h)          # LSTM: out, (h_n, c_n) = lstm(chunk, hx)
        loss = crit(head(out), target)
        opt.zero_grad(); rnn.backward(head.backward(crit.backward())); opt.step()
        h = detach_state(h_n)             # gradients stop at the chunk boundary
"""
from __future__ import annotations

import warnings

from .. import backend as B
from .. import dtypes
from .inputs import as_input
from .module import Module
from .rnn_cells import check_mode, input_projection, make_params, step_backward, \
    step_forward


def detach_state(state):
    """Copy a recurrent state (an array, a tuple ``(h, c)`` or ``None``) for the next chunk
    of truncated BPTT.  A plain copy: arrays carry no graph in nnx, and a composite's tape
    sees the copy as a new constant, so ``backward`` stops at the chunk boundary."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state.copy()


class _RNNBase(Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        if self.num_layers < 1:
            raise ValueError(f"{name}: num_layers must be >= 1, got {num_layers}")
        if self.hidden_size < 1:
            raise ValueError(f"{name}: hidden_size must be >= 1, got {hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} has no effect with num_layers=1 (it is "
                          "applied between layers)", stacklevel=3)
        self.num_directions = 2 if self.bidirectional else 1
        dt = dtypes.resolve(dtype)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for d in range(self.num_directions):
                make_params(self, self._suffix(layer, d), in_size, self.hidden_size, mode,
                            self.bias, dt)

    @staticmethod
    def _suffix(layer, direction):
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _weights(self, layer, d):
        s = self._suffix(layer, d)
        w_ih, w_hh = getattr(self, "weight_ih" + s), getattr(self, "weight_hh" + s)
        b_ih = getattr(self, "bias_ih" + s) if self.bias else None
        b_hh = getattr(self, "bias_hh" + s) if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    # ------------------------------------------------------------------ input handling
    def _prepare(self, x):
        name = type(self).__name__
        xp = B.get().xp
        x = as_input(x, self.weight_ih_l0.data.dtype, name)
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(N, T, I)" if self.batch_first else "(T, N, I)"
            raise ValueError(f"{name}: expected input {layout} or unbatched (T, I) with "
                             f"I = input_size = {self.input_size}, got shape {tuple(x.shape)}")
        if x.shape[-2 if x.ndim == 2 else (1 if self.batch_first else 0)] == 0:
            raise ValueError(f"{name}: the sequence is empty (input shape {tuple(x.shape)})")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        return xp.ascontiguousarray(x), unbatched

    def _states(self, s, n, unbatched, what):
        """``s`` -> ``(L*D, N, H)`` array (zeros when ``None``), checking the shape.
        Gradients (``d_*``) are cast to the parameters' dtype; states must match it."""
        xp = B.get().xp
        ld = self.num_layers * self.num_directions
        dt = self.weight_ih_l0.data.dtype
        if s is None:
            return xp.zeros((ld, n, self.hidden_size), dtype=dt)
        if what.startswith("d_"):
            s = B.get().asarray(s).astype(dt, copy=False)
        else:
            s = as_input(s, dt, type(self).__name__)
        want = (ld, self.hidden_size) if unbatched else (ld, n, self.hidden_size)
        if tuple(s.shape) != want:
            raise ValueError(f"{type(self).__name__}: {what} must have shape {want} "
                             f"(num_layers*num_directions, {'' if unbatched else 'N, '}"
                             f"hidden_size), got {tuple(s.shape)}")
        return B.get().xp.ascontiguousarray(s.reshape(ld, n, self.hidden_size))

    def _to_layout(self, a, unbatched):
        """Time-major ``(T, N, F)`` -> the caller's layout."""
        if unbatched:
            return a[:, 0]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _from_layout(self, a, shape_tn, unbatched, what):
        be = B.get()
        xp = be.xp
        T, N = shape_tn
        F = self.hidden_size * self.num_directions
        a = be.asarray(a).astype(self.weight_ih_l0.data.dtype, copy=False)
        if unbatched:
            want = (T, F)
        else:
            want = (N, T, F) if self.batch_first else (T, N, F)
        if tuple(a.shape) != want:
            raise ValueError(f"{type(self).__name__}.backward: {what} must have shape {want} "
                             f"(the output's), got {tuple(a.shape)}")
        if unbatched:
            return a[:, None, :]
        return xp.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    # ------------------------------------------------------------------ core
    def _run(self, x, h0, c0):
        """Forward over all layers/directions on time-major ``x``; returns (out, h_n, c_n)."""
        be = B.get()
        xp = be.xp
        T, N, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        is_lstm = self.mode == "LSTM"
        h_n = xp.empty((self.num_layers * D, N, H), dtype=x.dtype)
        c_n = xp.empty_like(h_n) if is_lstm else None
        ctxs, masks = [], []
        layer_in = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                keep = 1.0 - self.dropout
                mask = (be.random(layer_in.shape, dtype=layer_in.dtype) < keep)
                mask = mask.astype(layer_in.dtype) / layer_in.dtype.type(keep)
                layer_in = layer_in * mask
            else:
                mask = None
            masks.append(mask)
            out = xp.empty((T, N, D * H), dtype=x.dtype)
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                gi = input_projection(layer_in.reshape(T * N, -1), w_ih.data,
                                      None if b_ih is None else b_ih.data)
                gi = gi.reshape(T, N, -1)
                h = h0[k]
                c = c0[k] if is_lstm else None
                hprev = xp.empty((T, N, H), dtype=x.dtype)
                saved = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    hprev[t] = h
                    h, c, saved[t] = step_forward(self.mode, be, gi[t], h, c, w_hh.data,
                                                  None if b_hh is None else b_hh.data)
                    out[t, :, d * H:(d + 1) * H] = h
                h_n[k] = h
                if is_lstm:
                    c_n[k] = c
                ctxs.append((layer_in, hprev, saved))
            layer_in = out
        self.ctx.layers, self.ctx.masks, self.ctx.shape = ctxs, masks, (T, N)
        return layer_in, h_n, c_n

    def _back(self, d_out, dh_n, dc_n):
        """BPTT on time-major arrays; returns (dx, dh0, dc0) time-major/(L*D, N, H)."""
        be = B.get()
        xp = be.xp
        ctx = self.ctx
        T, N = ctx.shape
        H, D = self.hidden_size, self.num_directions
        is_lstm = self.mode == "LSTM"
        dt = self.weight_ih_l0.data.dtype
        dh0 = xp.zeros((self.num_layers * D, N, H), dtype=dt)
        dc0 = xp.zeros_like(dh0) if is_lstm else None
        d_layer = d_out  # gradient of the current layer's output (T, N, D*H), or None
        for layer in range(self.num_layers - 1, -1, -1):
            d_in = None
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                layer_in, hprev, saved = ctx.layers[k]
                G = w_ih.data.shape[0]
                dgi_all = xp.empty((T, N, G), dtype=dt)
                dgh_all = xp.empty((T, N, G), dtype=dt) if self.mode == "GRU" else dgi_all
                dh = dh_n[k] if dh_n is not None else xp.zeros((N, H), dtype=dt)
                # the cell-op contract takes arrays, so "no gradient" is passed as zeros
                dc = None if not is_lstm else (
                    dc_n[k] if dc_n is not None else xp.zeros((N, H), dtype=dt))
                for t in (range(T) if d else range(T - 1, -1, -1)):
                    g = dh if d_layer is None else dh + d_layer[t, :, d * H:(d + 1) * H]
                    dgi, dgh, dh, dc = step_backward(self.mode, be, g, dc, saved[t],
                                                     w_hh.data)
                    dgi_all[t] = dgi
                    if dgh_all is not dgi_all:
                        dgh_all[t] = dgh
                dh0[k] = dh
                if is_lstm:
                    dc0[k] = dc
                dgi2, dgh2 = dgi_all.reshape(T * N, G), dgh_all.reshape(T * N, G)
                x2 = layer_in.reshape(T * N, -1)
                w_ih.accumulate(dgi2.T @ x2)
                w_hh.accumulate(dgh2.T @ hprev.reshape(T * N, H))
                if b_ih is not None:
                    b_ih.accumulate(dgi2.sum(axis=0))
                    b_hh.accumulate(dgh2.sum(axis=0))
                dx = (dgi2 @ w_ih.data).reshape(T, N, -1)
                d_in = dx if d_in is None else d_in + dx
            mask = ctx.masks[layer]
            d_layer = d_in * mask if mask is not None else d_in
        return d_layer, dh0, dc0

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class _HiddenOnly(_RNNBase):
    """RNN and GRU: a single state ``h``."""

    def forward(self, x, h0=None):
        """``x (T, N, I)`` (``(N, T, I)`` with ``batch_first``) or unbatched ``(T, I)``;
        ``h0 (L*D, N, H)`` (unbatched ``(L*D, H)``), zeros when omitted.  Returns
        ``(output (T, N, D*H), h_n (L*D, N, H))`` in the same layouts."""
        x, unbatched = self._prepare(x)
        h0s = self._states(h0, x.shape[1], unbatched, "h0")
        out, h_n, _ = self._run(x, h0s, None)
        self.ctx.unbatched, self.ctx.has_state = unbatched, h0 is not None
        return self._to_layout(out, unbatched), (h_n[:, 0] if unbatched else h_n)

    def backward(self, d_output, d_hn=None):
        """Full BPTT through this call's steps.  ``d_output`` (output's shape) or ``d_hn``
        (``h_n``'s shape) may be ``None``.  Returns ``dx``, or ``(dx, dh0)`` when ``h0`` was
        passed to forward.  Parameter gradients accumulate."""
        ctx = self.ctx
        unbatched = ctx.unbatched
        d_out = (None if d_output is None else
                 self._from_layout(d_output, ctx.shape, unbatched, "d_output"))
        d_hn = None if d_hn is None else self._states(d_hn, ctx.shape[1], unbatched,
                                                      "d_hn")
        dx, dh0, _ = self._back(d_out, d_hn, None)
        dx = self._to_layout(dx, unbatched)
        if not ctx.has_state:
            return dx
        return dx, (dh0[:, 0] if unbatched else dh0)


class RNN(_HiddenOnly):
    r"""Elman RNN: ``h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)``, ``act`` = tanh or
    relu; multi-layer, bidirectional; BPTT as in the module docstring (the tanh derivative
    goes through ``backend.tanh_backward``).

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False)`` — PyTorch's positional order.
    Parameters ``weight_ih_l{k}[_reverse]`` ``(H, I_k)``, ``weight_hh_l{k}`` ``(H, H)``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(H,)``, all ``U(-1/sqrt(H), 1/sqrt(H))``.
    ``forward(x, h0=None) -> (output, h_n)``; ``backward(d_output, d_hn=None) -> dx`` or
    ``(dx, dh0)`` (when ``h0`` was given).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=None):
        super().__init__(check_mode(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class GRU(_HiddenOnly):
    r"""Gated recurrent unit (PyTorch's formulation, gates r, z, n)::

        r_t = σ(x_t W_irᵀ + b_ir + h_{t-1} W_hrᵀ + b_hr)
        z_t = σ(x_t W_izᵀ + b_iz + h_{t-1} W_hzᵀ + b_hz)
        n_t = tanh(x_t W_inᵀ + b_in + r_t ⊙ (h_{t-1} W_hnᵀ + b_hn))
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    ``weight_ih_l{k}`` is ``(3H, I_k)`` = [W_ir; W_iz; W_in] (likewise ``weight_hh``, biases).
    Backward equations: :mod:`nnx.nn.rnn_cells` (per step) and this module (BPTT); the
    element-wise parts run in the backend's fused ``gru_cell_forward/backward``.
    ``forward(x, h0=None) -> (output, h_n)``; ``backward(d_output, d_hn=None) -> dx`` or
    ``(dx, dh0)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)


class LSTM(_RNNBase):
    r"""Long short-term memory (PyTorch's formulation, gates i, f, g, o)::

        i_t = σ(x_t W_iiᵀ + b_ii + h_{t-1} W_hiᵀ + b_hi)      f_t likewise with W_if, W_hf
        g_t = tanh(x_t W_igᵀ + b_ig + h_{t-1} W_hgᵀ + b_hg)   o_t likewise (σ) with W_io, W_ho
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                      h_t = o_t ⊙ tanh(c_t)

    ``weight_ih_l{k}`` is ``(4H, I_k)`` = [W_ii; W_if; W_ig; W_io].  BPTT carries both
    ``δh`` and ``δc`` backwards (equations in :mod:`nnx.nn.rnn_cells` and this module); the
    element-wise parts run in the backend's fused ``lstm_cell_forward/backward``.

    ``forward(x, hx=None) -> (output, (h_n, c_n))`` with ``hx = (h0, c0)``, each
    ``(L*D, N, H)`` (unbatched ``(L*D, H)``).  ``backward(d_output, d_state=None)`` with
    ``d_state = (d_hn, d_cn)`` (any of these may be ``None``) returns ``dx``, or
    ``(dx, (dh0, dc0))`` when ``hx`` was passed to forward.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)

    def forward(self, x, hx=None):
        x, unbatched = self._prepare(x)
        if hx is None:
            h0 = c0 = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTM: hx must be a tuple (h0, c0)")
            h0, c0 = hx
        n = x.shape[1]
        h0s = self._states(h0, n, unbatched, "h0")
        c0s = self._states(c0, n, unbatched, "c0")
        out, h_n, c_n = self._run(x, h0s, c0s)
        self.ctx.unbatched, self.ctx.has_state = unbatched, hx is not None
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        return self._to_layout(out, unbatched), (h_n, c_n)

    def backward(self, d_output, d_state=None):
        ctx = self.ctx
        unbatched = ctx.unbatched
        n = ctx.shape[1]
        d_out = (None if d_output is None else
                 self._from_layout(d_output, ctx.shape, unbatched, "d_output"))
        d_hn = d_cn = None
        if d_state is not None:
            if not isinstance(d_state, (tuple, list)) or len(d_state) != 2:
                raise TypeError("LSTM.backward: d_state must be a tuple (d_hn, d_cn)")
            d_hn, d_cn = d_state
            d_hn = None if d_hn is None else self._states(d_hn, n, unbatched, "d_hn")
            d_cn = None if d_cn is None else self._states(d_cn, n, unbatched, "d_cn")
        dx, dh0, dc0 = self._back(d_out, d_hn, d_cn)
        dx = self._to_layout(dx, unbatched)
        if not ctx.has_state:
            return dx
        if unbatched:
            dh0, dc0 = dh0[:, 0], dc0[:, 0]
        return dx, (dh0, dc0)
