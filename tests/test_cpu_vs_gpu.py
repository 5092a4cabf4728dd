"""Model-level CPU vs CUDA comparisons: the same seed builds the same weights on both backends
(initialisation draws from the host generator), then forward, loss, backward and optimizer
steps must agree to float32 tolerance — outputs, loss, input gradient, every parameter
gradient, buffers, updated weights.

Runs twice, like ``test_backend_cuda.py``:
* ``cuda`` (marked ``gpu``): the real CupyBackend on a GPU (skipped with the reason here);
* ``sim``: ``tests/cuda_sim/fake_cupy.py`` as ``cupy``; its arrays reject host NumPy arrays
  mixed into device math, so layers that would break on CuPy fail here too.  The sim backend
  instance is registered as ``"cuda"`` for the module and the registry restored afterwards.
Sizes are tiny: every simulated kernel launch runs real threads.
"""
from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import nnx
import nnx.backend as B
import nnx.models  # noqa: F401  (nnx.models.get)
from nnx import nn
from nnx.backend.errors import BackendMismatchError
from nnx.optim import SGD, Adam, AdamW, RMSprop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import sim_backend  # noqa: E402

SEED = 7


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module", params=[pytest.param("cuda", marks=pytest.mark.gpu), "sim"])
def gpu(request, tmp_path_factory):
    """The 'cuda' backend instance (real, or CupyBackend over fake_cupy registered as 'cuda')."""
    if request.param == "cuda":
        try:
            yield B.create("cuda")
        except Exception as exc:  # same logic as conftest's backend fixture
            pytest.skip(f"cuda backend unavailable: {str(exc).splitlines()[0]}")
        return
    with sim_backend.module_backend(tmp_path_factory, "fake_cupy_build_models") as be, \
            sim_backend.registered_as_cuda(be):
        yield be


@contextlib.contextmanager
def on(name):
    """Make backend ``name`` active for the block, then restore the previous one."""
    previous = B.get().name
    be = B.use(name)
    try:
        yield be
    finally:
        B.use(previous)


def host(be, a, what):
    assert be.is_native(a), \
        f"{what}: {type(a).__name__} is not an array of {be.name!r}"
    return np.asarray(be.to_numpy(a))


def assert_close(got, want, what, rtol=1e-4, atol=1e-5):
    """float32 tolerances; ``atol`` scaled by the reference's magnitude (sums of many terms).
    They also cover the GPU's float32 arithmetic (modelled by the simulator): FMA contraction
    changes each multiply-add by <= 1 ulp (6e-8 relative) and -ftz=true flushes denormals
    (< 1.2e-38, far below atol)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def compare(res_gpu, res_cpu, **tol):
    assert list(res_gpu) == list(res_cpu)
    for key in res_cpu:
        assert_close(res_gpu[key], res_cpu[key], key, **tol)


def run_model(name, build, x, target, make_loss, *, train=True, optim=None, steps=2,
              warmup=None):
    """Seeded build on backend ``name``; forward, loss, backward, ``steps`` optimizer steps.
    Returns host copies of everything to compare, in a fixed order."""
    with on(name) as be:
        nnx.manual_seed(SEED)
        model = build()
        if warmup is not None:  # e.g. batch-norm running statistics before eval
            model.train()
            model(be.asarray(warmup))
        model.train(train)
        crit = make_loss()
        res = OrderedDict()
        out = model(be.asarray(x))
        res["out"] = host(be, out, "output")
        loss = crit(out, be.asarray(target))
        res["loss"] = host(be, loss, "loss")
        dx = model.backward(crit.backward())
        res["dx"] = host(be, dx, "input gradient")
        for n, p in model.named_parameters():
            res[f"grad {n}"] = host(be, p.grad, f"grad {n}")
        for n, b in model.named_buffers():
            res[f"buffer {n}"] = host(be, b, f"buffer {n}")
        if optim is not None:
            opt = optim(model.parameters())
            for _ in range(steps):
                opt.step()
            for n, p in model.named_parameters():
                res[f"updated {n}"] = host(be, p.data, f"updated {n}")
        return res


def both(gpu, *args, tol=None, **kwargs):
    cpu = run_model("cpu", *args, **kwargs)
    dev = run_model("cuda", *args, **kwargs)
    compare(dev, cpu, **(tol or {}))
    return cpu


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


OPTIMS = {
    "sgd_momentum": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
    "adam": lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: AdamW(ps, lr=1e-2),
    "rmsprop": lambda ps: RMSprop(ps, lr=1e-2),
}


# ------------------------------------------------------------------ the reference CNN
@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_simple_cnn_training_step(gpu, rng, opt):
    x = randn(rng, 2, 3, 8, 8)
    y = rng.integers(0, 10, 2)
    res = both(gpu, lambda: nnx.models.get("simple_cnn", in_channels=3, num_classes=10,
                                           image_size=8),
               x, y, nn.CrossEntropyLoss, optim=OPTIMS[opt])
    assert res["out"].shape == (2, 10) and np.isfinite(res["loss"])


def test_simple_cnn_float64(gpu, rng):
    # float64 kernels: the two backends must agree to ~1e-10
    x = rng.standard_normal((2, 3, 8, 8))
    y = rng.integers(0, 10, 2)
    both(gpu, lambda: nnx.models.get("simple_cnn", num_classes=10, image_size=8,
                                     dtype=np.float64),
         x, y, lambda: nn.CrossEntropyLoss(label_smoothing=0.05), optim=OPTIMS["adam"],
         tol=dict(rtol=1e-10, atol=1e-12))


# ------------------------------------------------------------------ ResNet block with BatchNorm
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_resnet_block_batchnorm(gpu, rng, train):
    from nnx.models.resnet import BasicBlock
    x = randn(rng, 2, 3, 6, 6)
    target = randn(rng, 2, 4, 3, 3)
    res = both(gpu, lambda: BasicBlock(3, 4, stride=2), x, target, nn.MSELoss, train=train,
               warmup=randn(rng, 3, 3, 6, 6, scale=2.0) + 0.5, optim=OPTIMS["sgd_momentum"])
    assert any(k.endswith("running_var") for k in res)


def test_resnet_small_forward_backward(gpu, rng):
    x = randn(rng, 2, 1, 4, 4)
    y = rng.integers(0, 3, 2)
    both(gpu, lambda: nnx.models.get("resnet", in_channels=1, num_classes=3, width=2), x, y,
         nn.CrossEntropyLoss)


def test_batchnorm1d(gpu, rng):
    x = randn(rng, 5, 3)
    both(gpu, lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), x, randn(rng, 5, 4),
         nn.MSELoss, optim=OPTIMS["adam"])


# ------------------------------------------------------------------ pooling and convolution
@pytest.mark.parametrize("pool", [
    lambda: nn.MaxPool2d(3, stride=2, padding=1),
    lambda: nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1)),
    lambda: nn.AvgPool2d(3, stride=2, padding=1),
    lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    lambda: nn.AdaptiveAvgPool2d(1),
    lambda: nn.AdaptiveAvgPool2d((2, 3)),
], ids=["max", "max_rect", "avg", "avg_nopad", "adaptive1", "adaptive23"])
def test_pooling_layers(gpu, rng, pool):
    x = randn(rng, 2, 2, 4, 6)
    with on("cpu"):
        shape = pool()(x).shape
    both(gpu, lambda: nn.Sequential(nn.Conv2d(2, 3, 1), pool()), x, randn(rng, 2, 3, *shape[2:]),
         nn.MSELoss)


@pytest.mark.parametrize("kw", [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2),
    dict(in_channels=3, out_channels=4, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0),
         bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),
], ids=["stride_dilation_groups", "rect_nobias", "depthwise"])
def test_conv2d_geometry(gpu, rng, kw):
    x = randn(rng, 2, kw["in_channels"], 5, 7)
    with on("cpu"):
        shape = nn.Conv2d(**kw)(x).shape
    both(gpu, lambda: nn.Conv2d(**kw), x, randn(rng, *shape), nn.L1Loss,
         optim=OPTIMS["sgd_nesterov"])


def test_conv_relu_sequential_non_contiguous_input(gpu, rng):
    x = randn(rng, 2, 3, 6, 5).transpose(0, 1, 3, 2)  # non-contiguous (2, 3, 5, 6)
    build = lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),  # noqa
                                  nn.Linear(4 * 5 * 6, 3))
    both(gpu, build, x, randn(rng, 2, 3), nn.MSELoss)


# ------------------------------------------------------------------ dense layers and activations
@pytest.mark.parametrize("opt", ["adam", "adamw", "rmsprop"])
def test_mlp_activations(gpu, rng, opt):
    build = lambda: nn.Sequential(  # noqa: E731
        nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 7),
        nn.Sigmoid(), nn.Linear(7, 6), nn.Arctan(), nn.Linear(6, 4), nn.Softmax(dim=-1))
    both(gpu, build, randn(rng, 3, 5, scale=2.0), randn(rng, 3, 4), nn.MSELoss,
         optim=OPTIMS[opt])


# ------------------------------------------------------------------ every loss
def _probs(rng, *shape):
    return (1 / (1 + np.exp(-rng.standard_normal(shape)))).astype(np.float32)


def _labels_with_ignored(rng, n, c, ignore):
    y = rng.integers(0, c, n)
    y[::3] = ignore
    return y


LOSSES = {
    "mse": (nn.MSELoss, lambda r: (randn(r, 4, 3), randn(r, 4, 3))),
    "mse_sum": (lambda: nn.MSELoss(reduction="sum"), lambda r: (randn(r, 4, 3), randn(r, 4, 3))),
    "l1": (nn.L1Loss, lambda r: (randn(r, 4, 3), randn(r, 4, 3))),
    "bce": (nn.BCELoss, lambda r: (_probs(r, 4, 3), (r.random((4, 3)) > 0.5).astype(np.float32))),
    "bce_soft": (nn.BCELoss, lambda r: (_probs(r, 4, 3), r.random((4, 3)).astype(np.float32))),
    "bce_logits": (nn.BCEWithLogitsLoss,
                   lambda r: (randn(r, 4, 3, scale=3), r.random((4, 3)).astype(np.float32))),
    "ce": (nn.CrossEntropyLoss, lambda r: (randn(r, 5, 4, scale=2), r.integers(0, 4, 5))),
    "ce_smooth_ignore": (lambda: nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=-1),
                         lambda r: (randn(r, 7, 4, scale=2), _labels_with_ignored(r, 7, 4, -1))),
    "ce_spatial_sum": (lambda: nn.CrossEntropyLoss(reduction="sum", ignore_index=2),
                       lambda r: (randn(r, 2, 3, 2, 2), r.integers(0, 3, (2, 2, 2)))),
    "ce_none": (lambda: nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2),
                lambda r: (randn(r, 5, 3), r.integers(0, 3, 5))),
}


def run_loss(name, make_loss, pred, target, upstream=None, **fwd):
    with on(name) as be:
        crit = make_loss()
        p = be.asarray(pred)
        loss = crit(p, be.asarray(target), **fwd)
        up = None if upstream is None else be.asarray(upstream)
        d = crit.backward() if up is None else crit.backward(up)
        return OrderedDict(loss=host(be, loss, "loss"), dpred=host(be, d, "dL/dpred"))


@pytest.mark.parametrize("key", list(LOSSES))
def test_losses(gpu, rng, key):
    make, data = LOSSES[key]
    pred, target = data(rng)
    upstream = None
    with on("cpu"):
        if np.ndim(make()(pred, target)) > 0:  # reduction="none": a random upstream gradient
            upstream = randn(rng, *np.shape(make()(pred, target)))
    compare(run_loss("cuda", make, pred, target, upstream),
            run_loss("cpu", make, pred, target, upstream))


SEQ_LOSSES = {
    "mse_lengths": (nn.SequenceMSELoss, lambda r: (randn(r, 4, 3, 2), randn(r, 4, 3, 2)),
                    lambda r: dict(lengths=np.array([4, 1, 3]))),
    "mse_mask_bf_sum": (lambda: nn.SequenceMSELoss(reduction="sum", batch_first=True),
                        lambda r: (randn(r, 3, 4, 2), randn(r, 3, 4, 2)),
                        lambda r: dict(mask=r.random((3, 4)) > 0.3)),
    "ce_lengths_smooth": (lambda: nn.SequenceCrossEntropyLoss(label_smoothing=0.1),
                          lambda r: (randn(r, 4, 3, 5, scale=2), r.integers(0, 5, (4, 3))),
                          lambda r: dict(lengths=np.array([2, 4, 3]))),
    "ce_weights_bf_ignore": (lambda: nn.SequenceCrossEntropyLoss(batch_first=True,
                                                                 ignore_index=-1),
                             lambda r: (randn(r, 3, 4, 5),
                                        _labels_with_ignored(r, 12, 5, -1).reshape(3, 4)),
                             lambda r: dict(mask=r.random((3, 4)).astype(np.float32))),
    "ce_none": (lambda: nn.SequenceCrossEntropyLoss(reduction="none"),
                lambda r: (randn(r, 4, 2, 3), r.integers(0, 3, (4, 2))),
                lambda r: dict(lengths=np.array([3, 4]))),
}


@pytest.mark.parametrize("key", list(SEQ_LOSSES))
def test_sequence_losses(gpu, rng, key):
    make, data, extra = SEQ_LOSSES[key]
    pred, target = data(rng)
    fwd = extra(rng)
    upstream = None
    with on("cpu"):
        shape = np.shape(make()(pred, target, **fwd))
    if shape:
        upstream = randn(rng, *shape)
    with on("cuda") as be:  # masks/lengths given as device arrays on the device run
        fwd_dev = {k: be.asarray(v) for k, v in fwd.items()}
    compare(run_loss("cuda", make, pred, target, upstream, **fwd_dev),
            run_loss("cpu", make, pred, target, upstream, **fwd))


# ------------------------------------------------------------------ dropout
def test_dropout(gpu, rng):
    x = randn(rng, 4, 50) + 3.0  # never 0, so the mask is readable from the output
    dy = randn(rng, 4, 50)
    results = {}
    for name in ("cpu", "cuda"):
        with on(name) as be:
            nnx.manual_seed(SEED)
            d = nn.Dropout(0.3)
            d.eval()
            results[name, "eval"] = (host(be, d(be.asarray(x)), "y"),
                                     host(be, d.backward(be.asarray(dy)), "dx"))
            d.train()
            y = host(be, d(be.asarray(x)), "y")
            dx = host(be, d.backward(be.asarray(dy)), "dx")
            kept = y != 0
            assert y.shape == x.shape and y.dtype == np.float32
            assert_close(y[kept], x[kept] / np.float32(0.7), f"{name} kept scale")
            assert_close(dx, np.where(kept, dy / np.float32(0.7), 0).astype(np.float32),
                         f"{name} dx")
            assert 0.4 < kept.mean() < 0.95, kept.mean()
    for a, b in zip(results["cuda", "eval"], results["cpu", "eval"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results["cpu", "eval"][0], x)


# ------------------------------------------------------------------ recurrent layers
RNNS = {
    "rnn_tanh": lambda: nn.RNN(3, 4, num_layers=2, bidirectional=True),
    "rnn_relu_bf": lambda: nn.RNN(3, 4, nonlinearity="relu", batch_first=True),
    "gru_2layer_bidir": lambda: nn.GRU(3, 4, num_layers=2, bidirectional=True),
    "gru_bf": lambda: nn.GRU(3, 5, batch_first=True),
    "lstm_2layer_bidir": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
    "lstm_bf_bidir": lambda: nn.LSTM(3, 4, batch_first=True, bidirectional=True),
}


def run_rnn(name, build, x, h0, target, d_hn, lengths):
    with on(name) as be:
        nnx.manual_seed(SEED)
        rnn = build()
        lstm = isinstance(rnn, nn.LSTM)
        hx = tuple(be.asarray(h) for h in h0) if lstm else be.asarray(h0[0])
        out, state = rnn(be.asarray(x), hx)
        res = OrderedDict(out=host(be, out, "output"))
        states = state if lstm else (state,)
        for i, s in enumerate(states):
            res[f"state{i}"] = host(be, s, f"state {i}")
        crit = nn.SequenceMSELoss(batch_first=rnn.batch_first)
        res["loss"] = host(be, crit(out, be.asarray(target), lengths=be.asarray(lengths)),
                           "loss")
        d_state = tuple(be.asarray(d) for d in d_hn)
        dx, dh0 = rnn.backward(crit.backward(), d_state if lstm else d_state[0])
        res["dx"] = host(be, dx, "dx")
        for i, d in enumerate(dh0 if lstm else (dh0,)):
            res[f"d_state0_{i}"] = host(be, d, f"d state0 {i}")
        for n, p in rnn.named_parameters():
            res[f"grad {n}"] = host(be, p.grad, f"grad {n}")
        opt = SGD(rnn.parameters(), lr=0.1, momentum=0.9)
        opt.step()
        opt.step()
        for n, p in rnn.named_parameters():
            res[f"updated {n}"] = host(be, p.data, f"updated {n}")
        return res


@pytest.mark.parametrize("key", list(RNNS))
def test_recurrent_layers(gpu, rng, key):
    with on("cpu"):
        probe = RNNS[key]()
    T, N, D = 4, 2, 2 if probe.bidirectional else 1
    bf, L, H = probe.batch_first, probe.num_layers, probe.hidden_size
    x = randn(rng, *((N, T, 3) if bf else (T, N, 3)))
    n_states = 2 if isinstance(probe, nn.LSTM) else 1
    h0 = [randn(rng, L * D, N, H) for _ in range(n_states)]
    d_hn = [randn(rng, L * D, N, H) for _ in range(n_states)]
    target = randn(rng, *((N, T, D * H) if bf else (T, N, D * H)))
    lengths = np.array([T, T - 2])
    compare(run_rnn("cuda", RNNS[key], x, h0, target, d_hn, lengths),
            run_rnn("cpu", RNNS[key], x, h0, target, d_hn, lengths))


def test_lstm_linear_sequence_ce(gpu, rng):
    """LSTM -> Linear head -> masked sequence cross-entropy, through a small wrapper model."""
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, num_layers=2)
            self.head = nn.Linear(4, 5)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out)

        def backward(self, dy):
            return self.lstm.backward(self.head.backward(dy))

    x = randn(rng, 5, 2, 3)
    y = rng.integers(0, 5, (5, 2))
    both(gpu, Tagger, x, y, nn.SequenceCrossEntropyLoss, optim=OPTIMS["adam"])


CELLS = {
    "rnn_cell_tanh": lambda: nn.RNNCell(3, 4),
    "rnn_cell_relu": lambda: nn.RNNCell(3, 4, nonlinearity="relu"),
    "gru_cell": lambda: nn.GRUCell(3, 4),
    "lstm_cell": lambda: nn.LSTMCell(3, 4),
}


def run_cell(name, build, xs, h0, dhs):
    """Three steps of a cell (state carried), then backward through them in reverse."""
    with on(name) as be:
        nnx.manual_seed(SEED)
        cells = []
        res = OrderedDict()
        state = tuple(be.asarray(h) for h in h0)
        for t, x in enumerate(xs):  # one cell object per step: each keeps its own context
            nnx.manual_seed(SEED)
            cell = build()
            cells.append(cell)
            lstm = isinstance(cell, nn.LSTMCell)
            state = cell(be.asarray(x), state if lstm else state[0])
            state = state if lstm else (state,)
            for i, s_ in enumerate(state):
                res[f"step{t} state{i}"] = host(be, s_, f"state {i}")
        d = tuple(be.asarray(g) for g in dhs)
        for t in reversed(range(len(xs))):
            lstm = isinstance(cells[t], nn.LSTMCell)
            dx, dprev = cells[t].backward(*d) if lstm else cells[t].backward(d[0])
            res[f"step{t} dx"] = host(be, dx, "dx")
            d = tuple(dprev) if lstm else (dprev,)
            d = tuple(a + be.asarray(g) for a, g in zip(d, dhs))
            for n, p in cells[t].named_parameters():
                res[f"step{t} grad {n}"] = host(be, p.grad, n)
        return res


@pytest.mark.parametrize("key", list(CELLS))
def test_recurrent_cells(gpu, rng, key):
    n_states = 2 if key.startswith("lstm") else 1
    xs = [randn(rng, 2, 3) for _ in range(3)]
    h0 = [randn(rng, 2, 4) for _ in range(n_states)]
    dhs = [randn(rng, 2, 4) for _ in range(n_states)]
    compare(run_cell("cuda", CELLS[key], xs, h0, dhs), run_cell("cpu", CELLS[key], xs, h0, dhs))


def test_gradient_clipping(gpu, rng):
    from nnx.optim.clip import clip_grad_norm_, clip_grad_value_
    x, y = randn(rng, 4, 5, scale=3), randn(rng, 4, 3)
    results = []
    for name in ("cuda", "cpu"):
        with on(name) as be:
            nnx.manual_seed(SEED)
            model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
            crit = nn.MSELoss(reduction="sum")
            crit(model(be.asarray(x)), be.asarray(y))
            model.backward(crit.backward())
            res = OrderedDict(norm=np.asarray(float(clip_grad_norm_(model.parameters(), 0.5)),
                                              np.float32))
            clip_grad_value_(model.parameters(), 0.05)
            for n, p in model.named_parameters():
                res[f"clipped grad {n}"] = host(be, p.grad, n)
            results.append(res)
    compare(*results)


# ------------------------------------------------------------------ moving models between backends
def test_to_dtype_round_trip_on_cpu(rng):
    with on("cpu"):
        nnx.manual_seed(SEED)
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                              nn.Linear(3 * 2 * 2, 2))
        before = model.state_dict()
        x = randn(rng, 2, 2, 4, 4)
        y32 = model(x)
        model.to(dtype=np.float64)
        assert all(p.dtype == np.float64 for p in model.parameters())
        assert model[1].running_mean.dtype == np.float64
        assert model[1].num_batches_tracked.dtype == before["1.num_batches_tracked"].dtype
        y64 = model(x.astype(np.float64))
        assert y64.dtype == np.float64
        assert_close(y64.astype(np.float32), y32, "float64 forward", rtol=1e-4, atol=1e-5)
        model.to("cpu", dtype=np.float32)
        after = model.state_dict()
        assert list(after) == list(before)
        for k in before:
            assert after[k].dtype == before[k].dtype, k
        np.testing.assert_array_equal(after["0.weight"], before["0.weight"])  # exact in f64
        assert all(p.grad is None for p in model.parameters())


def test_model_to_gpu_backend_and_back(gpu, rng):
    x = randn(rng, 2, 3, 8, 8)
    y = rng.integers(0, 10, 2)
    with on("cpu"):
        nnx.manual_seed(SEED)
        model = nnx.models.get("simple_cnn", in_channels=3, num_classes=10, image_size=8)
        state = model.state_dict()
        crit = nn.CrossEntropyLoss()
        out_cpu = model(x)
        loss_cpu = float(crit(out_cpu, y))
        model.backward(crit.backward())
        grads_cpu = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.to(gpu)  # a Backend instance, not a name
    assert all(gpu.is_native(p.data) and p.grad is None for p in model.parameters())
    with on("cuda") as be:
        assert be is gpu
        crit = nn.CrossEntropyLoss()
        out = model(be.asarray(x))
        assert_close(host(be, out, "out"), out_cpu, "out after to(gpu)")
        assert_close(float(crit(out, be.asarray(y))), loss_cpu, "loss after to(gpu)")
        model.backward(crit.backward())
        for n, p in model.named_parameters():
            assert_close(host(be, p.grad, n), grads_cpu[n], f"grad {n} after to(gpu)")
        gpu_state = model.state_dict()  # host copies from the device
    for k, v in state.items():
        assert type(gpu_state[k]) is np.ndarray
        np.testing.assert_array_equal(gpu_state[k], v)
    model.to("cpu")
    assert all(type(p.data) is np.ndarray for p in model.parameters())
    with on("cpu"):
        assert_close(model(x), out_cpu, "out after to(cpu)", rtol=0, atol=0)
    # load_state_dict from a host state dict while the device backend is active
    with on("cuda") as be:
        nnx.manual_seed(SEED + 1)
        other = nnx.models.get("simple_cnn", in_channels=3, num_classes=10, image_size=8)
        other.load_state_dict(state)
        assert_close(host(be, other(be.asarray(x)), "out"), out_cpu, "out after load_state_dict")


# ------------------------------------------------------------------ backend mismatch errors
class _CupyLikeArray:
    """What a CuPy array looks like to nnx's CPU backend: not a numpy.ndarray, and a type
    whose module is cupy's (the check is ``type(x).__module__.startswith("cupy")``)."""
    __module__ = "cupy._core.core"

    def __init__(self, a):
        self._a = np.asarray(a)
        self.shape, self.dtype, self.ndim = self._a.shape, self._a.dtype, self._a.ndim

    def get(self):
        return self._a.copy()


@pytest.mark.parametrize("layer", [lambda: nn.Linear(3, 2), lambda: nn.ReLU(),
                                   lambda: nn.Conv2d(1, 1, 1), lambda: nn.Tanh()],
                         ids=["linear", "relu", "conv", "tanh"])
def test_cupy_array_on_cpu_backend_is_a_clear_error(layer):
    shape = (1, 1, 2, 2) if isinstance(layer(), nn.Conv2d) else (2, 3)
    with on("cpu"):
        with pytest.raises(BackendMismatchError, match="CuPy.*'cpu' backend"):
            layer()(_CupyLikeArray(np.ones(shape, np.float32)))


def test_cupy_array_to_cpu_loss_and_numpy_conversion():
    with on("cpu") as be:
        a = _CupyLikeArray(np.arange(6, dtype=np.float32).reshape(2, 3))
        with pytest.raises(BackendMismatchError, match="GPU"):
            nn.MSELoss()(a, np.zeros((2, 3), np.float32))
        np.testing.assert_array_equal(be.to_numpy(a), a.get())  # explicit transfer is fine


def test_cpu_model_on_gpu_backend_fails_loudly(gpu, rng):
    """A model left on the CPU while the device backend is active must not silently run."""
    with on("cpu"):
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    with on("cuda") as be:
        with pytest.raises(BackendMismatchError, match=r"Conv2d.weight .*model.to\('cuda'\)"):
            model(be.asarray(randn(rng, 1, 2, 4, 4)))
        opt = SGD(model.parameters(), lr=0.1)
        model[0].weight.grad = np.zeros_like(model[0].weight.data)
        with pytest.raises(BackendMismatchError, match="model.to"):
            opt.step()
