"""Per-call saved state, composites without a hand-written backward (the tape), no_grad, the
record's lifecycle (no record, double backward, retain_graph) and the functional operations.

Gradients are proven by float64 finite differences (nnx.gradcheck); the models at the end
also train for real."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import nnx
import nnx.models  # noqa: F401 (nnx.models.get)
from nnx import nn, optim
from nnx.nn import functional as F


# ---------------------------------------------------------------------- the reported trap
def test_tanh_instance_used_twice_has_correct_gradients(rng):
    """The issue's trial: one Tanh instance used twice in a Sequential.  Before per-call
    state the second call overwrote the first call's output and all input gradients were
    wrong; now gradcheck passes, and so does the same with a shared Linear."""
    nnx.manual_seed(0)
    t = nn.Tanh()
    model = nn.Sequential(nn.Linear(3, 4), t, nn.Linear(4, 4), t).double()
    nnx.gradcheck(model, (rng.standard_normal((2, 3)),))
    lin = nn.Linear(4, 4, dtype=np.float64)
    nnx.gradcheck(nn.Sequential(lin, nn.Tanh(), lin), (rng.standard_normal((3, 4)),))


class SharedThrice(nn.Module):
    """One Linear (weight sharing) and one activation called three times per forward."""

    def __init__(self, dtype=None):
        super().__init__()
        self.inp = nn.Linear(3, 5, dtype=dtype)
        self.shared = nn.Linear(5, 5, dtype=dtype)
        self.act = nn.Tanh()
        self.out = nn.Linear(5, 2, dtype=dtype)

    def forward(self, x):
        h = self.act(self.inp(x))
        for _ in range(3):
            h = self.act(self.shared(h))
        return self.out(h)


def test_weight_sharing_three_calls(rng):
    nnx.manual_seed(1)
    model = SharedThrice(np.float64)
    nnx.gradcheck(model, (rng.standard_normal((4, 3)),))
    # the shared weight's gradient is the sum of the three calls' (unrolled by hand)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    model.zero_grad()
    model(x)
    model.backward(dy)
    w, b = model.shared.weight.data, model.shared.bias.data
    hs = [np.tanh(x @ model.inp.weight.data.T + model.inp.bias.data)]
    for _ in range(3):
        hs.append(np.tanh(hs[-1] @ w.T + b))
    g = (dy @ model.out.weight.data) * (1 - hs[3] ** 2)
    dw = np.zeros_like(w)
    for k in (2, 1, 0):
        dw += g.T @ hs[k]
        g = (g @ w) * (1 - hs[k] ** 2)
    # float64, 3 calls of 4-row sums: far inside 1e-12 relative
    np.testing.assert_allclose(model.shared.weight.grad, dw, rtol=1e-12, atol=1e-14)


def test_weight_sharing_matches_torch(rng):
    torch = pytest.importorskip("torch")
    nnx.manual_seed(2)
    model = SharedThrice(np.float64)
    tm = {n: torch.tensor(p.data, requires_grad=True) for n, p in model.named_parameters()}
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    model(x)
    model.backward(dy)
    lin = torch.nn.functional.linear
    h = torch.tanh(lin(torch.tensor(x), tm["inp.weight"], tm["inp.bias"]))
    for _ in range(3):
        h = torch.tanh(lin(h, tm["shared.weight"], tm["shared.bias"]))
    lin(h, tm["out.weight"], tm["out.bias"]).backward(torch.tensor(dy))
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tm[n].grad.numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=n)


# ---------------------------------------------------------------------- record lifecycle
def _mlp():
    nnx.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("make", [_mlp, lambda: nn.Linear(3, 2, dtype=np.float64)],
                         ids=["composite", "layer"])
def test_second_backward_raises_unless_retained(rng, make):
    m = make()
    x = rng.standard_normal((5, 3))
    dy = rng.standard_normal((5, 2))
    m(x)
    m.zero_grad()
    m.backward(dy)
    with pytest.raises(RuntimeError, match="freed by a previous backward.*retain_graph"):
        m.backward(dy)
    m(x)                                       # a new call is a new record
    m.zero_grad()
    m.backward(dy, retain_graph=True)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    m.backward(dy)                             # the retained record, a second time
    for n, p in m.named_parameters():          # same computation twice: exactly doubled
        np.testing.assert_array_equal(p.grad, 2 * once[n], err_msg=n)
    with pytest.raises(RuntimeError, match="freed"):
        m.backward(dy)
    with nnx.no_grad():                        # records nothing: the error says why
        m(x)
    with pytest.raises(RuntimeError, match="freed.*no_grad"):
        m.backward(dy)


def test_copies_keep_the_used_record_marker(rng):
    import copy
    import pickle
    m = _mlp()
    y = m(rng.standard_normal((2, 3)))
    m.backward(np.ones_like(y))
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with pytest.raises(RuntimeError, match="freed"):
            other.backward(np.ones_like(y))


@pytest.mark.parametrize("make", [_mlp, lambda: nn.Tanh()], ids=["composite", "layer"])
def test_backward_without_record_raises(rng, make):
    m = make()
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.ones((2, 2)))
    with nnx.no_grad():
        m(rng.standard_normal((2, 3)))
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones((2, 2)))


def test_hand_written_backward_keeps_working(rng):
    """A user module that prefers to write backward itself (children called at top level
    inside its forward keep their own records)."""
    class Manual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4, dtype=np.float64), nn.Linear(4, 2, dtype=np.float64)
            self.act = nn.Sigmoid()

        def forward(self, x):
            return self.b(self.act(self.a(x)))

        def backward(self, dy):
            return self.a.backward(self.act.backward(self.b.backward(dy)))

    nnx.manual_seed(4)
    nnx.gradcheck(Manual(), (rng.standard_normal((3, 3)),))
    # inside a composite it is one node per call: called twice, each call its own record
    shared = Manual()

    class UsesManualTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.m, self.mid = shared, nn.Linear(2, 3, dtype=np.float64)

        def forward(self, x):
            return F.add(self.m(x), self.m(self.mid(self.m(x))))

    nnx.gradcheck(UsesManualTwice(), (rng.standard_normal((2, 3)),))


# ---------------------------------------------------------------------- no_grad
def test_no_grad_keeps_nothing(rng):
    nnx.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)     # 49 KB of input
    model(x)                                                        # warm up (kernels)
    model.backward(np.ones((16, 10), np.float32))

    def retained(grad_mode):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            with (nnx.enable_grad() if grad_mode else nnx.no_grad()):
                y = model(x)
            del y
            return tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()

    kept_with_grad = retained(True)
    kept_without = retained(False)
    # with grad the record holds at least the conv's saved input (49 KB) and the ReLU's
    # output; under no_grad nothing stays (a few hundred bytes of bookkeeping at most)
    assert kept_with_grad > x.nbytes
    assert kept_without < 4_096, kept_without
    # the no_grad call left the record of the grad-mode call before it in place
    assert model.backward(np.ones((16, 10), np.float32)).shape == x.shape


def test_no_grad_forward_values_match_and_modes(rng):
    nnx.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).double()
    x = rng.standard_normal((6, 3))
    nnx.manual_seed(9)
    y1 = model(x)
    nnx.manual_seed(9)
    with nnx.no_grad():
        assert not nnx.is_grad_enabled()
        y2 = model(x)                 # dropout and batch norm still compute (train mode)
        with nnx.enable_grad():
            assert nnx.is_grad_enabled()
        assert not nnx.is_grad_enabled()
    assert nnx.is_grad_enabled()
    np.testing.assert_array_equal(y1, y2)     # same computation, same order: exact
    assert int(model[2].num_batches_tracked) == 2

    @nnx.no_grad()
    def infer(a):
        return nnx.is_grad_enabled(), model(a)

    assert infer(x)[0] is False and nnx.is_grad_enabled()
    assert nnx.inference_mode is nnx.no_grad


def test_grad_mode_is_per_thread():
    seen = []
    with nnx.no_grad():
        t = threading.Thread(target=lambda: seen.append(nnx.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_predict_records_nothing(rng):
    from nnx.evaluate import predict
    nnx.manual_seed(7)
    model = nnx.models.get("simple_cnn", in_channels=1, num_classes=3, image_size=8)
    predict(model, rng.standard_normal((5, 1, 8, 8)).astype(np.float32), batch_size=2)
    assert all(m.ctx is None for m in model.modules())


# ---------------------------------------------------------------------- input_grad=False
def test_input_grad_false_skips_and_matches(rng, monkeypatch):
    """A composite with a skip branch: parameter gradients equal the input_grad=True ones
    (same computation, same order: exact), None is returned, and the layers that only see
    the input get backward_params (the first Conv2d's col2im is skipped)."""
    nnx.manual_seed(8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64)
            self.act = nn.ReLU()
            self.head = nn.Linear(5 * 4 * 4, 2, dtype=np.float64)

        def forward(self, x):
            h = F.cat([self.act(self.conv(x)), F.mul(x, 2.0)], 1)
            return self.head(F.flatten(h, 1))

    net = Net()
    x, dy = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2))
    net(x)
    dx = net.backward(dy)
    want = {n: p.grad.copy() for n, p in net.named_parameters()}
    calls = []
    real = nn.Conv2d.backward_params
    monkeypatch.setattr(nn.Conv2d, "backward_params",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    net.zero_grad()
    net(x)
    assert net.backward(dy, input_grad=False) is None
    assert calls == [1] and dx.shape == x.shape
    for n, p in net.named_parameters():
        np.testing.assert_array_equal(p.grad, want[n], err_msg=n)


# ---------------------------------------------------------------------- models by hand
def _bilinear_free_upsample(h):
    """Nearest-neighbour 2x upsampling out of recorded operations (stack + reshape)."""
    n, c, hh, ww = h.shape
    h = F.reshape(F.stack([h, h], 4), (n, c, hh, 2 * ww))
    return F.reshape(F.stack([h, h], 3), (n, c, 2 * hh, 2 * ww))


class TinyUNet(nn.Module):
    """Encoder-decoder with skip concatenations and no hand-written backward."""

    def __init__(self, c=2, dtype=None):
        super().__init__()
        self.enc1 = nn.Conv2d(1, c, 3, padding=1, dtype=dtype)
        self.enc2 = nn.Conv2d(c, 2 * c, 3, padding=1, dtype=dtype)
        self.pool, self.act = nn.MaxPool2d(2), nn.ReLU()
        self.mid = nn.Conv2d(2 * c, 2 * c, 3, padding=1, dtype=dtype)
        self.dec2 = nn.Conv2d(4 * c, c, 3, padding=1, dtype=dtype)
        self.dec1 = nn.Conv2d(2 * c, 1, 1, dtype=dtype)

    def forward(self, x):
        e1 = self.act(self.enc1(x))                       # (N, c, H, W)
        e2 = self.act(self.enc2(self.pool(e1)))           # (N, 2c, H/2, W/2)
        m = self.act(self.mid(self.pool(e2)))             # (N, 2c, H/4, W/4)
        d2 = self.act(self.dec2(F.cat([_bilinear_free_upsample(m), e2], 1)))
        return self.dec1(F.cat([_bilinear_free_upsample(d2), e1], 1))


def test_unet_with_skip_concatenations_gradcheck_and_trains(rng):
    nnx.manual_seed(10)
    nnx.gradcheck(TinyUNet(dtype=np.float64), (rng.standard_normal((2, 1, 4, 4)),),
                  atol=1e-6, rtol=1e-4)
    # denoising: recover clean blobs from noisy ones
    model = TinyUNet(c=4)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.MSELoss()
    yy, xx = np.mgrid[:8, :8]
    losses = []
    for step in range(60):
        cx, cy = rng.uniform(2, 6, (2, 16, 1, 1))
        clean = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4)[:, None].astype(np.float32)
        noisy = clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float32)
        loss = crit(model(noisy), clean)
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
        losses.append(float(loss))
    # measured: 0.15 -> 0.01 (seed 10); the noise alone has MSE 0.09
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]) and np.mean(losses[-10:]) < 0.03


class CharLM(nn.Module):
    """An LSTM language model written as a loop over time in forward (one LSTMCell called
    T times), with no hand-written backward."""

    def __init__(self, vocab, hidden, dtype=None):
        super().__init__()
        self.vocab = vocab
        self.cell = nn.LSTMCell(vocab, hidden, dtype=dtype)
        self.head = nn.Linear(hidden, vocab, dtype=dtype)

    def forward(self, x):                       # x: one-hot (T, N, V)
        state, logits = None, []
        for t in range(x.shape[0]):
            state = self.cell(F.select(x, 0, t), state)
            logits.append(self.head(state[0]))
        return F.stack(logits, 0)               # (T, N, V)


def test_lstm_language_model_loop_gradcheck_and_trains(rng):
    nnx.manual_seed(11)
    nnx.gradcheck(CharLM(4, 3, dtype=np.float64), (rng.standard_normal((3, 2, 4)),))
    # learn to continue the repeating sequence 0 1 2 3 0 1 2 3 ... from any phase
    V, T, N = 4, 8, 16
    model = CharLM(V, 16)
    opt = optim.Adam(model.parameters(), lr=3e-2)
    crit = nn.SequenceCrossEntropyLoss()
    eye = np.eye(V, dtype=np.float32)
    for step in range(80):
        seq = (rng.integers(0, V, N)[None, :] + np.arange(T + 1)[:, None]) % V
        logits = model(eye[seq[:-1]])
        loss = crit(logits, seq[1:])
        opt.zero_grad()
        model.backward(crit.backward())
        opt.step()
    seq = (np.arange(N)[None, :] + np.arange(T + 1)[:, None]) % V
    with nnx.no_grad():
        pred = model(eye[seq[:-1]]).argmax(axis=-1)
    assert (pred == seq[1:]).mean() > 0.95         # measured: 1.0 after 80 steps


# ---------------------------------------------------------------------- functional ops
class Fn(nn.Module):
    """A composite around a function of its inputs (so gradcheck goes through the tape)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _r(rng, *shape):
    return rng.standard_normal(shape)


OPS = {
    "add": (lambda a, b: F.add(a, b), [(3, 4), (3, 4)]),
    "add_broadcast": (lambda a, b: F.add(a, b), [(2, 3, 4), (1, 4)]),
    "add_scalar": (lambda a: F.add(a, 2.5), [(3, 2)]),
    "sub_broadcast": (lambda a, b: F.sub(a, b), [(3, 1), (2, 3, 4)]),
    "mul_broadcast": (lambda a, b: F.mul(a, b), [(2, 3, 4), (3, 1)]),
    "mul_scalar": (lambda a: F.mul(a, -1.5), [(3, 2)]),
    "div": (lambda a, b: F.div(a, F.add(F.mul(b, b), 1.0)), [(3, 4), (1, 4)]),
    "matmul": (lambda a, b: F.matmul(a, b), [(3, 4), (4, 2)]),
    "matmul_batched": (lambda a, b: F.matmul(a, b), [(2, 3, 4), (4, 5)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    "cat": (lambda a, b, c: F.cat([a, b, c], 1), [(2, 1, 3), (2, 4, 3), (2, 2, 3)]),
    "stack": (lambda a, b: F.stack([a, b], -1), [(2, 3), (2, 3)]),
    "split": (lambda a: F.split(a, 2, 1), [(2, 5)]),
    "split_sizes": (lambda a: F.split(a, [1, 3], 0)[1], [(4, 2)]),   # piece 0 unused
    "chunk": (lambda a: F.chunk(a, 3, -1), [(2, 7)]),
    "narrow": (lambda a: F.narrow(a, 1, 1, 2), [(3, 4)]),
    "select": (lambda a: F.select(a, -1, 2), [(3, 4)]),
    "clone": (lambda a: F.clone(a), [(3, 4)]),
    "reshape": (lambda a: F.reshape(a, (4, -1)), [(2, 3, 2)]),
    "flatten": (lambda a: F.flatten(a, 1), [(2, 3, 2)]),
    "transpose": (lambda a: F.transpose(a, 0, 2), [(2, 3, 4)]),
    "permute": (lambda a: F.permute(a, (2, 0, 1)), [(2, 3, 4)]),
    "sum_all": (lambda a: F.sum(a), [(3, 4)]),
    "sum_dim": (lambda a: F.sum(a, 1), [(2, 3, 4)]),
    "mean_keepdim": (lambda a: F.mean(a, (0, 2), keepdim=True), [(2, 3, 4)]),
    "relu": (lambda a: F.relu(a), [(3, 4)]),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.2), [(3, 4)]),
    "tanh": (lambda a: F.tanh(a), [(3, 4)]),
    "sigmoid": (lambda a: F.sigmoid(a), [(3, 4)]),
    "softmax": (lambda a: F.softmax(a, 0), [(3, 4)]),
    "log_softmax": (lambda a: F.log_softmax(a, -1), [(3, 4)]),
    "dropout": (lambda a: F.dropout(a, 0.4), [(3, 4)]),
}


@pytest.mark.parametrize("name", list(OPS))
def test_functional_op_gradcheck(backend, rng, name):
    fn, shapes = OPS[name]
    xs = [_r(rng, *s) for s in shapes]
    for x in xs:
        x[np.abs(x) < 1e-3] = 0.5                 # away from relu kinks
    nnx.gradcheck(Fn(fn), tuple(xs), before_forward=lambda: nnx.backend.get().manual_seed(3))


def test_functional_ops_outside_a_composite_just_compute(rng):
    a, b = _r(rng, 3, 4), _r(rng, 3, 4)
    np.testing.assert_array_equal(F.add(a, b), a + b)
    np.testing.assert_array_equal(F.cat([a, b], 0), np.concatenate([a, b]))
    np.testing.assert_array_equal(F.mean(a, 1), a.mean(axis=1))
    np.testing.assert_array_equal(F.transpose(a, 0, 1), a.T)
    assert [p.shape for p in F.chunk(np.zeros((5, 2)), 2)] == [(3, 2), (2, 2)]
    assert F.dropout(a, 0.5, training=False) is a


def test_parameters_in_functional_ops_get_gradients(rng):
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(rng.standard_normal((4, 3)))
            self.scale = nn.Parameter(rng.standard_normal((4,)))

        def forward(self, x):
            return F.mul(F.linear(x, self.w), self.scale)

    nnx.gradcheck(Affine(), (rng.standard_normal((5, 3)),))


def test_functional_errors():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.matmul(np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="do not add up"):
        F.split(np.ones((4, 2)), [1, 2])
    with pytest.raises(ValueError, match="dropout probability"):
        F.dropout(np.ones(3), 1.5)


def test_tape_handles_identity_and_in_place_layers(rng):
    """Identity returns its input and an in-place ReLU overwrites it: values are tracked
    per call, not per array, so both still get the right gradients."""
    nnx.manual_seed(12)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3, dtype=np.float64)
            self.idt, self.relu = nn.Identity(), nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.lin(x)
            return F.add(self.idt(h), self.relu(self.lin(self.idt(h))))

    x = rng.standard_normal((4, 3))
    nnx.gradcheck(Net(), (x,))
