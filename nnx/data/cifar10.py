"""CIFAR-10 in the official "python version" format (Krizhevsky, 2009).

``load_cifar10()`` returns ``(x_train, y_train, x_test, y_test)``: images ``uint8`` of shape
``(50000, 3, 32, 32)`` / ``(10000, 3, 32, 32)`` (NCHW, RGB) and labels ``int64`` in [0, 10).

Where the data comes from, in order:

1. ``root`` given: a directory holding ``cifar-10-batches-py/`` (or that directory itself,
   or a directory holding ``cifar-10-python.tar.gz``), or the ``.tar.gz`` file itself.
   An extracted directory is used as is (no checksum); an archive is checked against ``md5``
   first and extracted into the cache directory.
2. the cache directory ``$NNX_DATA`` or ``~/.cache/nnx``: an extracted
   ``cifar-10-batches-py/`` or a verified ``cifar-10-python.tar.gz``;
3. a download of :data:`URL` (when ``download=True``) into the cache directory.

Every file is written under a temporary name and renamed when complete, so an interrupted
download or extraction never leaves a half file under the final name.  The batches are
pickles; they are read with a restricted unpickler that only rebuilds NumPy arrays, so a
tampered file cannot run code.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_open, remove_stale_temps, temp_sibling
from .errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

# The function that opens URLs; tests replace it to serve a generated archive offline.
_urlopen = urllib.request.urlopen

_HINT = ("pass a directory that holds cifar-10-batches-py/ (or the cifar-10-python.tar.gz "
         "archive) with --data DIR, or train on the offline scikit-learn data set with "
         "--dataset digits")


def cache_dir() -> Path:
    """``$NNX_DATA`` if set, else ``~/.cache/nnx``."""
    env = os.environ.get("NNX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nnx"


def load_cifar10(root=None, download: bool = True, *, md5: str | None = MD5, url: str = URL,
                 batch_rows: int = 10000, verbose: bool = True):
    """Load CIFAR-10 as ``(x_train, y_train, x_test, y_test)`` (see the module docstring).

    ``md5`` is the expected checksum of the archive (``None`` skips the check); ``url`` and
    ``batch_rows`` (images per batch file) exist so tests can use tiny archives of the same
    format.  Raises :class:`DataError` with a clear message on any failure.
    """
    folder = _locate(root, download, md5, url, verbose)
    parts = [_read_batch(folder / name, batch_rows) for name in TRAIN_BATCHES]
    x_test, y_test = _read_batch(folder / TEST_BATCH, batch_rows)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------- locating
def _locate(root, download, md5, url, verbose) -> Path:
    """Return the path of an extracted ``cifar-10-batches-py`` directory."""
    cache = cache_dir()
    if root is not None:
        root = Path(root).expanduser()
        if root.is_file():
            return _extract(root, cache, md5)
        if not root.is_dir():
            raise DataError(f"CIFAR-10: {root} does not exist; {_HINT}")
        if (root / TRAIN_BATCHES[0]).exists():
            return root
        if (root / FOLDER).is_dir():
            return root / FOLDER
        if (root / ARCHIVE).is_file():
            return _extract(root / ARCHIVE, cache, md5)
        raise DataError(f"CIFAR-10: {root} holds neither {FOLDER}/ nor {ARCHIVE}; {_HINT}")

    if (cache / FOLDER / TEST_BATCH).exists():
        return cache / FOLDER
    archive = cache / ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataError(f"CIFAR-10 is not in the cache {cache} and download=False; {_HINT}")
        _download(url, archive, md5, verbose)
    return _extract(archive, cache, md5)


def _download(url: str, dest: Path, md5: str | None, verbose: bool) -> None:
    """Stream ``url`` into a temporary file next to ``dest``, check it, then rename it."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"CIFAR-10: cannot create the cache directory {dest.parent} ({exc}); "
                        f"set NNX_DATA to a writable directory or {_HINT}") from None
    if verbose:
        print(f"downloading {url} to {dest} ...", file=sys.stderr, flush=True)
    # written to a temporary sibling and renamed once complete and verified; a download
    # killed midway leaves that temporary, and the next successful one removes it
    with atomic_open(dest, "wb") as out:
        h = hashlib.md5()
        try:
            with _urlopen(url, timeout=60) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except Exception as exc:  # URLError, HTTPError, timeouts, resets ...
            raise DataError(f"CIFAR-10: could not download {url} ({type(exc).__name__}: "
                            f"{exc}); {_HINT}") from None
        _compare_md5(h.hexdigest(), md5, url)


def _check_md5(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _compare_md5(h.hexdigest(), expected, path)


def _compare_md5(actual: str, expected: str | None, shown) -> None:
    if expected is not None and actual != expected.lower():
        raise DataError(f"CIFAR-10: checksum mismatch for {shown}: expected MD5 "
                        f"{expected}, got {actual}; the file is truncated or not the official "
                        f"archive (it was not kept as the cached archive)")


def _extract(archive: Path, cache: Path, md5: str | None) -> Path:
    """Verify ``archive`` and extract its ``cifar-10-batches-py/`` into ``cache``."""
    _check_md5(archive, md5)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"CIFAR-10: cannot create {cache} to extract {archive} into ({exc}); "
                        "set NNX_DATA to a writable directory") from None
    final = cache / FOLDER
    # staging: a temporary sibling of the final folder (removed on exit; one left by a
    # killed extraction is removed by the next successful one)
    with temp_sibling(final) as staging:
        staging.mkdir()
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [_safe_member(m, archive) for m in tar.getmembers()]
                for m in members:
                    if m.isfile():
                        target = staging / m.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(m) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(f"CIFAR-10: {archive} is truncated or corrupt and cannot be "
                            f"extracted ({type(exc).__name__}: {exc}); delete it and download "
                            f"again, or {_HINT}") from None
        if not (staging / FOLDER).is_dir():
            raise DataError(f"CIFAR-10: {archive} does not contain {FOLDER}/; {_HINT}")
        remove_stale_temps(final)
        try:
            os.replace(staging / FOLDER, final)
        except OSError:
            if not final.is_dir():
                raise
            # else a concurrent or earlier extraction won (a folder is not replaced when
            # it is not empty): keep it
    return final


def _safe_member(m: tarfile.TarInfo, archive: Path) -> tarfile.TarInfo:
    """Reject members that would land outside the extraction directory or are not plain."""
    name = m.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or (
            len(name) > 1 and name[1] == ":"):
        raise DataError(f"CIFAR-10: {archive} has an unsafe member path {name!r}; refusing "
                        "to extract it")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"CIFAR-10: {archive} has a member {name!r} that is not a regular "
                        "file or directory (link or device); refusing to extract it")
    return m


# --------------------------------------------------------------------------- reading
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and NumPy arrays only: no arbitrary code from a file."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path, rows: int):
    """One batch file -> ``(x uint8 (rows,3,32,32), y int64 (rows,))``."""
    if not path.is_file():
        raise DataError(f"CIFAR-10: batch file {path} is missing; the extracted directory "
                        f"is incomplete (delete it to extract again) or {_HINT}")
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"CIFAR-10: batch file {path} is truncated or corrupt "
                        f"({type(exc).__name__}: {exc}); delete {path.parent} to extract "
                        "it again") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"CIFAR-10: batch file {path} lacks the keys b'data' and b'labels' "
                        f"(found {keys})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"])
    if data.shape != (rows, 3072) or data.dtype != np.uint8:
        raise DataError(f"CIFAR-10: batch file {path} has data of shape {data.shape} and "
                        f"dtype {data.dtype}; expected ({rows}, 3072) uint8 (truncated or "
                        "corrupt batch)")
    if labels.shape != (rows,) or labels.dtype.kind not in "iu" or (
            rows and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"CIFAR-10: batch file {path} has labels of shape {labels.shape} "
                        f"(dtype {labels.dtype}); expected {rows} integers in [0, 10)")
    return data.reshape(rows, 3, 32, 32), labels.astype(np.int64)


def write_batch(path, data, labels, protocol: int = 2) -> None:
    """Write one batch in the official format (used by tests to build tiny archives)."""
    with atomic_open(path, "wb") as f:
        pickle.dump({b"batch_label": b"nnx", b"data": np.asarray(data, np.uint8),
                     b"labels": [int(v) for v in labels]}, f, protocol=protocol)


__all__ = ["load_cifar10", "cache_dir", "CIFAR10_CLASSES", "URL", "MD5", "write_batch"]
