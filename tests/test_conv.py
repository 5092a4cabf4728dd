"""im2col/col2im against a naive loop and their adjoint identity; Conv2d through the layer
harness (gradchecks, called twice, dtype, strides, CPU vs CUDA) and PyTorch comparisons."""
import numpy as np
import pytest

from layer_harness import check_layer
from nnx.nn import Conv2d

GEOMS = [  # (N, C, H, W, kernel, stride, padding, dilation)
    (2, 3, 7, 6, (3, 2), (2, 1), (1, 0), (1, 2)),
    (1, 2, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 1, 9, 8, (2, 2), (3, 2), (0, 1), (2, 1)),
    (1, 4, 4, 4, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 2, 6, 7, (4, 3), (2, 3), (2, 1), (1, 1)),
]


def naive_im2col(x, k, s, p, d):
    n, c, h, w = x.shape
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    cols = np.zeros((c * k[0] * k[1], n * oh * ow), x.dtype)
    for ci in range(c):
        for i in range(k[0]):
            for j in range(k[1]):
                for b in range(n):
                    for a in range(oh):
                        for e in range(ow):
                            cols[(ci * k[0] + i) * k[1] + j, (b * oh + a) * ow + e] = \
                                xp[b, ci, a * s[0] + i * d[0], e * s[1] + j * d[1]]
    return cols


@pytest.mark.parametrize("geom", GEOMS)
def test_im2col_matches_naive_and_adjoint(backend, rng, geom):
    n, c, h, w, k, s, p, d = geom
    x = rng.standard_normal((n, c, h, w))
    cols = backend.to_numpy(backend.im2col(backend.asarray(x), k, s, p, d))
    np.testing.assert_array_equal(cols, naive_im2col(x, k, s, p, d))
    cvals = rng.standard_normal(cols.shape)
    back = backend.to_numpy(backend.col2im(backend.asarray(cvals), x.shape, k, s, p, d))
    assert back.shape == x.shape
    np.testing.assert_allclose((cols * cvals).sum(), (x * back).sum(), rtol=1e-12)


def test_im2col_keeps_float32_and_noncontiguous(backend, rng):
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    cols = backend.im2col(backend.asarray(x), (3, 3), (1, 1), (1, 1), (1, 1))
    assert cols.dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(cols),
                                  naive_im2col(np.ascontiguousarray(x), (3, 3), (1, 1),
                                               (1, 1), (1, 1)))
    back = backend.col2im(cols, x.shape, (3, 3), (1, 1), (1, 1), (1, 1))
    assert back.dtype == np.float32 and back.shape == x.shape


CONV_CASES = [  # (in, out, kernel, stride, padding, dilation, groups, bias, input (N,H,W))
    (2, 3, 3, 1, 0, 1, 1, True, (2, 5, 4)),
    (3, 2, (3, 2), (2, 1), (1, 0), 1, 1, False, (1, 6, 5)),
    (2, 2, 3, 1, 2, 2, 1, True, (1, 5, 5)),
    (4, 6, 3, (2, 2), 1, 1, 2, True, (2, 5, 5)),
    (4, 4, 2, 1, 0, 1, 4, False, (1, 3, 4)),
    (1, 2, 1, 2, 0, 1, 1, True, (1, 5, 3)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(backend, rng, case):
    cin, cout, k, s, p, d, g, bias, (n, h, w) = case
    x = rng.standard_normal((n, cin, h, w))
    check_layer(lambda dt: Conv2d(cin, cout, k, s, p, d, groups=g, bias=bias, dtype=dt), (x,),
                gradcheck_kw=dict(atol=1e-7, rtol=1e-5))




@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(backend, rng, case):
    torch = pytest.importorskip("torch")
    cin, cout, k, s, p, d, g, bias, (n, h, w) = case
    conv = Conv2d(cin, cout, k, s, p, d, groups=g, bias=bias)
    x = rng.standard_normal((n, cin, h + 3, w + 2)).astype(np.float32)
    y = conv(x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    conv.zero_grad()
    dx = backend.to_numpy(conv.backward(backend.asarray(gy)))
    tw = torch.tensor(backend.to_numpy(conv.weight.data), requires_grad=True)
    tb = torch.tensor(backend.to_numpy(conv.bias.data), requires_grad=True) if bias else None
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d, g)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(backend.to_numpy(y), ty.detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(conv.weight.grad), tw.grad.numpy(),
                               atol=1e-4, rtol=1e-5)
    if bias:
        np.testing.assert_allclose(backend.to_numpy(conv.bias.grad), tb.grad.numpy(),
                                   atol=1e-4, rtol=1e-5)
    assert y.dtype == np.float32 and dx.dtype == np.float32


def test_conv2d_init_bounds_and_shapes(backend):
    conv = Conv2d(4, 6, (3, 5), groups=2)
    assert conv.weight.shape == (6, 2, 3, 5) and conv.bias.shape == (6,)
    bound = 1 / np.sqrt(2 * 3 * 5)
    w = backend.to_numpy(conv.weight.data)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(backend.to_numpy(conv.bias.data)).max() <= bound
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_conv2d_errors(backend):
    conv = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="3 input channels, got 2"):
        conv(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        conv(np.ones((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv(np.ones((1, 3, 2, 5), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(4, 3, 3, groups=2)
    with pytest.raises(TypeError):
        conv(np.ones((1, 3, 5, 5), np.float64))


def test_conv2d_noncontiguous_input_and_repeated_backward(backend, rng):
    conv = Conv2d(3, 2, 3, stride=2, padding=1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    y1 = backend.to_numpy(conv(x))
    y2 = backend.to_numpy(conv(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(y1, y2)   # same column matrix (a copy), same product: exact
    gy = backend.asarray(np.ones(y1.shape, np.float32))
    conv.zero_grad()
    conv.backward(gy, retain_graph=True)  # keep the call for a second backward
    g1 = backend.to_numpy(conv.weight.grad).copy()
    conv.backward(gy)                        # gradients accumulate
    np.testing.assert_allclose(backend.to_numpy(conv.weight.grad), 2 * g1, rtol=1e-6)
