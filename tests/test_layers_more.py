"""LayerNorm, Embedding, GELU, LogSoftmax, Conv1d, ConvTranspose2d and their functional forms:
the layer harness (float64 gradcheck, called twice, dtype, strides, CPU vs simulated CUDA),
PyTorch as an oracle for values and gradients, and the errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx import nn
from nnx.nn import functional as F
from nnx.nn.special import erfc
from tolerances import gamma


def _randomize(layer, rng=None):
    """Fresh normal values for every parameter (LayerNorm starts at γ = 1, β = 0, which
    would hide a mix-up of the two)."""
    rng = rng or np.random.default_rng(3)
    for p in layer.parameters():
        p.data[...] = nnx.backend.get().asarray(rng.standard_normal(p.data.shape))
    return layer


def _against_torch(backend, layer, tlayer, inputs, rtol, grad_inputs=(0,)):
    """Forward and backward of ``layer`` and the PyTorch module ``tlayer`` (given the same
    parameters) in float64 with one random upstream gradient; compares outputs, input and
    parameter gradients within ``rtol`` of each compared array's largest magnitude."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        for name, p in layer.named_parameters():
            getattr(tlayer, name).copy_(torch.tensor(backend.to_numpy(p.data)))
    tin = [torch.tensor(x, requires_grad=i in grad_inputs) for i, x in enumerate(inputs)]
    ty = tlayer(*tin)
    gy = np.random.default_rng(7).standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    layer.zero_grad()
    y = layer(*[backend.asarray(x) for x in inputs])
    dx = layer.backward(backend.asarray(gy))
    pairs = [("output", y, ty.detach())]
    pairs += [("d input", dx, tin[i].grad) for i in grad_inputs]
    pairs += [(f"d {name}", p.grad, getattr(tlayer, name).grad)
              for name, p in layer.named_parameters()]
    for what, got, want in pairs:
        got, want = backend.to_numpy(got), want.numpy()
        assert got.shape == want.shape, what
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max(),
                                   err_msg=what)


# ---------------------------------------------------------------------- LayerNorm
LN_CASES = [((4, 5), 5, {}), ((2, 3, 4, 5), (4, 5), {}),
            ((3, 6), 6, dict(elementwise_affine=False)), ((2, 3, 4), 4, dict(bias=False))]


@pytest.mark.parametrize("shape, normalized, kw", LN_CASES)
def test_layer_norm_harness(backend, rng, shape, normalized, kw):
    check_layer(lambda dt: _randomize(nn.LayerNorm(normalized, dtype=dt, **kw)),
                [rng.standard_normal(shape) * 2 + 1])


@pytest.mark.torch
@pytest.mark.parametrize("shape, normalized, kw", LN_CASES)
def test_layer_norm_against_torch(backend, rng, shape, normalized, kw):
    torch = pytest.importorskip("torch")
    layer = _randomize(nn.LayerNorm(normalized, dtype=np.float64, **kw))
    tlayer = torch.nn.LayerNorm(normalized, dtype=torch.float64, **kw)
    # sums over the m normalised values (and the rows for the parameters), in two orders
    _against_torch(backend, layer, tlayer, [rng.standard_normal(shape) * 2 + 1],
                   8 * gamma(int(np.prod(shape)), np.float64))


def test_layer_norm_normalizes_and_checks_shape(backend, rng):
    ln = nn.LayerNorm((3, 4))
    assert ln.weight.shape == (3, 4) and set(ln.state_dict()) == {"weight", "bias"}
    y = backend.to_numpy(ln(rng.standard_normal((5, 3, 4)).astype(np.float32) * 7 - 3))
    np.testing.assert_allclose(y.reshape(5, -1).mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(y.reshape(5, -1).var(axis=1), 1, rtol=1e-4)  # eps = 1e-5
    with pytest.raises(ValueError, match=r"last 2 dimension\(s\) are \(3, 4\)"):
        ln(np.zeros((5, 4, 3), np.float32))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(())


# ---------------------------------------------------------------------- Embedding
def _indices(rng, shape, n):
    idx = rng.integers(0, n, shape)
    idx.flat[1] = idx.flat[0]           # a repeated index: its gradients must add up
    return idx


@pytest.mark.parametrize("padding_idx", [None, -1])
def test_embedding_harness(backend, rng, padding_idx):
    # indices in [0, 5): the padding row 5 (= -1) is not used, since its zero gradient is
    # PyTorch's rule, not the derivative (test_embedding_against_torch uses it)
    check_layer(lambda dt: nn.Embedding(6, 5, padding_idx=padding_idx, dtype=dt),
                [_indices(rng, (3, 4), 5)], second=[_indices(rng, (3, 4), 5)])


@pytest.mark.torch
@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding_against_torch(backend, rng, padding_idx):
    torch = pytest.importorskip("torch")
    idx = _indices(rng, (4, 7), 5)
    idx[0, 2] = 1
    layer = nn.Embedding(5, 3, padding_idx=padding_idx, dtype=np.float64)
    if padding_idx is not None:      # the padding row starts at zeros, as PyTorch's
        assert not backend.to_numpy(layer.weight.data)[padding_idx].any()
    tlayer = torch.nn.Embedding(5, 3, padding_idx=padding_idx, dtype=torch.float64)
    # the scatter-add sums at most idx.size rows
    _against_torch(backend, layer, tlayer, [idx], 2 * gamma(idx.size, np.float64),
                   grad_inputs=())


def test_embedding_errors(backend):
    emb = nn.Embedding(4, 2)
    with pytest.raises(IndexError, match=r"index 4 is outside \[0, 4\)"):
        emb(np.array([0, 4]))
    with pytest.raises(IndexError, match=r"index -1"):
        emb(np.array([-1]))
    with pytest.raises(TypeError, match="integer indices"):
        emb(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="padding_idx 4"):
        nn.Embedding(4, 2, padding_idx=4)
    assert emb(np.array([[1, 2, 3]])).shape == (1, 3, 2)
    assert nn.Embedding(4, 2, padding_idx=-1).padding_idx == 3


# ---------------------------------------------------------------------- GELU, LogSoftmax
def test_erfc_matches_math(backend):
    z = np.concatenate([np.linspace(-6, 26, 4001), [0.0, 1.999, 2.0, 2.001]])
    want = np.array([math.erfc(v) for v in z])
    got = backend.to_numpy(erfc(backend.asarray(z)))
    # series below |z| = 2 (1 - erf loses ≤ 1e-13 relative there), continued fraction above
    # (exp(-z²) carries the rounding of z², ≤ z²·eps relative): see nnx/nn/special.py
    np.testing.assert_allclose(got, want, rtol=2e-13, atol=0)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_harness(backend, rng, approximate):
    check_layer(lambda dt: nn.GELU(approximate), [rng.standard_normal((3, 4, 5)) * 2])


@pytest.mark.torch
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_against_torch(backend, rng, approximate):
    torch = pytest.importorskip("torch")
    x = np.concatenate([rng.standard_normal(50) * 3, np.linspace(-12, 12, 49)])
    # element-wise: erfc within 2e-13 relative (test above); tanh/exp within a few ulps
    _against_torch(backend, nn.GELU(approximate), torch.nn.GELU(approximate), [x], 1e-12)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("sigmoid")


@pytest.mark.parametrize("dim", [1, -1, 0])
def test_log_softmax_harness(backend, rng, dim):
    check_layer(lambda dt: nn.LogSoftmax(dim), [rng.standard_normal((3, 4, 2)) * 3])


@pytest.mark.torch
@pytest.mark.parametrize("dim", [1, -1])
def test_log_softmax_against_torch(backend, rng, dim):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 6, 3)) * 5
    # sums of at most 6 terms along dim, plus exp/log rounding
    _against_torch(backend, nn.LogSoftmax(dim), torch.nn.LogSoftmax(dim), [x],
                   8 * gamma(6, np.float64) + 1e-15)


def test_log_softmax_then_nll_is_cross_entropy(backend, rng):
    z = backend.asarray(rng.standard_normal((5, 4)))
    y = backend.asarray(rng.integers(0, 4, 5))
    ls, nll, ce = nn.LogSoftmax(dim=1), nn.NLLLoss(), nn.CrossEntropyLoss()
    a, b = float(nll(ls(z), y)), float(ce(z, y))
    assert a == pytest.approx(b, rel=1e-14)
    np.testing.assert_allclose(backend.to_numpy(ls.backward(nll.backward())),
                               backend.to_numpy(ce.backward()), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------- Conv1d
CONV1D_CASES = [  # in, out, kernel, stride, padding, dilation, groups, bias, length
    (3, 4, 3, 1, 0, 1, 1, True, 9),
    (2, 3, 2, 2, 1, 1, 1, False, 8),
    (4, 6, 3, 1, 2, 2, 2, True, 7),
]


@pytest.mark.parametrize("case", CONV1D_CASES)
def test_conv1d_harness(backend, rng, case):
    cin, cout, k, s, p, d, g, bias, length = case
    check_layer(lambda dt: nn.Conv1d(cin, cout, k, s, p, d, g, bias, dtype=dt),
                [rng.standard_normal((2, cin, length))])


@pytest.mark.torch
@pytest.mark.parametrize("case", CONV1D_CASES)
def test_conv1d_against_torch(backend, rng, case):
    torch = pytest.importorskip("torch")
    cin, cout, k, s, p, d, g, bias, length = case
    layer = nn.Conv1d(cin, cout, k, s, p, d, g, bias, dtype=np.float64)
    tlayer = torch.nn.Conv1d(cin, cout, k, s, p, d, g, bias, dtype=torch.float64)
    assert {n: tuple(v.shape) for n, v in layer.state_dict().items()} == \
        {n: tuple(v.shape) for n, v in tlayer.state_dict().items()}
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == \
        (tlayer.kernel_size, tlayer.stride, tlayer.padding, tlayer.dilation)
    # the longest sum: the weight gradient's, over batch x output positions
    _against_torch(backend, layer, tlayer, [rng.standard_normal((2, cin, length))],
                   8 * gamma(2 * length * cin * k, np.float64))


def test_conv1d_shapes_and_errors(backend):
    conv = nn.Conv1d(3, 5, 4, stride=2, padding=1)
    assert conv.weight.shape == (5, 3, 4) and conv.output_shape((2, 3, 10)) == (2, 5, 5)
    assert conv(np.zeros((2, 3, 10), np.float32)).shape == (2, 5, 5)
    assert "Conv1d(3, 5, kernel_size=(4,), stride=(2,), padding=(1,))" == repr(conv)
    with pytest.raises(ValueError, match=r"3-D input \(N, C, L\)"):
        conv(np.zeros((2, 3, 1, 10), np.float32))
    with pytest.raises(ValueError, match="3 input channels"):
        conv(np.zeros((2, 4, 10), np.float32))


# ---------------------------------------------------------------------- ConvTranspose2d
CT_CASES = [  # in, out, kernel, stride, padding, output_padding, groups, bias, dilation, HxW
    (3, 2, 3, 1, 0, 0, 1, True, 1, (4, 5)),
    (2, 3, 3, 2, 1, 1, 1, True, 1, (3, 4)),
    (2, 4, (2, 3), (2, 1), (0, 1), (1, 0), 1, False, (1, 2), (3, 3)),
    (4, 6, 3, 2, 1, 0, 2, True, 1, (3, 3)),
]


@pytest.mark.parametrize("case", CT_CASES)
def test_conv_transpose2d_harness(backend, rng, case):
    cin, cout, k, s, p, op, g, bias, d, hw = case
    check_layer(lambda dt: nn.ConvTranspose2d(cin, cout, k, s, p, op, g, bias, d, dtype=dt),
                [rng.standard_normal((2, cin) + hw)])


@pytest.mark.torch
@pytest.mark.parametrize("case", CT_CASES)
def test_conv_transpose2d_against_torch(backend, rng, case):
    torch = pytest.importorskip("torch")
    cin, cout, k, s, p, op, g, bias, d, hw = case
    layer = nn.ConvTranspose2d(cin, cout, k, s, p, op, g, bias, d, dtype=np.float64)
    tlayer = torch.nn.ConvTranspose2d(cin, cout, k, s, p, op, g, bias, d,
                                      dtype=torch.float64)
    assert {n: tuple(v.shape) for n, v in layer.state_dict().items()} == \
        {n: tuple(v.shape) for n, v in tlayer.state_dict().items()}
    x = rng.standard_normal((2, cin) + hw)
    # the longest sum: the weight gradient's, over batch x input pixels
    _against_torch(backend, layer, tlayer, [x], 8 * gamma(2 * x[0, 0].size * cout, np.float64))


def test_conv_transpose2d_is_the_adjoint_of_conv2d(backend, rng):
    """<conv(u), v> = <u, convT(v)> for the same weights and geometry (no bias)."""
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, bias=False)
    convt = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, bias=False,
                               dtype=np.float64)
    convt.weight.data[...] = conv.weight.data
    u = backend.asarray(rng.standard_normal((1, 2, 6, 6)))
    v = backend.asarray(rng.standard_normal((1, 3, 3, 3)))
    lhs = float((conv(u) * v).sum())
    rhs = float((u * convt(v)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_conv_transpose2d_shapes_and_errors(backend):
    ct = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    assert ct.weight.shape == (4, 2, 3, 3) and ct.output_shape((1, 4, 5, 6)) == (1, 2, 10, 12)
    assert ct(np.zeros((1, 4, 5, 6), np.float32)).shape == (1, 2, 10, 12)
    with pytest.raises(ValueError, match="smaller than the stride"):
        nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"input \(N, 4, H, W\)"):
        ct(np.zeros((1, 3, 5, 6), np.float32))
    with pytest.raises(ValueError, match="not positive"):
        nn.ConvTranspose2d(1, 1, 1, padding=2)(np.zeros((1, 1, 2, 2), np.float32))


# ---------------------------------------------------------------------- functional forms
class _Functional(nn.Module):
    """A composite whose forward is one functional call with parameters of its own."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            setattr(self, name, nn.Parameter(nnx.backend.get().asarray(value)))

    def forward(self, *args):
        return self.fn(self, *args)


def test_functional_layer_norm(backend, rng):
    def make(dt):   # the same parameters at every build
        r = np.random.default_rng(3)
        return _Functional(lambda m, x: F.layer_norm(x, (3, 4), m.weight, m.bias, eps=1e-3),
                           weight=r.standard_normal((3, 4)).astype(dt),
                           bias=r.standard_normal((3, 4)).astype(dt))
    check_layer(make, [rng.standard_normal((2, 3, 4))])
    x = backend.asarray(rng.standard_normal((2, 4)))
    ln = nn.LayerNorm(4, eps=1e-3, dtype=np.float64)
    np.testing.assert_array_equal(backend.to_numpy(F.layer_norm(x, 4, eps=1e-3)),
                                  backend.to_numpy(ln(x)))    # same code path: exact
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm(x, (3,))


def test_functional_embedding_and_gelu(backend, rng):
    idx = _indices(rng, (2, 5), 4)    # rows 0-3; row 4 is padding (no gradient by rule)
    check_layer(lambda dt: _Functional(lambda m, i: F.embedding(i, m.weight, padding_idx=-1),
                                       weight=np.random.default_rng(3).standard_normal(
                                           (5, 3)).astype(dt)),
                [idx], second=[idx[::-1].copy()])
    x = backend.asarray(rng.standard_normal((3, 4)))
    for approximate in ("none", "tanh"):
        np.testing.assert_array_equal(backend.to_numpy(F.gelu(x, approximate)),
                                      backend.to_numpy(nn.GELU(approximate)(x)))


@pytest.mark.torch
def test_functional_against_torch(backend, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 5))
    tx = torch.tensor(x)
    pairs = [(F.gelu(backend.asarray(x)), torch.nn.functional.gelu(tx)),
             (F.gelu(backend.asarray(x), "tanh"),
              torch.nn.functional.gelu(tx, approximate="tanh")),
             (F.log_softmax(backend.asarray(x), 1), torch.nn.functional.log_softmax(tx, 1)),
             (F.layer_norm(backend.asarray(x), (5,)),
              torch.nn.functional.layer_norm(tx, (5,)))]
    for got, want in pairs:   # element-wise or 5-term sums: a few ulps of the values
        np.testing.assert_allclose(backend.to_numpy(got), want.numpy(), rtol=0,
                                   atol=1e-12 * np.abs(want.numpy()).max())


# ---------------------------------------------------------------------- in a model
def test_a_small_text_model_through_the_harness(backend, rng):
    """Embedding → LayerNorm → GELU → Linear as one Sequential (integer input: only the
    parameters get gradients), through the harness."""
    def make(dt):
        return nn.Sequential(nn.Embedding(7, 6, padding_idx=6, dtype=dt),
                             _randomize(nn.LayerNorm(6, dtype=dt)), nn.GELU(),
                             nn.Linear(6, 3, dtype=dt))
    check_layer(make, [rng.integers(0, 6, (4, 5))], second=[rng.integers(0, 6, (4, 5))])


def test_conv1d_first_layer_params_only(backend, rng):
    """``backward(dy, input_grad=False)`` (Conv1d's backward_params, no dL/dx) gives the
    same parameter gradients as the full backward (the same code path: exactly)."""
    x = backend.asarray(rng.standard_normal((2, 3, 9)))
    grads = []
    for input_grad in (True, False):
        nnx.manual_seed(2)
        model = nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, dtype=np.float64), nn.GELU(),
                              nn.Conv1d(4, 2, 2, dtype=np.float64))
        y = model(x)
        dx = model.backward(backend.asarray(np.ones(y.shape)), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([backend.to_numpy(p.grad) for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
