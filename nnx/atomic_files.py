"""Atomic file writes, shared by every writer in nnx (checkpoints, the training log, plots,
the C-kernel cache, CIFAR-10 downloads and extraction).

A file is written under a temporary sibling name ``.<name>.<pid>.<token>.tmp`` in the same
directory (``token``: 8 random hex digits), flushed and fsync'ed, then renamed over
``<name>`` with ``os.replace``: a reader (or a process that is killed and restarted) sees the
old file or the new one, never a mix.

Mode.  A new file gets the mode any other new file gets: the temporary is created with
``0o666`` and the kernel applies the umask (and a directory's default ACL), so 0644 under
umask 022 and 0600 under 077.  No umask is read: ``os.umask`` can only be read by setting it,
which is process-global and races with other threads.  Rewriting an existing file keeps
that file's permission bits (as editors do): a checkpoint the user made private stays
private.

Stale temporaries.  A writer killed mid-write (SIGKILL, OOM killer, power loss) leaves its
temporary behind.  Every successful replace (just before the rename) removes the
temporaries of *that target* whose writer is gone: only names of exactly the pattern above,
never other files, and never one a live writer owns.  A temporary is taken to be owned by a
live writer when

* its pid is this process's and the name is one this process is writing now (another
  thread's in-flight write).  A name with this process's pid that is *not* in flight was
  left by an earlier process that had the same pid (e.g. a restarted container), so it goes;
* or its pid is another process that exists (``os.kill(pid, 0)``; a reused pid keeps a
  stale file until that process ends, which errs on the safe side);
* or another process holds the ``flock`` that writers hold on their temporaries while they
  write (covers writers in another pid namespace sharing the directory).

Writers in another pid namespace that write by path (a compiler's ``-o``) are not
protected by the lock; two such writers of the same target at the same time are a race
anyway (the last rename wins).  Off POSIX (no ``os.kill(pid, 0)`` probe), only this
process's own stale temporaries are removed.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:       # not POSIX: no advisory locks, only the pid check
    fcntl = None

_inflight: set[str] = set()    # basenames of temporaries this process is writing now
_inflight_lock = threading.Lock()


def temp_name(target, pid: int | None = None) -> str:
    """A fresh temporary basename for ``target``: ``.<name>.<pid>.<token>.tmp``."""
    pid = os.getpid() if pid is None else pid
    return f".{Path(target).name}.{pid}.{secrets.token_hex(4)}.tmp"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.([1-9][0-9]*)\.[0-9a-f]{{8}}\.tmp")


@contextmanager
def temp_sibling(target):
    """Reserve a temporary path next to ``target`` (not created) for the body to write,
    registered as this process's in-flight write.  Whatever is left at that path on exit
    (file or directory: the body failed, or did not commit it) is removed."""
    target = Path(target)
    name = temp_name(target)
    tmp = target.parent / name
    with _inflight_lock:
        _inflight.add(name)
    try:
        yield tmp
    finally:
        try:
            _remove(tmp)
        except OSError:
            pass         # e.g. no permission: never mask the body's own error
        finally:
            with _inflight_lock:
                _inflight.discard(name)


def commit(tmp, target, *, fsync: bool = True) -> None:
    """Rename the finished temporary ``tmp`` over ``target`` (keeping an existing target's
    permission bits) and make the rename durable.  Stale temporaries of ``target`` are
    removed just before the rename, so that a new ``target`` never coexists with one that
    was stale before it, even if the process dies right after the rename.  ``fsync=False``
    when the caller already fsync'ed the file's data."""
    tmp, target = Path(tmp), Path(target)
    if fsync:
        _fsync_path(tmp)
    try:
        os.chmod(tmp, os.stat(target).st_mode & 0o777)   # never set-id bits on a copy
    except FileNotFoundError:
        pass            # a new file keeps the mode it was created with (umask applied)
    remove_stale_temps(target)
    os.replace(tmp, target)
    _fsync_path(target.parent)


@contextmanager
def atomic_open(target, mode: str = "wb", **kwargs):
    """``open(target, mode)`` that replaces ``target`` atomically when the block succeeds
    and leaves it untouched when the block raises (or the process dies).  ``mode`` is
    ``"w"`` or ``"wb"`` (plus ``kwargs`` for text mode, e.g. ``encoding``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with temp_sibling(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        _lock_for_life(fd)
        try:
            f = os.fdopen(fd, mode, **kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, target, fsync=False)


def remove_stale_temps(target) -> list[str]:
    """Remove the temporaries of ``target`` (exactly ``.<name>.<pid>.<token>.tmp`` in its
    directory) whose writer is gone; return the removed names."""
    target = Path(target)
    pattern = _pattern(target.name)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or _owned_by_live_writer(entry, int(m.group(1))):
            continue
        try:
            _remove(Path(entry.path))
        except OSError:
            continue     # e.g. no permission: leave it, a save must not fail over it
        removed.append(entry.name)
    return removed


def _owned_by_live_writer(entry, pid: int) -> bool:
    if pid == os.getpid():
        with _inflight_lock:
            if entry.name in _inflight:
                return True
    elif _pid_exists(pid):
        return True
    return _locked(entry)


def _pid_exists(pid: int) -> bool:
    if os.name != "posix":
        return True      # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:      # PermissionError: it exists, as another user
        return True
    return True


def _locked(entry) -> bool:
    """True when another open file description holds an flock on this regular file."""
    if fcntl is None or not entry.is_file(follow_symlinks=False):
        return False
    try:
        fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0))    # never hang on a FIFO
    except FileNotFoundError:
        return False
    except OSError:
        return True      # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False     # no locks on this file system: the pid check decides
    finally:
        os.close(fd)     # also drops our probe lock
    return False


def _lock_for_life(fd: int) -> None:
    """flock our temporary while we write it: "a live writer owns this" (see module doc)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass         # a file system without locks: the pid check still protects it


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fsync_path(path: Path) -> None:
    """fsync a file's data or a directory's entries (skipped where not supported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_open", "temp_sibling", "commit", "remove_stale_temps", "temp_name"]
