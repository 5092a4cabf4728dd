"""Max/avg/adaptive pooling: the layer harness (gradchecks, called twice, dtype, strides, CPU
vs CUDA), PyTorch comparisons, ties, padding rules."""
import numpy as np
import pytest

from layer_harness import check_layer
from nnx.nn import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

POOLS = [  # (kernel, stride, padding, input (N, C, H, W))
    (2, None, 0, (2, 2, 4, 6)),         # non-overlapping tiling
    (3, 2, 1, (1, 2, 5, 6)),            # overlapping + padded
    ((3, 2), (1, 2), (1, 1), (2, 1, 4, 5)),
    (2, 3, 0, (1, 2, 7, 5)),            # gaps between windows, ragged edge
    (3, 1, 0, (1, 1, 5, 4)),
]


def _distinct(rng, shape):
    """Well separated values so that finite differences never flip an arg-max."""
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.1 + rng.uniform(0, .01, shape)


@pytest.mark.parametrize("case", POOLS)
def test_maxpool(backend, rng, case):
    k, s, p, shape = case
    check_layer(lambda dt: MaxPool2d(k, s, p), (_distinct(rng, shape),),
                second=(_distinct(rng, shape),), gradcheck_kw=dict(eps=1e-4))


@pytest.mark.parametrize("cip", [True, False])
@pytest.mark.parametrize("case", POOLS)
def test_avgpool(backend, rng, case, cip):
    k, s, p, shape = case
    check_layer(lambda dt: AvgPool2d(k, s, p, count_include_pad=cip),
                (rng.standard_normal(shape),), skip=() if cip else ("cpu_vs_cuda",))


@pytest.mark.parametrize("case", POOLS)
def test_pooling_matches_torch(backend, rng, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    k, s, p, shape = case
    x = rng.standard_normal(shape).astype(np.float32)
    for layer, ref in [(MaxPool2d(k, s, p), lambda t: F.max_pool2d(t, k, s, p)),
                       (AvgPool2d(k, s, p), lambda t: F.avg_pool2d(t, k, s, p)),
                       (AvgPool2d(k, s, p, count_include_pad=False),
                        lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=False))]:
        y = layer(x)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        dx = backend.to_numpy(layer.backward(backend.asarray(gy)))
        tx = torch.tensor(x, requires_grad=True)
        ty = ref(tx)
        ty.backward(torch.tensor(gy))
        assert y.dtype == np.float32 and dx.dtype == np.float32
        np.testing.assert_allclose(backend.to_numpy(y), ty.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-5)


def test_maxpool_ties_go_to_first(backend):
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 0, 2] = x[0, 0, 1, 3] = 5.0      # a tie inside the second window
    pool = MaxPool2d(2, 2)
    y = pool(x)
    dx = backend.to_numpy(pool.backward(backend.asarray(np.ones(y.shape))))
    expected = np.zeros((1, 1, 3, 4))
    expected[0, 0, 0, 0] = 1.0                 # all-zero window: the first element
    expected[0, 0, 0, 2] = 1.0
    np.testing.assert_array_equal(dx, expected)
    # overlapping windows sharing one maximum accumulate
    pool = MaxPool2d(3, 1)
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    x[0, 0, 2, 2] = 100
    y = pool(x)
    dx = backend.to_numpy(pool.backward(backend.asarray(np.ones(y.shape))))
    assert dx[0, 0, 2, 2] == 9 and dx.sum() == 9


def test_maxpool_padding_is_minus_inf(backend):
    x = -np.ones((1, 1, 2, 2))
    y = backend.to_numpy(MaxPool2d(2, 1, 1)(x))
    np.testing.assert_array_equal(y, -np.ones((1, 1, 3, 3)))


def test_adaptive_avgpool_global_and_divisible(backend, rng):
    x = rng.standard_normal((2, 3, 4, 6))
    pool = AdaptiveAvgPool2d(1)
    y = pool(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(backend.to_numpy(y)[..., 0, 0], x.mean(axis=(2, 3)))
    check_layer(lambda dt: AdaptiveAvgPool2d(1), (x,))
    check_layer(lambda dt: AdaptiveAvgPool2d((2, 3)), (x,))
    with pytest.raises(NotImplementedError, match="output_size=1"):
        AdaptiveAvgPool2d(5)(x)
    x32 = x.astype(np.float32)
    assert pool(x32).dtype == np.float32 and pool.backward(pool(x32)).dtype == np.float32


def test_pooling_errors(backend):
    with pytest.raises(ValueError, match="at most half"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="at most half"):
        AvgPool2d(3, padding=2)
    with pytest.raises(ValueError, match="4-D"):
        MaxPool2d(2)(np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2d(3)(np.ones((1, 1, 2, 2)))


def test_pooling_noncontiguous_batch1(backend, rng):
    x = rng.standard_normal((1, 5, 6, 2)).astype(np.float32).transpose(0, 3, 1, 2)
    for layer in (MaxPool2d(2), MaxPool2d(3, 2, 1), AvgPool2d(2),
                  AvgPool2d(3, 1, 1, count_include_pad=False)):
        y = backend.to_numpy(layer(x))
        # max: a selection; avg: window offsets added in a fixed order whatever the layout
        np.testing.assert_array_equal(y, backend.to_numpy(layer(np.ascontiguousarray(x))))
        dx = layer.backward(backend.asarray(np.ones(y.shape, np.float32)))
        assert dx.shape == x.shape and dx.dtype == np.float32
