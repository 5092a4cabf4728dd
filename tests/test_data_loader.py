"""DataLoader batching/order/resume and the whole-batch transforms."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.data import (Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip,
                      load_digits)


def _data(n=10):
    x = np.arange(n * 2 * 3 * 3, dtype=np.float32).reshape(n, 2, 3, 3)
    return x, np.arange(n, dtype=np.int64)


def _host(a):
    return nnx.backend.get().to_numpy(a)


def test_batching_and_drop_last(backend):
    x, y = _data(10)
    dl = DataLoader((x, y), batch_size=4)
    batches = list(dl)
    assert len(dl) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    assert all(backend.is_native(b[0]) and backend.is_native(b[1]) for b in batches)
    np.testing.assert_array_equal(np.concatenate([_host(b[0]) for b in batches]), x)
    dl = DataLoader((x, y), batch_size=4, drop_last=True)
    assert len(dl) == 2 and [len(b[1]) for b in dl] == [4, 4]
    assert len(list(DataLoader((x, y), batch_size=1))) == 10
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        DataLoader((x, y[:9]))


def test_shuffle_is_a_deterministic_permutation_per_epoch(backend):
    x, y = _data(23)
    a = DataLoader((x, y), batch_size=5, shuffle=True, seed=7)
    b = DataLoader((x, y), batch_size=5, shuffle=True, seed=7)
    e0 = np.concatenate([_host(yb) for _, yb in a])
    e1 = np.concatenate([_host(yb) for _, yb in a])
    assert sorted(e0) == list(range(23)) and sorted(e1) == list(range(23))
    assert not np.array_equal(e0, e1) and a.epoch == 2
    np.testing.assert_array_equal(np.concatenate([_host(yb) for _, yb in b]), e0)
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([_host(yb) for _, yb in b]), e1)
    for xb, yb in DataLoader((x, y), batch_size=5, shuffle=True, seed=7):
        np.testing.assert_array_equal(_host(xb), x[_host(yb)])  # images follow labels
    c = DataLoader((x, y), batch_size=5, shuffle=True, seed=8)
    assert not np.array_equal(np.concatenate([_host(yb) for _, yb in c]), e0)


def test_state_dict_resumes_mid_epoch():
    x, y = _data(23)
    full = DataLoader((x, y), batch_size=4, shuffle=True, seed=3)
    ref = [_host(yb) for _ in range(2) for _, yb in full]
    part = DataLoader((x, y), batch_size=4, shuffle=True, seed=3)
    got = [_host(yb) for _, yb in part]
    it = iter(part)
    got += [_host(next(it)[1]) for _ in range(2)]
    state = part.state_dict()
    assert state["epoch"] == 1 and state["position"] == 2
    resumed = DataLoader((x, y), batch_size=4, shuffle=True, seed=999)
    resumed.load_state_dict(state)
    got += [_host(yb) for _, yb in resumed]
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    with pytest.raises(ValueError, match="batches of 4"):
        DataLoader((x, y), batch_size=5).load_state_dict(state)


def test_horizontal_flip_is_exact_mirror(backend):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 3, 5, 7), dtype=np.uint8)
    out = _host(RandomHorizontalFlip(0.5)(backend.asarray(x)))
    assert out.dtype == np.uint8 and out.shape == x.shape
    flipped = [np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54
    np.testing.assert_array_equal(_host(RandomHorizontalFlip(1.0)(backend.asarray(x))),
                                  x[..., ::-1])
    np.testing.assert_array_equal(_host(RandomHorizontalFlip(0.0)(backend.asarray(x))), x)


def test_random_crop_with_padding_keeps_size_and_content(backend):
    rng = np.random.default_rng(1)
    x = rng.integers(1, 256, (32, 2, 6, 6), dtype=np.uint8)       # no zeros in the image
    out = _host(RandomCrop(6, padding=2)(backend.asarray(x)))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for o, p in zip(out, padded):   # every crop is a window of the zero-padded image
        hits = [(i, j) for i in range(5) for j in range(5)
                if np.array_equal(o, p[:, i:i + 6, j:j + 6])]
        assert hits, "crop is not a window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5
    np.testing.assert_array_equal(_host(RandomCrop(6)(backend.asarray(x))), x)
    small = _host(RandomCrop((3, 4))(backend.asarray(x)))
    assert small.shape == (32, 2, 3, 4)


def test_normalize_values(backend):
    x = np.array([[[[0, 255]], [[51, 102]]]], dtype=np.uint8)     # (1, 2, 1, 2)
    norm = Normalize(mean=[0.5, 0.2], std=[0.25, 0.1])
    out = _host(norm(backend.asarray(x)))
    expect = (x / 255.0 - np.array([0.5, 0.2]).reshape(1, 2, 1, 1)) / np.array(
        [0.25, 0.1]).reshape(1, 2, 1, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    xf = (x / 255.0).astype(np.float32)                            # float input: no /255
    np.testing.assert_allclose(_host(norm(backend.asarray(xf))), expect, atol=1e-6)
    with pytest.raises(ValueError, match="2 channel statistics but the batch has 3"):
        norm(backend.asarray(np.zeros((1, 3, 2, 2), np.uint8)))


def test_compose_in_loader_is_reproducible_from_the_backend_seed(backend):
    x = np.random.default_rng(2).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    y = np.zeros(20, np.int64)
    t = Compose([RandomCrop(8, padding=1), RandomHorizontalFlip(), Normalize([0.5] * 3,
                                                                             [0.5] * 3)])

    def run():
        nnx.manual_seed(5)
        return [_host(xb) for xb, _ in DataLoader((x, y), 8, shuffle=True, seed=1,
                                                  transform=t)]

    a, b = run(), run()
    assert [u.shape for u in a] == [(8, 3, 8, 8), (8, 3, 8, 8), (4, 3, 8, 8)]
    assert a[0].dtype == np.float32
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_digits_split():
    pytest.importorskip("sklearn")
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64 and x_train.max() == 255
    again = load_digits()
    np.testing.assert_array_equal(again[3], y_test)
    assert set(np.unique(y_test)) == set(range(10))
    xf = load_digits(dtype="float32")[0]
    assert xf.dtype == np.float32 and xf.max() == 1.0
