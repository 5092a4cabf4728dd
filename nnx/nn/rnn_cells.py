r"""Single-step recurrent cells (``RNNCell``, ``LSTMCell``, ``GRUCell``) and the per-step
math shared with the sequence layers in :mod:`nnx.nn.rnn`.

Equations (PyTorch's exact math and gate order; ``σ`` is the logistic sigmoid, ``⊙`` the
element-wise product, rows of ``x``/``h`` are batch entries so ``W x`` is written ``x Wᵀ``)::

    RNN :  h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)                     act = tanh | relu
    LSTM:  [a_i a_f a_g a_o] = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh            (W_ih: (4H, I))
           i = σ(a_i)  f = σ(a_f)  g = tanh(a_g)  o = σ(a_o)
           c' = f ⊙ c + i ⊙ g          h' = o ⊙ tanh(c')
    GRU :  gi = x W_ihᵀ + b_ih,  gh = h W_hhᵀ + b_hh   (each (N, 3H), blocks r, z, n)
           r = σ(gi_r + gh_r)   z = σ(gi_z + gh_z)   n = tanh(gi_n + r ⊙ gh_n)
           h' = (1 - z) ⊙ n + z ⊙ h

(The seeds write the GRU update as ``(1-z)h + z ñ`` and put ``r`` on ``h`` before the
matrix product; PyTorch — and nnx — use the form above.)

Backward of one step, given ``δh = dL/dh'`` (and ``δc = dL/dc'`` for the LSTM)::

    RNN : a = δh ⊙ act'(·)   (tanh: 1 - h'²,  relu: 𝟙[h' > 0])   dgi = dgh = a
    LSTM: δc_tot = δc + δh ⊙ o ⊙ (1 - tanh²c')
          da_i = δc_tot⊙g⊙i(1-i)   da_f = δc_tot⊙c⊙f(1-f)   da_g = δc_tot⊙i⊙(1-g²)
          da_o = δh⊙tanh(c')⊙o(1-o)   dgi = dgh = da   dc = δc_tot ⊙ f
    GRU : a_n = δh⊙(1-z)⊙(1-n²)   a_z = δh⊙(h-n)⊙z(1-z)   a_r = a_n⊙gh_n⊙r(1-r)
          dgi = [a_r a_z a_n]   dgh = [a_r a_z a_n⊙r]   (direct term δh⊙z goes to dh)
    all :  dx = dgi W_ih      dh = dgh W_hh (+ direct term)
           dW_ih += dgiᵀ x    db_ih += Σ_rows dgi    dW_hh += dghᵀ h    db_hh += Σ_rows dgh

The element-wise LSTM/GRU parts run as the backend's fused cell operations
(``lstm_cell_forward/backward``, ``gru_cell_forward/backward``); the tanh RNN uses
``backend.tanh_backward``.
"""
from __future__ import annotations

import math

from .. import backend as B
from .. import dtypes, init
from .inputs import as_input
from .module import Module
from .parameter import Parameter

# gates per mode: rows of W_ih / W_hh are (gates * hidden_size)
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def make_params(module, suffix, input_size, hidden_size, mode, bias, dtype):
    """Create ``weight_ih{suffix}, weight_hh{suffix}[, bias_ih{suffix}, bias_hh{suffix}]`` on
    ``module`` in PyTorch's order, initialised ``U(-1/sqrt(H), 1/sqrt(H))``."""
    xp = B.get().xp
    G = GATES[mode] * hidden_size
    k = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    shapes = [("weight_ih", (G, input_size)), ("weight_hh", (G, hidden_size))]
    if bias:
        shapes += [("bias_ih", (G,)), ("bias_hh", (G,))]
    for name, shape in shapes:
        p = Parameter(xp.empty(shape, dtype=dtype))
        init.uniform_(p, -k, k)
        setattr(module, name + suffix, p)


def input_projection(x2, w_ih, b_ih):
    """``x2 (M, I) @ W_ihᵀ + b_ih`` -> ``(M, G)``: one GEMM for all time steps at once."""
    gi = x2 @ w_ih.T
    if b_ih is not None:
        gi += b_ih
    return gi


def step_forward(mode, be, gi, h, c, w_hh, b_hh):
    """One recurrent step given the input projection ``gi`` (bias included).

    Returns ``(h', c' or None, saved)``."""
    gh = h @ w_hh.T
    if b_hh is not None:
        gh += b_hh
    if mode == "LSTM":
        gh += gi
        return be.lstm_cell_forward(gh, c)
    if mode == "GRU":
        h_new, saved = be.gru_cell_forward(gi, gh, h)
        return h_new, None, saved
    gh += gi
    h_new = be.xp.tanh(gh) if mode == "RNN_TANH" else be.relu(gh)
    return h_new, None, h_new


def step_backward(mode, be, dh, dc, saved, w_hh):
    """Back through one step.  Returns ``(dgi, dgh, dh_prev, dc_prev or None)`` where
    ``dgi``/``dgh`` are the gradients of the input/recurrent projections (bias included)."""
    if mode == "LSTM":
        dgates, dc_prev = be.lstm_cell_backward(dh, dc, saved)
        return dgates, dgates, dgates @ w_hh, dc_prev
    if mode == "GRU":
        dgi, dgh, dh_direct = be.gru_cell_backward(dh, saved)
        dh_direct = dh_direct + dgh @ w_hh
        return dgi, dgh, dh_direct, None
    if mode == "RNN_TANH":
        a = be.tanh_backward(saved, dh)
    else:
        a = be.relu_backward(saved, dh)
    return a, a, a @ w_hh, None


def check_mode(nonlinearity):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class _CellBase(Module):
    """One time step.  Each call saves its own step, so a cell called once per time step
    inside a model's ``forward`` backpropagates through all of them (the model's tape
    calls each step's backward in reverse); the sequence layers ``RNN``/``LSTM``/``GRU``
    do the same loop with one input GEMM for all steps."""

    _mode = None

    def __init__(self, input_size, hidden_size, bias=True, dtype=None, mode=None):
        super().__init__()
        if mode is not None:
            self._mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.bias = bool(bias)
        make_params(self, "", self.input_size, self.hidden_size, self._mode, self.bias,
                    dtypes.resolve(dtype))

    def _b(self, name):
        return getattr(self, name).data if self.bias else None

    def _state(self, s, x, what):
        """Validate/convert a state to ``(N, H)``; zeros when ``None``."""
        name = type(self).__name__
        xp = B.get().xp
        n = x.shape[0]
        if s is None:
            return xp.zeros((n, self.hidden_size), dtype=x.dtype)
        s = as_input(s, self.weight_ih.data.dtype, name)
        want = (n, self.hidden_size) if not self.ctx.unbatched else (self.hidden_size,)
        if tuple(s.shape) != want:
            raise ValueError(f"{name}: {what} must have shape {want} for input of shape "
                             f"{tuple(self.ctx.x_shape)}, got {tuple(s.shape)}")
        return xp.ascontiguousarray(s.reshape(n, self.hidden_size))

    def _input(self, x):
        name = type(self).__name__
        x = as_input(x, self.weight_ih.data.dtype, name)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{name}({self.input_size}, {self.hidden_size}) expects input "
                             f"(N, {self.input_size}) or ({self.input_size},), got shape "
                             f"{tuple(x.shape)}")
        self.ctx.x_shape = x.shape
        self.ctx.unbatched = x.ndim == 1
        return B.get().xp.ascontiguousarray(x.reshape(-1, self.input_size))

    def _step(self, x, h, c, has_state):
        be = B.get()
        gi = input_projection(x, self.weight_ih.data, self._b("bias_ih"))
        h_new, c_new, saved = step_forward(self._mode, be, gi, h, c, self.weight_hh.data,
                                           self._b("bias_hh"))
        self.ctx.x, self.ctx.h, self.ctx.saved, self.ctx.has_state = x, h, saved, has_state
        return h_new, c_new

    def _back(self, dh, dc):
        be = B.get()
        xp = be.xp
        ctx = self.ctx
        x, h, saved, has_state, unbatched = ctx.x, ctx.h, ctx.saved, ctx.has_state, ctx.unbatched
        shape = h.shape
        if dh is None:
            dh = xp.zeros(shape, dtype=h.dtype)
        else:
            dh = be.asarray(dh).astype(h.dtype, copy=False).reshape(shape)
        if dc is not None:
            dc = be.asarray(dc).astype(h.dtype, copy=False).reshape(shape)
        elif self._mode == "LSTM":
            dc = xp.zeros(shape, dtype=h.dtype)  # the cell-op contract takes arrays
        dgi, dgh, dh_prev, dc_prev = step_backward(self._mode, be, dh, dc, saved,
                                                   self.weight_hh.data)
        self.weight_ih.accumulate(dgi.T @ x)
        self.weight_hh.accumulate(dgh.T @ h)
        if self.bias:
            self.bias_ih.accumulate(dgi.sum(axis=0))
            self.bias_hh.accumulate(dgh.sum(axis=0))
        dx = dgi @ self.weight_ih.data
        if unbatched:
            dx, dh_prev = dx[0], dh_prev[0]
            dc_prev = None if dc_prev is None else dc_prev[0]
        return dx, dh_prev, dc_prev, has_state

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


class _SingleStateCell(_CellBase):
    """Cells whose state is ``h`` alone (RNN, GRU): ``forward(x, h=None) -> h'`` and
    ``backward(dh) -> dx`` or ``(dx, dh_prev)`` when ``h`` was passed."""

    def forward(self, x, h=None):
        x2 = self._input(x)
        h2 = self._state(h, x2, "h")
        out, _ = self._step(x2, h2, None, h is not None)
        return out[0] if self.ctx.unbatched else out

    def backward(self, dh):
        dx, dh_prev, _, has_state = self._back(dh, None)
        return (dx, dh_prev) if has_state else dx


class RNNCell(_SingleStateCell):
    """Elman cell ``h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)`` (see the module docstring
    for the backward equations).

    ``forward(x, h=None) -> h'`` with ``x (N, I)`` or unbatched ``(I,)``, ``h`` like ``h'``
    (``(N, H)``/``(H,)``, zeros when omitted).
    ``backward(dh) -> dx`` when ``h`` was omitted, else ``(dx, dh_prev)``.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=None):
        super().__init__(input_size, hidden_size, bias, dtype, mode=check_mode(nonlinearity))
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTMCell(_CellBase):
    """LSTM cell (gates i, f, g, o; equations in the module docstring).

    ``forward(x, hx=None) -> (h', c')`` with ``hx = (h, c)`` (zeros when omitted).
    ``backward(dh, dc=None) -> dx`` when ``hx`` was omitted, else ``(dx, (dh_prev, dc_prev))``
    (the gradient mirrors the inputs' structure).  ``dh`` or ``dc`` may be ``None`` (zero).
    """

    _mode = "LSTM"

    def forward(self, x, hx=None):
        x2 = self._input(x)
        if hx is None:
            h = c = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTMCell: hx must be a tuple (h, c)")
            h, c = hx
        h2, c2 = self._state(h, x2, "h"), self._state(c, x2, "c")
        h_new, c_new = self._step(x2, h2, c2, hx is not None)
        if self.ctx.unbatched:
            return h_new[0], c_new[0]
        return h_new, c_new

    def backward(self, dh, dc=None):
        dx, dh_prev, dc_prev, has_state = self._back(dh, dc)
        return (dx, (dh_prev, dc_prev)) if has_state else dx


class GRUCell(_SingleStateCell):
    """GRU cell (gates r, z, n; reset applied to ``W_hn h + b_hn``; equations in the module
    docstring).

    ``forward(x, h=None) -> h'``; ``backward(dh) -> dx`` when ``h`` was omitted, else
    ``(dx, dh_prev)``.
    """

    _mode = "GRU"

