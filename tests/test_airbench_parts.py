"""The library pieces of the airbench94 recipe: patch whitening, the frozen-weight
BatchNorm conv group (layer harness), the network, lookahead, alternating flip/translate and
test-time augmentation."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.backend as B
from layer_harness import check_layer
from nnx import tta
from nnx.data.alternating_flip import AlternatingFlipTranslate, reflect_pad, translate
from nnx.models.airbench import Airbench94, ConvGroup
from nnx.nn import Conv2d, CrossEntropyLoss
from nnx.nn.whitening import patch_covariance, whitening_filters, whitening_init_
from nnx.optim import SGD, Lookahead, lookahead_decay


def _correlated_images(rng, n=20, c=3, size=9):
    """Images whose channels and neighbouring pixels are correlated (a non-trivial Σ)."""
    x = rng.standard_normal((n, c, size + 1, size + 1))
    x = x[:, :, 1:, 1:] + 0.5 * x[:, :, :-1, :-1]                    # spatial correlation
    mix = np.array([[1.0, 0.3, 0.1], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]])[:c, :c]
    return np.einsum("dc,nchw->ndhw", mix, x) + 0.3


# ------------------------------------------------------------------ whitening
def test_patch_covariance_is_the_mean_outer_product_of_all_patches(rng):
    x = _correlated_images(rng, n=7, size=6)
    patches = [x[n, :, i:i + 2, j:j + 2].ravel() for n in range(7) for i in range(5)
               for j in range(5)]
    want = np.mean([np.outer(p, p) for p in patches], axis=0)
    # chunk=3: the accumulation over chunks of images is exercised; float64 sums of 175
    # terms of size ~10, so 1e-12 is ~1000 γ_175 of margin
    np.testing.assert_allclose(patch_covariance(x, 2, chunk=3), want, rtol=1e-12, atol=1e-12)


def test_whitening_filters_whiten_the_patches(rng):
    x = _correlated_images(rng)
    eps = 5e-4
    w = whitening_filters(x, 2, eps)
    d = 12
    assert w.shape == (2 * d, 3, 2, 2)
    np.testing.assert_array_equal(w[d:], -w[:d])
    flat = w[:d].reshape(d, -1)
    sigma = patch_covariance(x, 2)
    lam = np.sort(np.linalg.eigvalsh(sigma))[::-1]
    # W Σ Wᵀ = diag(λ/(λ+ε)): unit, uncorrelated outputs (up to ε); float64 eigensolver
    np.testing.assert_allclose(flat @ sigma @ flat.T, np.diag(lam / (lam + eps)), atol=1e-10)
    v = flat * np.sqrt(lam + eps)[:, None]
    peak = v[np.arange(d), np.argmax(np.abs(v), axis=1)]
    assert (peak > 0).all()                  # the deterministic sign convention


def test_whitening_init_fills_the_conv_and_checks_shapes(backend, rng):
    x = _correlated_images(rng).astype(np.float32)
    conv = Conv2d(3, 24, 2)
    bias = backend.to_numpy(conv.bias.data).copy()
    whitening_init_(conv, backend.asarray(x))
    np.testing.assert_allclose(backend.to_numpy(conv.weight.data), whitening_filters(x, 2),
                               rtol=1e-6, atol=1e-6 * np.abs(whitening_filters(x, 2)).max())
    np.testing.assert_array_equal(backend.to_numpy(conv.bias.data), bias)
    with pytest.raises(ValueError, match="needs 24 output channels"):
        whitening_init_(Conv2d(3, 12, 2), backend.asarray(x))
    with pytest.raises(ValueError, match="needs 24 output channels and images with 3"):
        whitening_init_(conv, backend.asarray(x[:, :2]))


# ------------------------------------------------------------------ layers and network
def _group(dt, frozen=False):
    g = ConvGroup(3, 4, dtype=dt)
    be = B.get()
    rng = np.random.default_rng(2)
    for p in g.parameters():                  # away from the identity init; biases non-zero
        p.data[...] = be.asarray(rng.standard_normal(p.shape) * 0.5 + (p.data.ndim == 1))
    if not frozen:                            # nnx.gradcheck checks every parameter
        g.requires_grad_(True)
    return g


def test_conv_group_layer_harness(rng):
    check_layer(_group, (rng.standard_normal((4, 3, 6, 6)),))


def test_conv_group_frozen_weights_change_only_their_own_gradient(backend, rng):
    x = backend.asarray(rng.standard_normal((4, 3, 6, 6)))
    dy = backend.asarray(rng.standard_normal((4, 4, 3, 3)))
    grads = []
    for frozen in (False, True):
        g = _group(np.float64, frozen)
        g(x)
        g.backward(dy)
        grads.append({k: p.grad for k, p in g.named_parameters()})
    for k, full in grads[0].items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight"):
            assert grads[1][k] is None
        else:                                 # the same code path: identical
            np.testing.assert_array_equal(backend.to_numpy(grads[1][k]),
                                          backend.to_numpy(full))


def test_frozen_batchnorm_weight_gets_no_gradient_and_stays_one(backend, rng):
    model = Airbench94(widths=(4, 8, 8))
    x = backend.asarray(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    # all parameters, frozen ones included: the optimizer skips those without a gradient
    # (weight decay would otherwise move them off 1)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    loss = CrossEntropyLoss()
    for _ in range(2):
        loss(model(x), backend.asarray(np.arange(4)))
        opt.zero_grad()
        model.backward(loss.backward(), input_grad=False)
        opt.step()
    bns = [m for m in model.modules() if isinstance(m, nnx.nn.BatchNorm2d)]
    assert len(bns) == 6
    for bn in bns:
        assert bn.weight.grad is None and not bn.weight.requires_grad
        np.testing.assert_array_equal(backend.to_numpy(bn.weight.data), 1)
        assert bn.bias.grad is not None and np.abs(backend.to_numpy(bn.bias.data)).max() > 0
        assert bn.eps == 1e-12 and abs(bn.momentum - 0.4) < 1e-15
    assert model.whiten.weight.grad is None and model.whiten.bias.grad is not None


def test_network_shapes_identity_init_and_registry(backend, rng):
    model = nnx.models.get("airbench94", widths=(4, 8, 8))
    assert model(backend.asarray(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
                 ).shape == (2, 10)
    w = backend.to_numpy(model.blocks[1].conv1.weight.data)          # (8, 4, 3, 3)
    eye = np.zeros((4, 4, 3, 3))
    eye[np.arange(4), np.arange(4), 1, 1] = 1
    np.testing.assert_array_equal(w[:4], eye)
    assert np.abs(w[4:]).max() > 0                                   # the rest: default init
    assert model.head.bias is None and model.scale == pytest.approx(1 / 9)
    assert [id(p) for p in model.batchnorm_biases()] == [
        id(m.bias) for m in model.modules() if isinstance(m, nnx.nn.BatchNorm2d)]
    with pytest.raises(ValueError, match="three positive integers"):
        Airbench94(widths=(4, 8))


# ------------------------------------------------------------------ lookahead
def test_lookahead_averages_parameters_and_float_buffers(backend, rng):
    model = Airbench94(widths=(2, 4, 4))
    la = Lookahead(model)
    slow = [backend.to_numpy(a).copy() for a in la.slow]
    bn = model.blocks[0].norm1
    for p in model.parameters():
        p.data += backend.asarray(rng.standard_normal(p.shape).astype(np.float32))
    bn.running_mean += 1.0
    bn.num_batches_tracked += 7
    fast = [backend.to_numpy(p.data).copy() for p in model.parameters()]
    fast += [backend.to_numpy(b).copy() for _, b in model.named_buffers()
             if b.dtype.kind == "f"]
    la.update(0.3)
    now = [backend.to_numpy(p.data) for p in model.parameters()]
    now += [backend.to_numpy(b) for _, b in model.named_buffers() if b.dtype.kind == "f"]
    assert len(now) == len(slow) == len(fast)
    for s, f, got in zip(slow, fast, now):
        # one lerp in float32: a few ulps of the operands
        np.testing.assert_allclose(got, 0.3 * s + 0.7 * f, rtol=1e-6, atol=1e-6)
    assert int(backend.to_numpy(bn.num_batches_tracked)) == 7           # integers untouched
    for p in model.parameters():
        p.data += 1
    la.update(1.0)                                                       # copy back only
    for got, a in zip([backend.to_numpy(p.data) for p in model.parameters()], la.slow):
        np.testing.assert_array_equal(got, backend.to_numpy(a))
    with pytest.raises(ValueError, match="decay must be in"):
        la.update(1.5)


def test_lookahead_decay_schedule():
    assert lookahead_decay(50, 100) == pytest.approx(0.95 ** 5 * 0.125, rel=1e-15)
    assert lookahead_decay(100, 100, 0.9, 2, 1.0) == pytest.approx(0.81, rel=1e-15)
    with pytest.raises(ValueError):
        lookahead_decay(1, 0)


# ------------------------------------------------------------------ augmentation
def test_alternating_flip_translate(backend, rng):
    x = rng.standard_normal((64, 2, 6, 7)).astype(np.float32)
    aug = AlternatingFlipTranslate(backend.asarray(x), translate=2)
    mask = backend.to_numpy(aug.flip_mask)
    assert 0 < mask.sum() < 64
    base = np.where(mask[:, None, None, None], x[..., ::-1], x)
    padded = np.pad(base, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for epoch in range(3):
        got = backend.to_numpy(aug.epoch_images(epoch))
        shifts = backend.to_numpy(aug.shifts)
        assert shifts.min() >= -2 and shifts.max() <= 2 and len(np.unique(shifts)) == 5
        want = np.stack([padded[n, :, 2 + sy:2 + sy + 6, 2 + sx:2 + sx + 7]
                         for n, (sy, sx) in enumerate(shifts)])
        if epoch % 2:
            want = want[..., ::-1]
        np.testing.assert_array_equal(got, want)            # pure data movement: exact
    plain = AlternatingFlipTranslate(backend.asarray(x), translate=0, flip=False)
    np.testing.assert_array_equal(backend.to_numpy(plain.epoch_images(1)), x)
    with pytest.raises(ValueError, match="translate must be in"):
        AlternatingFlipTranslate(backend.asarray(x), translate=6)


def test_reflect_pad_and_translate_match_numpy(backend, rng):
    x = rng.standard_normal((3, 1, 4, 5))
    np.testing.assert_array_equal(backend.to_numpy(reflect_pad(backend.asarray(x), 1)),
                                  np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect"))
    shifts = backend.asarray(np.array([[0, 0], [-1, 1], [1, -1]]))
    got = backend.to_numpy(translate(reflect_pad(backend.asarray(x), 1), shifts, (4, 5)))
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    np.testing.assert_array_equal(got[1], p[1, :, 0:4, 2:7])
    np.testing.assert_array_equal(got[2], p[2, :, 2:6, 0:5])


# ------------------------------------------------------------------ test-time augmentation
def test_tta_levels_are_the_documented_averages(backend, rng):
    model = Airbench94(widths=(2, 4, 4))
    model.train()
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    xb = backend.asarray(x)

    def f(a):
        model.eval()
        with nnx.nn.no_grad():
            return backend.to_numpy(model(backend.asarray(np.ascontiguousarray(a))))
    mirror = lambda a: 0.5 * f(a) + 0.5 * f(a[..., ::-1])               # noqa: E731
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    want = {0: f(x), 1: mirror(x),
            2: 0.5 * mirror(x) + 0.25 * (mirror(p[:, :, :32, :32]) + mirror(p[:, :, 2:, 2:]))}
    model.train()
    for level, w in want.items():
        got = backend.to_numpy(tta.predict(model, xb, level, batch_size=2))
        # the same network on the same inputs in another batch split: reordered sums only
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
        assert model.training                                   # the mode is restored
    with pytest.raises(ValueError, match="tta level"):
        tta.predict(model, xb, 3)
