"""Recurrent layers: fused cell ops, cells, RNN/LSTM/GRU (BPTT), sequence losses, truncated
BPTT and gradient clipping.  Cells and layers go through the layer harness (float64
gradchecks, called twice in one graph, dtype, strides, CPU vs CUDA) on tiny sizes; PyTorch as
optional oracle."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx.nn import (GRU, LSTM, RNN, GRUCell, LSTMCell, Module, RNNCell,
                    SequenceCrossEntropyLoss, SequenceMSELoss, detach_state)

MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
# (T, N, num_layers, bidirectional, batch_first, with_state)
CONFIGS = [
    (1, 1, 1, False, False, False),
    (3, 2, 1, False, True, True),
    (3, 1, 2, False, False, True),
    (1, 2, 2, True, False, False),
    (3, 2, 2, True, True, True),
]


def make(mode, *args, **kw):
    if mode.startswith("rnn"):
        return RNN(*args, nonlinearity=mode[4:], **kw)
    return {"lstm": LSTM, "gru": GRU}[mode](*args, **kw)


def torch_cls(torch, mode):
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(mode, torch.nn.RNN)


def host(be, a):
    return be.to_numpy(a)


class WithState(Module):
    """Flattens ``(x, h0[, c0])`` into separate inputs so nnx.gradcheck checks dh0/dc0 (a
    composite: its backward, one gradient per argument, comes from the tape)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.lstm = isinstance(inner, (LSTM, LSTMCell))

    def forward(self, x, h0, c0=None):
        return self.inner(x, (h0, c0)) if self.lstm else self.inner(x, h0)


# ------------------------------------------------------------------------ fused cell ops
def test_cell_ops_gradcheck_and_dtype(backend, rng):
    xp = backend.xp
    N, H = 2, 3
    gates = backend.asarray(rng.standard_normal((N, 4 * H)) * 2)
    c_prev = backend.asarray(rng.standard_normal((N, H)))

    def lstm(g, c):
        h, c2, saved = backend.lstm_cell_forward(g, c)
        return (h, c2), lambda dh, dc: backend.lstm_cell_backward(dh, dc, saved)

    nnx.gradcheck(lstm, (gates, c_prev))

    gi = backend.asarray(rng.standard_normal((N, 3 * H)))
    gh = backend.asarray(rng.standard_normal((N, 3 * H)))
    h_prev = backend.asarray(rng.standard_normal((N, H)))

    def gru(a, b, h):
        h2, saved = backend.gru_cell_forward(a, b, h)
        return h2, lambda dh: backend.gru_cell_backward(dh, saved)

    nnx.gradcheck(gru, (gi, gh, h_prev))

    # float32 stays float32, and huge pre-activations do not overflow (stable sigmoid)
    big = backend.asarray((rng.standard_normal((N, 4 * H)) * 1e4).astype(np.float32))
    c32 = backend.asarray(np.zeros((N, H), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, c, saved = backend.lstm_cell_forward(big, c32)
        dg, dc = backend.lstm_cell_backward(xp.ones_like(h), None, saved)
        h2, s2 = backend.gru_cell_forward(big[:, :3 * H], big[:, H:], c32)
        dgi, dgh, dhp = backend.gru_cell_backward(xp.ones_like(h2), s2)
    for a in (h, c, dg, dc, h2, dgi, dgh, dhp):
        assert a.dtype == np.float32 and bool(xp.isfinite(a).all())


# ------------------------------------------------------------------------ cells
@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
@pytest.mark.parametrize("with_state", [False, True])
def test_cell(backend, rng, kind, with_state):
    I, H, N = 3, 2, 2

    def cell(dt):
        return (LSTMCell(I, H, dtype=dt) if kind == "lstm" else GRUCell(I, H, dtype=dt)
                if kind == "gru" else RNNCell(I, H, nonlinearity=kind, dtype=dt))

    x = rng.standard_normal((N, I))
    h = rng.standard_normal((N, H))
    c = rng.standard_normal((N, H))
    once = () if with_state else ("cpu_vs_cuda",)
    if not with_state:
        check_layer(cell, (x,), skip=once)
    elif kind == "lstm":
        check_layer(lambda dt: WithState(cell(dt)), (x, h, c), skip=once)
    else:
        check_layer(cell, (x, h), skip=once)


@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
def test_cells_match_torch(backend, rng, kind):
    torch = pytest.importorskip("torch")
    I, H, N = 3, 4, 2
    if kind == "lstm":
        ours, theirs = LSTMCell(I, H), torch.nn.LSTMCell(I, H)
    elif kind == "gru":
        ours, theirs = GRUCell(I, H), torch.nn.GRUCell(I, H)
    else:
        ours, theirs = RNNCell(I, H, nonlinearity=kind), torch.nn.RNNCell(I, H, nonlinearity=kind)
    ours.double()
    theirs.double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x, h, c = (rng.standard_normal(s) for s in [(N, I), (N, H), (N, H)])
    xt, ht, ct = (torch.tensor(a, requires_grad=True) for a in (x, h, c))
    R, Rc = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    if kind == "lstm":
        ho, co = ours(x, (h, c))
        hto, cto = theirs(xt, (ht, ct))
        ((hto * torch.tensor(R)).sum() + (cto * torch.tensor(Rc)).sum()).backward()
        dx, (dh, dc) = ours.backward(R, Rc)
        np.testing.assert_allclose(host(backend, co), cto.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(host(backend, dc), ct.grad.numpy(), atol=1e-12)
    else:
        ho, hto = ours(x, h), theirs(xt, ht)
        (hto * torch.tensor(R)).sum().backward()
        dx, dh = ours.backward(R)
    np.testing.assert_allclose(host(backend, ho), hto.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(host(backend, dx), xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(host(backend, dh), ht.grad.numpy(), atol=1e-12)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(host(backend, p.grad), tp[name].grad.numpy(), atol=1e-12,
                                   err_msg=name)


def test_cell_unbatched_and_no_state_return(backend, rng):
    cell = GRUCell(3, 2).double()
    x = rng.standard_normal(3)
    h = cell(x)
    assert h.shape == (2,)
    dx = cell.backward(np.ones(2))
    assert dx.shape == (3,)
    hb = cell(x[None])
    np.testing.assert_allclose(host(backend, hb[0]), host(backend, h))
    lstm = LSTMCell(3, 2).double()
    h, c = lstm(x, (np.zeros(2), np.zeros(2)))
    dx, (dh, dc) = lstm.backward(np.ones(2))  # dc omitted = zero
    assert dx.shape == (3,) and dh.shape == (2,) and dc.shape == (2,)


# ------------------------------------------------------------------------ sequence layers
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "T{}N{}L{}{}{}{}".format(
    c[0], c[1], c[2], "bi" if c[3] else "", "bf" if c[4] else "", "h0" if c[5] else ""))
def test_layer(backend, rng, mode, cfg):
    T, N, L, bi, bf, with_state = cfg
    I, H = 2, 2

    def layer(dt):
        return make(mode, I, H, num_layers=L, bidirectional=bi, batch_first=bf, dtype=dt)

    D = 2 if bi else 1
    x = rng.standard_normal((N, T, I) if bf else (T, N, I))
    # the (simulated) CUDA comparison once per mode: every step is a kernel launch
    once = () if cfg == CONFIGS[1] else ("cpu_vs_cuda",)
    if not with_state:
        # output (out, h_n[, c_n]): d_hn/d_cn are checked too
        check_layer(layer, (x,), skip=once)
        return
    h0 = rng.standard_normal((L * D, N, H))
    c0 = rng.standard_normal((L * D, N, H))
    check_layer(lambda dt: WithState(layer(dt)), (x, h0, c0) if mode == "lstm" else (x, h0),
                skip=once)


@pytest.mark.parametrize("mode", MODES)
def test_layer_unbatched_no_bias(backend, rng, mode):
    m = make(mode, 2, 3, num_layers=2, bias=False, bidirectional=True)
    assert not any("bias" in n for n, _ in m.named_parameters())
    check_layer(lambda dt: make(mode, 2, 3, num_layers=2, bias=False, bidirectional=True,
                                dtype=dt), (rng.standard_normal((3, 2)),), skip=("cpu_vs_cuda",))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_backward_with_only_state_grad(backend, rng, mode):
    """Sequence classification uses h_n only: d_output may be None."""
    m = make(mode, 2, 3, num_layers=2).double()
    x = rng.standard_normal((3, 2, 2))

    def f(x_):
        out, state = m(x_)
        h_n = state[0] if mode == "lstm" else state
        def back(R):
            return m.backward(None, (R, None) if mode == "lstm" else R)
        return h_n, back

    nnx.gradcheck(f, (x,))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,bi,bf", [(1, False, False), (2, True, True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layers_match_torch(backend, rng, mode, L, bi, bf, dtype):
    torch = pytest.importorskip("torch")
    I, H, T, N = 3, 5, 4, 2
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf)
    if mode.startswith("rnn"):
        kw["nonlinearity"] = mode[4:]
    tdt = getattr(torch, dtype)
    theirs = torch_cls(torch, mode)(I, H, **kw).to(tdt)
    ours = make(mode, I, H, num_layers=L, bidirectional=bi, batch_first=bf, dtype=dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert v.shape == tuple(v2.shape), k
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    D = 2 if bi else 1
    x = rng.standard_normal((N, T, I) if bf else (T, N, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((L * D, N, H)).astype(dtype) for _ in range(2))
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    if mode == "lstm":
        out, (hn, cn) = ours(x, (h0, c0))
        ot, (hnt, cnt) = theirs(xt, (h0t, c0t))
    else:
        out, hn = ours(x, h0)
        ot, hnt = theirs(xt, h0t)
    Ro, Rh, Rc = (rng.standard_normal(s).astype(dtype) for s in (out.shape, hn.shape, hn.shape))
    J = (ot * torch.tensor(Ro)).sum() + (hnt * torch.tensor(Rh)).sum()
    if mode == "lstm":
        J = J + (cnt * torch.tensor(Rc)).sum()
        dx, (dh0, dc0) = ours.backward(Ro, (Rh, Rc))
    else:
        dx, dh0 = ours.backward(Ro, Rh)
    J.backward()
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == "float64" else dict(atol=2e-5, rtol=1e-4)
    assert out.dtype == np.dtype(dtype) and dx.dtype == np.dtype(dtype)
    close = np.testing.assert_allclose
    close(host(backend, out), ot.detach().numpy(), **tol)
    close(host(backend, hn), hnt.detach().numpy(), **tol)
    close(host(backend, dx), xt.grad.numpy(), **tol)
    close(host(backend, dh0), h0t.grad.numpy(), **tol)
    if mode == "lstm":
        close(host(backend, cn), cnt.detach().numpy(), **tol)
        close(host(backend, dc0), c0t.grad.numpy(), **tol)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        close(host(backend, p.grad), tp[name].grad.numpy(), err_msg=name, **tol)


@pytest.mark.parametrize("mode", MODES)
def test_unbatched_matches_batch_of_one(backend, rng, mode):
    m = make(mode, 3, 2, num_layers=2, bidirectional=True).double()
    x = rng.standard_normal((4, 3))
    h0 = rng.standard_normal((4, 2))
    state = (h0, h0 * 0.5) if mode == "lstm" else h0
    bstate = (h0[:, None], h0[:, None] * 0.5) if mode == "lstm" else h0[:, None]
    out, hn = m(x, state)
    assert out.shape == (4, 4)
    R = rng.standard_normal(out.shape)
    dx, dh0 = m.backward(R)
    outb, hnb = m(x[:, None], bstate)
    dxb, dh0b = m.backward(R[:, None])
    np.testing.assert_allclose(host(backend, out), host(backend, outb[:, 0]))
    np.testing.assert_allclose(host(backend, dx), host(backend, dxb[:, 0]))
    if mode == "lstm":
        assert hn[0].shape == (4, 2)
        np.testing.assert_allclose(host(backend, dh0[1]), host(backend, dh0b[1][:, 0]))
    else:
        assert hn.shape == (4, 2)
        np.testing.assert_allclose(host(backend, dh0), host(backend, dh0b[:, 0]))


def test_parameter_names_shapes_and_init():
    m = LSTM(3, 5, num_layers=2, bidirectional=True)
    sd = m.state_dict()
    assert list(sd)[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert list(sd)[4] == "weight_ih_l0_reverse"
    assert sd["weight_ih_l0"].shape == (20, 3) and sd["weight_ih_l1"].shape == (20, 10)
    assert sd["weight_hh_l1_reverse"].shape == (20, 5) and sd["bias_hh_l1"].shape == (20,)
    k = 1 / np.sqrt(5)
    for v in sd.values():
        assert v.dtype == np.float32 and np.abs(v).max() <= k and np.abs(v).max() > 0.8 * k
    assert GRU(3, 4).weight_hh_l0.shape == (12, 4) and RNN(3, 4).weight_ih_l0.shape == (4, 3)
    assert [n for n, _ in GRUCell(3, 4).named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def test_dropout_between_layers(backend, rng):
    m = GRU(2, 3, num_layers=2, dropout=0.5).double()
    x = rng.standard_normal((3, 2, 2))
    # reseeded before each forward: fixed masks per call (the CPU and CUDA generators differ)
    check_layer(lambda dt: GRU(2, 3, num_layers=2, dropout=0.5, dtype=dt), (x,),
                before_forward=lambda: nnx.backend.get().manual_seed(7), skip=("cpu_vs_cuda",))
    backend.manual_seed(7)
    out_train, _ = m(x)
    m.eval()
    out_eval, _ = m(x)
    assert not np.allclose(host(backend, out_train), host(backend, out_eval))
    with pytest.warns(UserWarning, match="no effect"):
        GRU(2, 3, dropout=0.5)


def test_bad_inputs_give_clear_errors():
    m = LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match="input_size = 3"):
        m(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 4\)"):
        m(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        m(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match="float32 parameters but got float64"):
        m(x.astype(np.float64))
    with pytest.raises(RuntimeError, match="before forward"):
        GRU(3, 4).backward(np.zeros((5, 2, 4), np.float32))
    out, _ = m(x)
    with pytest.raises(ValueError, match="d_output must have shape"):
        m.backward(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="sigmoid")


# ------------------------------------------------------------------------ truncated BPTT
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_truncated_bptt_stops_at_chunk_boundary(backend, rng, mode):
    m = make(mode, 2, 3).double()
    x = rng.standard_normal((6, 2, 2))
    R = rng.standard_normal((3, 2, 3))
    # chunked: the second chunk starts from the (detached) final state of the first
    _, s1 = m(x[:3])
    s1 = detach_state(s1)
    m.zero_grad()
    out2, _ = m(x[3:], s1)
    g_chunk = m.backward(R)
    grads_chunk = {n: host(backend, p.grad) for n, p in m.named_parameters()}
    # reference: a fresh forward of chunk 2 alone from the same state (no chunk-1 graph)
    other = make(mode, 2, 3).double()
    other.load_state_dict(m.state_dict())
    other(x[3:], s1)
    g_ref = other.backward(R)
    for n, p in other.named_parameters():
        np.testing.assert_allclose(grads_chunk[n], host(backend, p.grad), err_msg=n)
    np.testing.assert_allclose(host(backend, g_chunk[0]), host(backend, g_ref[0]))
    # ... and it differs from full BPTT over both chunks, which reaches chunk 1's steps
    m.zero_grad()
    out_full, _ = m(x)
    np.testing.assert_allclose(host(backend, out_full[3:]), host(backend, out2))
    R_full = np.concatenate([np.zeros((3, 2, 3)), R])
    dx_full = m.backward(R_full)
    assert float(np.abs(host(backend, dx_full[:3])).max()) > 1e-3
    assert not np.allclose(host(backend, m.weight_hh_l0.grad), grads_chunk["weight_hh_l0"])
    # detach_state copies: later in-place edits of the old state do not leak
    h = backend.asarray(rng.standard_normal((1, 2, 3)))
    d = detach_state((h, None))
    h[...] = 0
    assert d[1] is None and float(abs(host(backend, d[0])).sum()) > 0


# ------------------------------------------------------------------------ clipping
def test_clipping_bounds_update_on_exploding_rnn(backend, rng):
    T, H = 40, 4
    m = RNN(1, H, nonlinearity="relu").double()
    xp = backend.xp
    m.weight_hh_l0.data[...] = backend.asarray(1.5 * np.eye(H))   # spectral radius 1.5
    m.weight_ih_l0.data[...] = backend.asarray(np.abs(rng.standard_normal((H, 1))))
    m.bias_ih_l0.data[...] = 0.1
    m.bias_hh_l0.data[...] = 0.0
    x = np.abs(rng.standard_normal((T, 2, 1)))
    out, hn = m(x)
    crit = nnx.nn.MSELoss()
    crit(out, np.zeros(out.shape))
    m.zero_grad()
    m.backward(crit.backward())
    params = list(m.parameters())
    norm = nnx.optim.clip_grad_norm_(params, max_norm=1.0)
    assert norm > 1e4  # the exploding case: gradients grow like 1.5^T
    total = float(np.sqrt(sum(float((host(backend, p.grad) ** 2).sum()) for p in params)))
    assert total == pytest.approx(1.0, rel=1e-5)
    before = [host(backend, p.data).copy() for p in params]
    opt = nnx.optim.SGD(params, lr=0.1)
    opt.step()
    step = np.sqrt(sum(((host(backend, p.data) - b) ** 2).sum() for p, b in zip(params, before)))
    assert step <= 0.1 * (1 + 1e-5)
    assert bool(xp.isfinite(m.weight_hh_l0.data).all())


# ------------------------------------------------------------------------ sequence losses
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_mse_mask(backend, rng, batch_first):
    T, N, F = 4, 3, 2
    shape = (N, T, F) if batch_first else (T, N, F)
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    lengths = np.array([4, 1, 2])
    mask_tn = np.arange(T)[:, None] < lengths[None, :]
    mask = mask_tn.T if batch_first else mask_tn
    crit = SequenceMSELoss(batch_first=batch_first)
    tgt = backend.asarray(target)
    # the mask as third positional argument (constant); only the prediction has a gradient
    check_layer(lambda dt: SequenceMSELoss(batch_first=batch_first), (pred, target, mask),
                check_inputs=[0], skip=() if batch_first else ("cpu_vs_cuda",))
    loss = float(crit(pred, target, mask=mask))
    m3 = mask[..., None]
    assert loss == pytest.approx(((pred - target) ** 2 * m3).sum() / (m3.sum() * F))
    grad = host(backend, crit.backward())
    assert np.all(grad[~mask] == 0)
    # masked steps contribute nothing: perturbing them changes neither loss nor gradient
    pred2 = pred.copy()
    pred2[~mask] += 100.0
    assert float(crit(pred2, target, mask=mask)) == pytest.approx(loss)
    assert float(crit(pred, target, lengths=lengths)) == pytest.approx(loss)
    assert float(SequenceMSELoss()(pred, target)) == pytest.approx(((pred - target) ** 2).mean())
    crit_sum = SequenceMSELoss(reduction="sum", batch_first=batch_first)
    assert float(crit_sum(pred, target, mask=mask)) == pytest.approx(
        loss * m3.sum() * F)
    nnx.gradcheck(lambda p: (crit_sum(p, tgt, lengths=lengths), crit_sum.backward), (pred,))


@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_cross_entropy_mask(backend, rng, batch_first):
    T, N, C = 3, 2, 4
    shape = (N, T, C) if batch_first else (T, N, C)
    logits = rng.standard_normal(shape)
    labels = rng.integers(0, C, shape[:2])
    lengths = np.array([3, 1])
    mask_tn = np.arange(T)[:, None] < lengths[None, :]
    mask = mask_tn.T if batch_first else mask_tn
    labels_bad = labels.copy()
    labels_bad[~mask] = 99  # padded labels are never read
    crit = SequenceCrossEntropyLoss(batch_first=batch_first)
    lab = backend.asarray(labels_bad)
    check_layer(lambda dt: SequenceCrossEntropyLoss(batch_first=batch_first),
                (logits, labels_bad, mask), check_inputs=[0],
                skip=() if batch_first else ("cpu_vs_cuda",))
    loss = float(crit(logits, labels_bad, mask=mask))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    assert loss == pytest.approx(nll[mask].mean())
    grad = host(backend, crit.backward())
    assert np.all(grad[~mask] == 0)
    assert float(crit(logits, labels_bad, lengths=lengths)) == pytest.approx(loss)
    per = host(backend, SequenceCrossEntropyLoss(reduction="none", batch_first=batch_first)(
        logits, labels_bad, mask=mask))
    assert per.shape == labels.shape and np.all(per[~mask] == 0)
    np.testing.assert_allclose(per[mask], nll[mask], rtol=1e-10)
    ls = SequenceCrossEntropyLoss(batch_first=batch_first, label_smoothing=0.1)
    nnx.gradcheck(lambda z_: (ls(z_, lab, lengths=lengths), ls.backward), (logits,))


def test_sequence_losses_match_torch(rng):
    torch = pytest.importorskip("torch")
    T, N, C = 4, 3, 5
    logits = rng.standard_normal((T, N, C))
    labels = rng.integers(0, C, (T, N))
    lab_t = torch.tensor(labels)
    lab_t[2:, 1] = -100
    mask = lab_t.numpy() != -100
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, C),
                                            lab_t.reshape(-1), label_smoothing=0.2)
    ours = SequenceCrossEntropyLoss(label_smoothing=0.2)(logits, labels, mask=mask)
    assert float(ours) == pytest.approx(float(ref), rel=1e-10)


def test_sequence_loss_errors():
    with pytest.raises(ValueError, match=r"mask must have shape \(N, T\)"):
        SequenceMSELoss(batch_first=True)(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)),
                                          mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="outside"):
        SequenceCrossEntropyLoss()(np.zeros((2, 1, 3)), np.array([[0], [3]]))
    with pytest.raises(TypeError, match="integer class labels"):
        SequenceCrossEntropyLoss()(np.zeros((2, 1, 3)), np.zeros((2, 1)))
