"""nnx.atomic_files and every writer built on it (checkpoints, state dicts, the training log,
the curves plot, CIFAR-10 downloads and batches, the C-kernel cache): the mode a saved file
gets under umask 022 and 077, an existing file's mode kept, stale temporaries of killed
writers removed by the next save while those of live writers and unrelated files stay."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import nnx
from nnx import atomic_files, train
from nnx.atomic_files import atomic_open, commit, remove_stale_temps, temp_name, temp_sibling
from nnx.backend import native
from nnx.data import cifar10
from nnx.nn import Linear, ReLU, Sequential


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under this umask (process-global: restored afterwards)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
        p.wait()
        try:
            os.kill(p.pid, 0)
        except ProcessLookupError:
            return p.pid
    pytest.skip("could not find a free pid")


@pytest.fixture
def live_pid():
    """The pid of another process that is alive for the test's duration."""
    p = subprocess.Popen([sys.executable, "-S", "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    try:
        yield p.pid
    finally:
        p.stdin.close()
        p.wait(30)


def _model():
    nnx.manual_seed(3)
    return Sequential(Linear(3, 4), ReLU(), Linear(4, 2))


def _write_download(path):
    src = path.parent / "served.bin"
    payload = np.random.default_rng().integers(0, 256, 3000, dtype=np.uint8).tobytes()
    src.write_bytes(payload)
    import hashlib
    cifar10._download(src.as_uri(), path, hashlib.md5(payload).hexdigest(), verbose=False)
    src.unlink()


def _write_plot(path):
    pytest.importorskip("matplotlib")
    log = path.parent / "for_plot.jsonl"
    train._write_log(log, [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5,
                            "test_acc": 0.4} for e in (1, 2)])
    assert train.plot_curves(log, path)
    log.unlink()


# Every atomic writer of nnx, writing to the path it is given.
WRITERS = {
    "checkpoint": lambda p: nnx.save(p, _model(), epoch=1),
    "state_dict": lambda p: nnx.save(_model().state_dict(), p),
    "log": lambda p: train._write_log(p, [{"epoch": 1, "train_loss": 0.5}]),
    "plot": _write_plot,
    "cifar_batch": lambda p: cifar10.write_batch(p, np.zeros((2, 3072), np.uint8), [1, 2]),
    "download": _write_download,
}


def _temps(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_new_file_gets_the_umask_mode(tmp_path, umask, writer):
    target = tmp_path / "out.bin"
    WRITERS[writer](target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask   # 0644 / 0600
    assert target.stat().st_size > 0 and _temps(tmp_path) == []


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_rewrite_keeps_the_existing_mode(tmp_path, umask, writer):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    os.chmod(target, 0o640)           # neither umask's default
    WRITERS[writer](target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_bytes() != b"old contents" and _temps(tmp_path) == []


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_removes_stale_temps_of_its_target_only(tmp_path, writer, dead_pid,
                                                             live_pid):
    target = tmp_path / "out.bin"
    stale = temp_name(target, dead_pid)
    live = temp_name(target, live_pid)
    other = temp_name(tmp_path / "other.bin", dead_pid)
    for name in (stale, live, other):
        (tmp_path / name).write_bytes(b"partial")
    WRITERS[writer](target)
    assert _temps(tmp_path) == sorted([live, other])


def test_stale_temp_rules(tmp_path, dead_pid, live_pid):
    target = tmp_path / "ckpt.npz"
    removed = [temp_name(target, dead_pid), temp_name(target, dead_pid),
               temp_name(target, os.getpid())]   # our pid, not in flight: an earlier process's
    staging = temp_name(target, dead_pid)         # a folder (CIFAR-10 extraction stages one)
    (tmp_path / staging).mkdir()
    (tmp_path / staging / "part").write_bytes(b"x")
    kept = [temp_name(target, live_pid),
            # not exactly the pattern of this target
            ".ckpt.npz.tmp", f".ckpt.npz.{dead_pid}.tmp", f"ckpt.npz.{dead_pid}.0123abcd.tmp",
            f".ckpt.npz.{dead_pid}.0123abcd.tmp.bak", f".ckpt.npz.{dead_pid}.0123ABCD.tmp",
            f".ckpt.npz.{dead_pid}.0123abc.tmp", ".ckpt.npz.0.0123abcd.tmp",
            f".ckpt.npz.0{dead_pid}.0123abcd.tmp",
            temp_name(tmp_path / "ckpt.npz.1", dead_pid),   # another target's temporaries
            temp_name(tmp_path / "ckpt.np", dead_pid), "ckpt.npz", "notes.txt"]
    for name in removed + kept:
        (tmp_path / name).write_bytes(b"x")
    got = remove_stale_temps(target)
    assert sorted(got) == sorted(removed + [staging])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_temp_of_a_dead_pid_that_another_writer_locks_is_kept(tmp_path, dead_pid):
    """A writer in another pid namespace: its pid means nothing here, its flock does."""
    fcntl = pytest.importorskip("fcntl")
    target = tmp_path / "t.bin"
    name = temp_name(target, dead_pid)
    fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with atomic_open(target) as f:
            f.write(b"1")
        assert _temps(tmp_path) == [name]
    finally:
        os.close(fd)
    with atomic_open(target) as f:
        f.write(b"2")
    assert _temps(tmp_path) == [] and target.read_bytes() == b"2"


def test_in_flight_write_of_another_thread_is_kept(tmp_path):
    target = tmp_path / "t.bin"
    started, release = threading.Event(), threading.Event()
    errors = []

    def slow_writer():
        try:
            with atomic_open(target) as f:
                f.write(b"slow")
                started.set()
                assert release.wait(30)
        except BaseException as exc:   # noqa: BLE001 -- reported by the main thread
            errors.append(exc)

    mask = _current_umask()
    th = threading.Thread(target=slow_writer)
    th.start()
    try:
        assert started.wait(30)
        in_flight = _temps(tmp_path)
        assert len(in_flight) == 1 and f".t.bin.{os.getpid()}." in in_flight[0]
        assert stat.S_IMODE(os.stat(tmp_path / in_flight[0]).st_mode) == 0o666 & ~mask
        with atomic_open(target) as f:
            f.write(b"fast")
        assert _temps(tmp_path) == in_flight and target.read_bytes() == b"fast"
    finally:
        release.set()
        th.join(30)
    assert errors == [] and target.read_bytes() == b"slow" and _temps(tmp_path) == []


def test_in_flight_path_writer_of_this_process_is_kept(tmp_path):
    """A compiler writing by path holds no lock: the in-flight registry protects it."""
    target = tmp_path / "lib.so"
    with temp_sibling(target) as tmp:
        tmp.write_bytes(b"being compiled")
        with atomic_open(target) as f:      # another save of the same target meanwhile
            f.write(b"other")
        assert tmp.read_bytes() == b"being compiled"
        commit(tmp, target)
    assert target.read_bytes() == b"being compiled" and _temps(tmp_path) == []


def _current_umask():
    old = os.umask(0o022)    # the only portable way to read it (no other thread runs yet)
    os.umask(old)
    return old


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write("first\n")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(target, "w", encoding="utf-8") as f:
            f.write("half")
            1 / 0
    assert target.read_text() == "first\n" and _temps(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(target, "a"):
            pass
    assert atomic_files._inflight == set()


def test_extraction_staging_folder_of_a_killed_run_is_removed(tmp_path, dead_pid, umask):
    """CIFAR-10 extraction stages a folder as a temporary sibling of the final one; the
    extracted folder and files get the umask's modes."""
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / temp_name(cache / cifar10.FOLDER, dead_pid)
    (stale / cifar10.FOLDER).mkdir(parents=True)
    (stale / cifar10.FOLDER / "data_batch_1").write_bytes(b"partial")
    src = tmp_path / "src" / cifar10.FOLDER
    src.mkdir(parents=True)
    rng = np.random.default_rng()
    for name in ("data_batch_1", "test_batch"):
        cifar10.write_batch(src / name, rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                            [0, 1])
    archive = tmp_path / "c.tar.gz"
    import tarfile
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=cifar10.FOLDER)
    final = cifar10._extract(archive, cache, None)
    assert sorted(os.listdir(cache)) == [cifar10.FOLDER]
    assert sorted(os.listdir(final)) == ["data_batch_1", "test_batch"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((final / "test_batch").stat().st_mode) == 0o666 & ~umask


# ------------------------------------------------------------------ the C-kernel cache
@pytest.fixture
def tiny_kernel(tmp_path, monkeypatch):
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.c").write_text("int tiny(void) { return 7; }\n")
    monkeypatch.setattr(native, "source_dir", lambda: src)
    monkeypatch.setenv("NNX_CACHE_DIR", str(tmp_path / "cache"))
    return cc, src / "tiny.c"


def test_kernel_cache_mode_and_stale_temps(tiny_kernel, umask, dead_pid, tmp_path):
    cc, src = tiny_kernel
    lib, _ = native._build("tiny")
    # the mode the compiler gives any library it writes (executable bits included)
    plain = tmp_path / "plain.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(plain)], check=True)
    assert stat.S_IMODE(lib.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(lib.stat().st_mode) & 0o777 & umask == 0
    # a build killed midway left a temporary; the next build removes it
    lib.unlink()
    stale = lib.parent / temp_name(lib, dead_pid)
    shutil.copy(plain, stale)
    assert native._build("tiny")[0] == lib
    assert sorted(os.listdir(lib.parent)) == [lib.name]
