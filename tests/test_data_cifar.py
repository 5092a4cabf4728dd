"""CIFAR-10 loading on tiny generated archives in the official format (no network)."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nnx.data import DataError, cifar10
from nnx.data.cifar10 import FOLDER, load_cifar10, write_batch

ROWS = 4  # images per batch file in the tiny archives


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    names = list(cifar10.TRAIN_BATCHES) + [cifar10.TEST_BATCH]
    return {n: (rng.integers(0, 256, (ROWS, 3072), dtype=np.uint8),
                rng.integers(0, 10, ROWS)) for n in names}


def _make_dir(root: Path, batches) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        write_batch(folder / name, data, labels)
    return folder


def _make_archive(path: Path, batches, extra_members=()) -> str:
    """Write a .tar.gz like the official one and return its MD5."""
    src = path.parent / "src"
    _make_dir(src, batches)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / FOLDER, arcname=FOLDER)
        for name, payload in extra_members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NNX_DATA", str(d))
    return d


def _check(result, batches):
    x_train, y_train, x_test, y_test = result
    assert x_train.shape == (5 * ROWS, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (ROWS, 3, 32, 32) and y_test.dtype == np.int64
    assert y_train.shape == (5 * ROWS,) and y_train.dtype == np.int64
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    first = batches["data_batch_1"][0]
    np.testing.assert_array_equal(x_train[0, 1].ravel(), first[0, 1024:2048])
    np.testing.assert_array_equal(x_train[ROWS:2 * ROWS].reshape(ROWS, -1),
                                  batches["data_batch_2"][0])
    np.testing.assert_array_equal(y_test, batches["test_batch"][1])


def test_extracted_dir_offline_without_checksum(tmp_path, cache):
    b = _batches()
    _make_dir(tmp_path / "data", b)
    _check(load_cifar10(tmp_path / "data", download=False, batch_rows=ROWS), b)
    # the batches directory itself also works
    _check(load_cifar10(tmp_path / "data" / FOLDER, download=False, batch_rows=ROWS), b)


def test_good_archive_is_verified_and_extracted_into_cache(tmp_path, cache):
    b = _batches()
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _make_archive(archive, b)
    _check(load_cifar10(archive, md5=md5, batch_rows=ROWS), b)
    assert (cache / FOLDER / "test_batch").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left
    # the extracted cache is now found without any root
    _check(load_cifar10(download=False, batch_rows=ROWS), b)


def test_archive_with_wrong_checksum(tmp_path, cache):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _make_archive(archive, _batches())
    with pytest.raises(DataError) as e:
        load_cifar10(archive, batch_rows=ROWS)          # official MD5 expected
    msg = str(e.value)
    assert str(archive) in msg and cifar10.MD5 in msg and md5 in msg
    assert not (cache / FOLDER).exists()


def test_truncated_archive(tmp_path, cache):
    archive = tmp_path / "cifar-10-python.tar.gz"
    _make_archive(archive, _batches())
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar10(archive, batch_rows=ROWS)
    # with the checksum skipped, extraction itself reports the truncation
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar10(archive, md5=None, batch_rows=ROWS)
    assert not (cache / FOLDER).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt",
                                    f"{FOLDER}/../../evil.txt"])
def test_unsafe_member_paths_are_rejected(tmp_path, cache, member):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _make_archive(archive, _batches(), extra_members=[(member, b"x")])
    with pytest.raises(DataError, match="unsafe member"):
        load_cifar10(archive, md5=md5, batch_rows=ROWS)
    assert not (tmp_path / "evil.txt").exists() and not (cache / FOLDER).exists()


def test_corrupt_and_malformed_batches(tmp_path, cache):
    b = _batches()
    folder = _make_dir(tmp_path / "data", b)
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(good[: len(good) // 3])      # truncated pickle
    with pytest.raises(DataError, match="data_batch_3.*truncated or corrupt"):
        load_cifar10(tmp_path / "data", batch_rows=ROWS)
    (folder / "data_batch_3").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path / "data", batch_rows=ROWS)
    write_batch(folder / "data_batch_3", b["data_batch_3"][0][:, :100], b["data_batch_3"][1])
    with pytest.raises(DataError, match=r"\(4, 100\).*expected \(4, 3072\)"):
        load_cifar10(tmp_path / "data", batch_rows=ROWS)
    with pytest.raises(DataError, match="expected \\(10000, 3072\\)"):
        load_cifar10(tmp_path / "data")                  # real size expected by default
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_cifar10(tmp_path / "data", batch_rows=ROWS)


def test_pickle_cannot_run_code(tmp_path, cache):
    b = _batches()
    folder = _make_dir(tmp_path / "data", b)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar10(tmp_path / "data", batch_rows=ROWS)


def test_missing_data_messages(tmp_path, cache):
    with pytest.raises(DataError, match="--data DIR.*--dataset digits"):
        load_cifar10(download=False)
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds neither"):
        load_cifar10(tmp_path / "empty")


# ------------------------------------------------------------------ download path
class _Response(io.BytesIO):
    def __init__(self, payload, fail_after=None):
        super().__init__(payload)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n if self.fail_after is None else min(n, 256))


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_via_file_url(tmp_path, cache):
    b = _batches()
    archive = tmp_path / "served.tar.gz"
    md5 = _make_archive(archive, b)
    _check(load_cifar10(url=archive.as_uri(), md5=md5, batch_rows=ROWS, verbose=False), b)
    assert _leftovers(cache) == [FOLDER, "cifar-10-python.tar.gz"]


def test_download_checksum_mismatch_keeps_nothing(tmp_path, cache, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    md5 = _make_archive(archive, _batches())
    monkeypatch.setattr(cifar10, "_urlopen", lambda url, timeout: _Response(
        archive.read_bytes()))
    with pytest.raises(DataError) as e:
        load_cifar10(url="https://example.invalid/c.tar.gz", batch_rows=ROWS, verbose=False)
    assert cifar10.MD5 in str(e.value) and md5 in str(e.value)
    assert "example.invalid" in str(e.value)
    assert _leftovers(cache) == []      # neither the archive nor a temp file


def test_download_failure_midway_leaves_no_temp_file(tmp_path, cache, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    md5 = _make_archive(archive, _batches())
    monkeypatch.setattr(cifar10, "_urlopen", lambda url, timeout: _Response(
        archive.read_bytes(), fail_after=512))
    with pytest.raises(DataError, match="could not download.*--data DIR.*--dataset digits"):
        load_cifar10(md5=md5, batch_rows=ROWS, verbose=False)
    assert _leftovers(cache) == []

    def refuse(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar10, "_urlopen", refuse)
    with pytest.raises(DataError, match="network is unreachable"):
        load_cifar10(md5=md5, batch_rows=ROWS, verbose=False)
    assert _leftovers(cache) == []
