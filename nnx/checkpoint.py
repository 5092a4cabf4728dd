"""Checkpoints: model, optimizer, scheduler and extra values in ONE ``.npz`` file.

Layout of the archive (``np.load(path)`` can read it without nnx)::

    model/<param name>             model.state_dict() arrays, e.g. ``model/0.weight``
    optim/state/<index>/<name>     optimizer buffers (momentum, Adam moments) per parameter
    __nnx_meta__                   uint8 array holding UTF-8 JSON: format version, nnx
                                   version, optimizer scalars and param groups, scheduler
                                   state, ``extra`` values, rng state

Two ways to call :func:`save`:

* ``nnx.save(path, model, optimizer, scheduler, epoch=3)``: a training checkpoint;
  ``nnx.load(path, model, optimizer, scheduler)`` restores it and returns the ``extra`` values.
* ``nnx.save(model.state_dict(), path)`` (the PyTorch habit): the state dict alone;
  ``nnx.load(path)`` returns it, for ``model.load_state_dict(nnx.load(path))``.

The file is written atomically (:mod:`nnx.atomic_files`: temp file in the same directory,
fsync, ``os.replace``), so a crash never leaves a half-written checkpoint under ``path``; it
gets the mode of any new file (umask applied) or keeps the mode of the file it replaces.  No
pickle is involved: loading an untrusted file cannot execute code.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .atomic_files import atomic_open

FORMAT_VERSION = 1
_META = "__nnx_meta__"
_STATE_DICT = "state_dict"    # meta["kind"] of a file written by nnx.save(state_dict, path)
_SAVE_CALLS = ("nnx.save(path, model, optimizer, scheduler, epoch=...) for a checkpoint, or "
               "nnx.save(model.state_dict(), path) for the weights alone")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, corrupt, or lacks what was asked for."""


def save(path, model=None, optimizer=None, scheduler=None, *, rng_state=None, **extra) -> str:
    """Write a checkpoint to ``path`` (exactly that name; no suffix is added) and return it.

    ``extra`` values must be JSON-able (numbers, strings, lists, dicts; NumPy scalars are
    converted).  ``rng_state=True`` stores :func:`nnx.random.get_rng_state`; a dict is stored
    as given.

    ``save(state_dict, path)`` (a mapping name -> array first, as ``torch.save`` is used)
    stores that state dict alone; :func:`load` then returns it.
    """
    if isinstance(path, Mapping):
        if optimizer is not None or scheduler is not None or rng_state is not None or extra:
            raise TypeError("nnx.save(state_dict, path) stores the state dict alone; to save "
                            "an optimizer, scheduler or extra values with the model, call "
                            "nnx.save(path, model, optimizer, scheduler, epoch=...)")
        return _save_state_dict(path, model)
    path = _path_arg("nnx.save", path, model, _SAVE_CALLS)
    for obj, what in ((model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is not None and not hasattr(obj, "state_dict"):
            hint = (" (a state dict? call nnx.save(state_dict, path))"
                    if isinstance(obj, Mapping) else "")
            raise TypeError(f"nnx.save: {what} must be an object with .state_dict(), got "
                            f"{type(obj).__name__}{hint}; the call is {_SAVE_CALLS}")
    from . import __version__
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": "nnx-checkpoint", "format_version": FORMAT_VERSION,
            "nnx_version": __version__, "has_model": model is not None,
            "has_optimizer": optimizer is not None, "has_scheduler": scheduler is not None}
    if model is not None:
        msd = model.state_dict()
        for k, v in msd.items():
            arrays[f"model/{k}"] = np.asarray(v)
        meta["model_keys"] = list(msd)
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    arrays[f"optim/state/{idx}/{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = _jsonable(v, f"optimizer state {k}")
        meta["optimizer"] = {"type": type(optimizer).__name__, "scalars": scalars,
                             "param_groups": _jsonable(sd["param_groups"], "param_groups"),
                             "array_state": {str(i): [k for k, v in st.items()
                                                      if isinstance(v, np.ndarray)
                                                      and v.ndim > 0]
                                             for i, st in sd["state"].items()}}
    if scheduler is not None:
        meta["scheduler"] = {"type": type(scheduler).__name__,
                             "state": _jsonable(scheduler.state_dict(), "scheduler state")}
    if rng_state is True:
        from .random import get_rng_state
        rng_state = get_rng_state()
    if rng_state is not None:
        meta["rng_state"] = _jsonable(rng_state, "rng_state")
    meta["extra"] = _jsonable(extra, "extra")
    _write(path, arrays, meta)
    return path


def _save_state_dict(state_dict: Mapping, path) -> str:
    """``nnx.save(state_dict, path)``: the arrays as ``model/<key>``, marked as a bare state
    dict so that :func:`load` gives the mapping back."""
    if path is None:
        raise TypeError("nnx.save(state_dict, path): the path is missing")
    path = _path_arg("nnx.save", path, None, _SAVE_CALLS)
    from . import __version__
    arrays = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"nnx.save(state_dict, path): keys must be strings, got {k!r}")
        try:
            a = np.asarray(v)
        except (TypeError, ValueError) as exc:   # e.g. a CuPy array: pass Module.state_dict()
            raise TypeError(f"nnx.save(state_dict, path): {k!r} cannot be converted to a "
                            f"NumPy array ({exc})") from None
        if a.dtype == object:
            raise TypeError(
                f"nnx.save(state_dict, path): {k!r} is of type {type(v).__name__}, not an "
                "array; a state dict maps names to arrays (Module.state_dict()); for a "
                "model with its optimizer and other values call nnx.save(path, model, "
                "optimizer, epoch=...)")
        arrays[f"model/{k}"] = a
    meta = {"format": "nnx-checkpoint", "format_version": FORMAT_VERSION,
            "nnx_version": __version__, "kind": _STATE_DICT, "has_model": True,
            "has_optimizer": False, "has_scheduler": False, "model_keys": list(state_dict),
            "extra": {}}
    _write(path, arrays, meta)
    return path


def _path_arg(func: str, path, model, calls: str) -> str:
    """``os.fspath(path)`` with an error that shows the right call for swapped arguments."""
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.fsdecode(path)
    if hasattr(path, "state_dict"):
        swapped = " (the arguments are swapped)" if isinstance(
            model, (str, bytes, os.PathLike)) else ""
        raise TypeError(f"{func}: the first argument is a {type(path).__name__}, not a "
                        f"path{swapped}; the call is {calls}")
    raise TypeError(f"{func}: the path must be a str or os.PathLike, got "
                    f"{type(path).__name__}; the call is {calls}")


def _write(path: str, arrays: dict, meta: dict) -> None:
    arrays[_META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _jsonable(value, what):
    """Convert to plain JSON types (tuples -> lists, NumPy scalars -> Python) or raise."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, float) and value != value:
        return value  # json writes NaN; Python's json reads it back
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"nnx.save: {what} contains a value of type {type(value).__name__} that "
                    f"cannot be stored as JSON ({value!r:.60})")


def read_extra(path) -> dict:
    """The ``extra`` values of a checkpoint (``{}`` for a bare state dict)."""
    return read(path)[1].get("extra", {})


def read(path) -> tuple[dict, dict]:
    """Return ``(arrays, meta)`` of a checkpoint, raising :class:`CheckpointError` for any
    problem with the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {exc}") from exc
    if not data.startswith(b"PK"):
        raise CheckpointError(f"checkpoint {path!r} is not an .npz (zip) file "
                              f"({len(data)} bytes, starts with {data[:8]!r})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: "
                              f"{type(exc).__name__}: {exc}") from exc
    if _META not in arrays:
        raise CheckpointError(f"checkpoint {path!r} has no {_META!r} entry: not written by "
                              f"nnx.save")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: metadata is corrupt ({exc})") from exc
    if meta.get("format") != "nnx-checkpoint":
        raise CheckpointError(f"checkpoint {path!r}: metadata is not an nnx checkpoint's")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version "
                              f"{meta['format_version']}, newer than this nnx supports "
                              f"({FORMAT_VERSION}); upgrade nnx")
    return arrays, meta


def load(path, model=None, optimizer=None, scheduler=None, *, strict=True,
         restore_rng=False) -> dict:
    """Restore a checkpoint written by :func:`save` into the given objects.

    Returns ``{"extra": {...}, "model_state": {name: ndarray}, "optimizer_state": {...} |
    None, "scheduler_state": {...} | None, "rng_state": ... | None, "nnx_version": str}``.
    Asking for an object the file does not contain, or a model whose keys/shapes differ
    (with ``strict``), raises :class:`CheckpointError` naming the file and the problem.

    A file written by ``nnx.save(state_dict, path)`` holds only that state dict:
    ``nnx.load(path)`` returns it (an ``OrderedDict`` name -> ndarray, in the saved order),
    ready for ``model.load_state_dict``; ``nnx.load(path, model)`` loads it into ``model``
    and returns the dict above.
    """
    path = _path_arg("nnx.load", path, model,
                     "nnx.load(path, model, optimizer, scheduler) or nnx.load(path)")
    arrays, meta = read(path)
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    missing = [k for k in meta.get("model_keys", []) if k not in model_state]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: model arrays {missing} are missing")
    if meta.get("kind") == _STATE_DICT and not restore_rng and all(
            obj is None for obj in (model, optimizer, scheduler)):
        return OrderedDict((k, model_state[k]) for k in meta["model_keys"])
    optim_state = None
    if meta.get("has_optimizer"):
        o = meta.get("optimizer") or {}
        try:
            state = {}
            for idx, names in o["array_state"].items():
                state[int(idx)] = {k: arrays[f"optim/state/{idx}/{k}"] for k in names}
            for idx, sc in o["scalars"].items():
                state.setdefault(int(idx), {}).update(sc)
            optim_state = {"state": state, "param_groups": o["param_groups"]}
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {path!r}: optimizer entry {exc} is "
                                  f"missing") from None
    sched_state = (meta.get("scheduler") or {}).get("state") if meta.get("has_scheduler") \
        else None

    if model is not None:
        if not meta.get("has_model"):
            raise CheckpointError(f"checkpoint {path!r} contains no model state")
        try:
            model.load_state_dict(model_state, strict=strict)
        except (KeyError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise CheckpointError(f"checkpoint {path!r} does not fit the model: {msg}") \
                from exc
    if optimizer is not None:
        if optim_state is None:
            raise CheckpointError(f"checkpoint {path!r} contains no optimizer state")
        saved_type = meta["optimizer"].get("type")
        if saved_type != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {path!r} holds {saved_type} state, not "
                                  f"{type(optimizer).__name__}")
        try:
            optimizer.load_state_dict(optim_state)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path!r}: optimizer state does not fit: "
                                  f"{exc}") from exc
    if scheduler is not None:
        if sched_state is None:
            raise CheckpointError(f"checkpoint {path!r} contains no scheduler state")
        scheduler.load_state_dict(sched_state)
    rng = meta.get("rng_state")
    if restore_rng:
        if rng is None:
            raise CheckpointError(f"checkpoint {path!r} contains no rng state")
        from .random import set_rng_state
        set_rng_state(rng)
    return {"extra": meta.get("extra", {}), "model_state": model_state,
            "optimizer_state": optim_state, "scheduler_state": sched_state,
            "rng_state": rng, "nnx_version": meta.get("nnx_version")}
