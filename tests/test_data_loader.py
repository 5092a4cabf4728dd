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


# ------------------------------------------------------------------ fresh passes (issue 13)
def _labels(batches):
    return np.concatenate([_host(b[1]) for b in batches])


@pytest.mark.parametrize("shuffle", [False, True])
def test_peeking_or_breaking_does_not_shorten_the_next_pass(shuffle):
    x, y = _data(23)
    dl = DataLoader((x, y), batch_size=4, shuffle=shuffle, seed=5)
    xb, yb = next(iter(dl))                       # peek: one batch of a pass
    assert len(_host(yb)) == 4
    full = list(dl)
    assert len(full) == 6 and sorted(_labels(full)) == list(range(23))
    for k, _ in enumerate(dl):                    # leave a pass early
        if k == 1:
            break
    again = list(dl)
    assert len(again) == 6 and sorted(_labels(again)) == list(range(23))
    # each iter() is the next epoch, as PyTorch's sampler draws a new permutation per pass
    assert dl.epoch == 4
    ref = DataLoader((x, y), batch_size=4, shuffle=shuffle, seed=5)
    for e, got in ((1, full), (3, again)):
        np.testing.assert_array_equal(_labels(got), ref.order(e))
    if shuffle:
        assert not np.array_equal(_labels(full), _labels(again))


def test_two_live_iterators_are_independent():
    x, y = _data(12)
    dl = DataLoader((x, y), batch_size=5)
    a, b = iter(dl), iter(dl)
    assert len(a) == 3 and [len(_host(t[1])) for t in b] == [5, 5, 2]
    assert [len(_host(t[1])) for t in a] == [5, 5, 2] and len(a) == 0


def test_set_epoch_chooses_the_next_pass():
    x, y = _data(17)
    dl = DataLoader((x, y), batch_size=4, shuffle=True, seed=2)
    dl.set_epoch(7)
    np.testing.assert_array_equal(_labels(list(dl)), dl.order(7))
    assert dl.epoch == 8
    np.testing.assert_array_equal(_labels(list(dl)), dl.order(8))


def test_state_dict_of_a_finished_pass_starts_the_next_epoch():
    x, y = _data(9)
    dl = DataLoader((x, y), batch_size=4, shuffle=True, seed=1)
    list(dl)
    assert (dl.state_dict()["epoch"], dl.state_dict()["position"]) == (1, 0)
    other = DataLoader((x, y), batch_size=4, shuffle=True, seed=3)
    other.load_state_dict(dl.state_dict())
    np.testing.assert_array_equal(_labels(list(other)), _labels(list(dl)))


# ------------------------------------------------------------------ datasets and collate
from nnx.data import Dataset, Subset, TensorDataset, default_collate, random_split  # noqa: E402


class _Squares(Dataset):
    """Samples (features, label, weight): a map-style data set with mixed fields."""

    def __init__(self, n, rng):
        self.x = rng.standard_normal((n, 3)).astype(np.float32)
        self.n = n

    def __getitem__(self, i):
        return self.x[i], i % 3, float(i) ** 0.5

    def __len__(self):
        return self.n


def test_map_style_dataset_with_default_collate(backend, rng):
    ds = _Squares(11, rng)
    dl = DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    seen = []
    for xb, yb, wb in dl:
        assert backend.is_native(xb) and _host(xb).dtype == np.float32
        assert _host(yb).dtype == np.int64 and _host(wb).dtype == np.float64
        idx = dl.order(0)[len(seen):len(seen) + len(_host(yb))]
        np.testing.assert_array_equal(_host(xb), ds.x[idx])
        np.testing.assert_array_equal(_host(yb), idx % 3)
        np.testing.assert_array_equal(_host(wb), np.sqrt(idx.astype(float)))
        seen += list(idx)
    assert sorted(seen) == list(range(11))
    assert len(DataLoader(ds, batch_size=4, drop_last=True)) == 2


def test_default_collate_rules(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    out = default_collate([(a, 1, "p", {"k": 2.5}), (b, 2, "q", {"k": 0.5})])
    assert isinstance(out, tuple) and len(out) == 4       # tuples stay tuples
    np.testing.assert_array_equal(out[0], np.stack([a, b]))
    assert out[1].dtype == np.int64 and list(out[1]) == [1, 2]
    assert out[2] == ["p", "q"]
    np.testing.assert_array_equal(out[3]["k"], [2.5, 0.5])
    assert default_collate([np.float32(1), np.float32(2)]).dtype == np.float32
    assert default_collate([[1, True], [2, False]])[1].dtype == np.bool_
    with pytest.raises(RuntimeError, match="same number of fields"):
        default_collate([(1, 2), (1,)])
    with pytest.raises(RuntimeError, match="different shapes"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(TypeError, match="collate_fn"):
        default_collate([object(), object()])


def test_default_collate_matches_torch(rng):
    torch = pytest.importorskip("torch")
    from torch.utils.data import default_collate as tc
    samples = [(rng.standard_normal(3).astype(np.float32), int(rng.integers(9)), float(
        rng.random())) for _ in range(5)]
    ours, theirs = default_collate(samples), tc(samples)
    for o, t in zip(ours, theirs):
        np.testing.assert_array_equal(o, t.numpy())
        assert o.dtype == t.numpy().dtype


def test_collate_fn_and_tensor_dataset(rng):
    x = rng.standard_normal((10, 2))
    y = rng.integers(0, 4, 10)
    ds = TensorDataset(x, y)
    assert len(ds) == 10 and all(np.array_equal(u, v) for u, v in zip(ds[3], (x[3], y[3])))
    calls = []

    def pad_collate(samples):
        calls.append(len(samples))
        return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])

    got = list(DataLoader(ds, batch_size=4, collate_fn=pad_collate))
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([_host(g[0]) for g in got]), x)
    # the batched fast path of TensorDataset gives what collating the samples gives
    fast = list(DataLoader(ds, batch_size=3, shuffle=True, seed=4))
    slow = list(DataLoader(ds, batch_size=3, shuffle=True, seed=4,
                           collate_fn=lambda s: default_collate(s)))
    for f, s in zip(fast, slow):
        for u, v in zip(f, s):
            np.testing.assert_array_equal(_host(u), _host(v))
            assert _host(u).dtype == _host(v).dtype
    with pytest.raises(ValueError, match=r"first dimensions \[10, 9\]"):
        TensorDataset(x, y[:9])


def test_dataset_base_class_and_bad_arguments():
    class NoLen(Dataset):
        def __getitem__(self, i):
            return i

    with pytest.raises(NotImplementedError, match="NoLen must implement __len__"):
        len(NoLen())
    with pytest.raises(TypeError, match="map-style Dataset"):
        DataLoader(42)
    with pytest.raises(ValueError, match="batch_size=None"):
        DataLoader(TensorDataset(np.zeros(3)), batch_size=None)
    with pytest.raises(TypeError):                 # PyTorch's sampler slot: keyword-only
        DataLoader(TensorDataset(np.zeros(3)), 1, False, None)


def test_random_split_counts_fractions_and_seeds(rng):
    ds = TensorDataset(np.arange(20))
    parts = random_split(ds, [5, 15], seed=3)
    assert [len(p) for p in parts] == [5, 15] and all(isinstance(p, Subset) for p in parts)
    values = sorted(int(p[i][0]) for p in parts for i in range(len(p)))
    assert values == list(range(20))                     # a partition
    again = random_split(ds, [5, 15], generator=np.random.default_rng(3))
    assert [p.indices for p in again] == [p.indices for p in parts]
    assert random_split(ds, [5, 15], seed=4)[0].indices != parts[0].indices
    nnx.manual_seed(11)
    a = random_split(ds, [0.5, 0.5])
    nnx.manual_seed(11)
    assert random_split(ds, [0.5, 0.5])[0].indices == a[0].indices
    assert [len(p) for p in random_split(ds, [0.3, 0.3, 0.4], seed=0)] == [6, 6, 8]
    with pytest.raises(ValueError, match="does not equal the length"):
        random_split(ds, [5, 5])
    # a Subset batches like any data set (its batched path composes the indices)
    sub = parts[1]
    got = np.concatenate([_host(b[0]) for b in DataLoader(sub, batch_size=4)])
    np.testing.assert_array_equal(got, np.array(sub.indices))


@pytest.mark.parametrize("n,fractions", [(10, [0.3, 0.7]), (7, [0.1, 0.2, 0.7]),
                                         (101, [1 / 3, 1 / 3, 1 / 3]), (5, [0.5, 0.5]),
                                         (13, [0.25, 0.25, 0.25, 0.25])])
def test_random_split_fraction_lengths_match_torch(n, fractions):
    torch = pytest.importorskip("torch")
    theirs = [len(s) for s in torch.utils.data.random_split(range(n), fractions)]
    assert [len(s) for s in random_split(TensorDataset(np.arange(n)), fractions,
                                         seed=0)] == theirs


# ------------------------------------------------------------------ prefetching threads
import threading  # noqa: E402
import time  # noqa: E402


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("nnx-DataLoader")]


def _wait_no_loader_threads(timeout=10.0):
    end = time.monotonic() + timeout
    while _loader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return _loader_threads()


@pytest.mark.parametrize("kw", [dict(prefetch=True), dict(num_workers=3),
                                dict(num_workers=2, prefetch_factor=1)])
def test_prefetching_gives_identical_batches(backend, kw):
    x = np.random.default_rng(2).integers(0, 256, (37, 3, 8, 8), dtype=np.uint8)
    y = np.arange(37)
    t = Compose([RandomCrop(8, padding=1), RandomHorizontalFlip(), Normalize([0.5] * 3,
                                                                             [0.5] * 3)])

    def run(**extra):
        nnx.manual_seed(5)
        dl = DataLoader((x, y), 6, shuffle=True, seed=1, transform=t, **extra)
        return [(_host(xb), _host(yb)) for _ in range(2) for xb, yb in dl]

    plain, threaded = run(), run(**kw)
    assert len(plain) == len(threaded) == 14
    for (a, b), (c, d) in zip(plain, threaded):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not _wait_no_loader_threads()


def test_prefetch_thread_stops_when_the_iterator_is_dropped():
    import gc
    started = threading.Event()

    class Slow(Dataset):
        def __getitem__(self, i):
            started.set()
            time.sleep(0.002)
            return np.float64(i)

        def __len__(self):
            return 400

    assert not _wait_no_loader_threads()
    dl = DataLoader(Slow(), batch_size=2, num_workers=2)
    it = iter(dl)
    assert float(_host(next(it))[0]) == 0.0 and started.is_set()
    assert _loader_threads()
    del it
    gc.collect()
    assert not _wait_no_loader_threads()
    for k, _ in enumerate(dl):                   # break out of a for loop: the same
        if k == 3:
            break
    gc.collect()
    assert not _wait_no_loader_threads()


def test_exception_in_a_loader_thread_surfaces_in_the_caller():
    class Broken(Dataset):
        def __getitem__(self, i):
            if i == 7:
                raise KeyError(f"sample {i} is missing")
            return np.array([i])

        def __len__(self):
            return 12

    dl = DataLoader(Broken(), batch_size=3, prefetch=True)
    it = iter(dl)
    assert _host(next(it)).ravel().tolist() == [0, 1, 2]
    assert _host(next(it)).ravel().tolist() == [3, 4, 5]
    with pytest.raises(KeyError, match="sample 7 is missing") as info:
        next(it)
    if hasattr(info.value, "add_note"):            # Python >= 3.11: says which batch
        assert any("batch 2 of epoch 0" in n for n in info.value.__notes__)
    with pytest.raises(StopIteration):
        next(it)                                   # the pass is over
    assert not _wait_no_loader_threads()
    with pytest.raises(KeyError, match="sample 7"):   # the same inside a for loop
        for _ in DataLoader(Broken(), batch_size=3, num_workers=2):
            pass
    assert not _wait_no_loader_threads()
