"""The optimizer base class: parameter groups, zero_grad, and a host-side state_dict.

Layout follows PyTorch: ``optimizer.param_groups`` is a list of dicts, each with a
``"params"`` list and that group's hyper-parameters (``lr``, ...), so schedulers and users can
change ``group["lr"]`` between steps.  ``optimizer.state[p]`` holds each parameter's buffers
(momentum, Adam moments) as arrays of the active backend.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import backend as B
from ..nn.parameter import Parameter


class Optimizer:
    """Base class.  Subclasses implement :meth:`_update` for one parameter (the reference
    path, used by the NumPy backend) and may override :meth:`_update_group`."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}  # Parameter -> dict of buffers (keyed by identity)
        self.param_groups: list[dict] = []
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters or of dicts "
                            "(param groups), not a single Parameter; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict) -> None:
        """Add a group; missing hyper-parameters are filled from the defaults."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize nnx.nn.Parameter objects, got "
                                f"{type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(group)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (``None``, or zeros in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self) -> None:
        """One update of every parameter that has a gradient (``grad is None`` is skipped).
        A group with ``maximize=True`` ascends: its gradients are negated first (PyTorch)."""
        be = B.get()
        for group in self.param_groups:
            items = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not be.is_native(p.data) or not be.is_native(p.grad):
                    raise B.BackendMismatchError(
                        f"{type(self).__name__}.step: a parameter or its gradient is not an "
                        f"array of the active {be.name!r} backend; create the optimizer after "
                        f"model.to(...) and keep one backend active")
                state = self.state.setdefault(p, {})
                grad = -p.grad if group.get("maximize") else p.grad
                items.append((p, grad, state))
            if items:
                self._update_group(be, items, group)

    def _update_group(self, be, items, group: dict) -> None:
        """Update one group's ``(param, grad, state)`` items: one :meth:`_update` each here;
        subclasses fuse them into one multi-tensor launch where the backend has one."""
        for p, grad, state in items:
            self._update(be, p, grad, state, group)

    def _update(self, be, p, grad, state: dict, group: dict) -> None:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _indexed_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """``{"state": {index: {name: np.ndarray | number}}, "param_groups": [...]}``.

        Parameters are numbered in order over all groups (PyTorch's convention); every array
        is a host (NumPy) copy, so the dict can be saved regardless of the backend."""
        be = B.get()
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state = {}
        for p, st in self.state.items():
            if id(p) not in index or not st:
                continue
            state[index[id(p)]] = {
                k: (np.array(be.to_numpy(v), copy=True) if _is_array(v) else copy.deepcopy(v))
                for k, v in st.items()}
        groups = []
        for g in self.param_groups:
            d = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and buffers saved by :meth:`state_dict`; arrays are moved
        to the active backend with each parameter's dtype."""
        be = B.get()
        name = type(self).__name__
        try:
            saved_groups = state_dict["param_groups"]
            saved_state = state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups'") from None
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved_groups)} "
                             f"parameter groups but the optimizer has {len(self.param_groups)}")
        for i, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has "
                                 f"{len(sg['params'])} parameters in the state but "
                                 f"{len(g['params'])} in the optimizer")
        params = self._indexed_params()
        mapping = {}  # saved index -> Parameter
        for sg, g in zip(saved_groups, self.param_groups):
            for idx, p in zip(sg["params"], g["params"]):
                mapping[int(idx)] = p
        new_state = {}
        for idx, st in saved_state.items():
            idx = int(idx)
            if idx not in mapping:
                raise ValueError(f"{name}.load_state_dict: state for parameter index {idx}, "
                                 f"but there are only {len(params)} parameters")
            p = mapping[idx]
            restored = {}
            for k, v in st.items():
                if _is_array(v):
                    host = v.get() if hasattr(v, "get") else np.asarray(v)
                    if host.ndim == 0:  # 0-d arrays (e.g. a step counter read from npz)
                        restored[k] = host.item()
                        continue
                    if tuple(host.shape) != tuple(p.data.shape):
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter "
                                         f"{idx} has shape {tuple(host.shape)} but the "
                                         f"parameter has shape {tuple(p.data.shape)}")
                    restored[k] = be.asarray(host.astype(p.data.dtype, copy=True))
                else:
                    restored[k] = copy.deepcopy(v)
            new_state[p] = restored
        for sg, g in zip(saved_groups, self.param_groups):
            for k, v in sg.items():
                if k == "params":
                    continue
                if isinstance(g.get(k), tuple) and isinstance(v, list):
                    v = tuple(v)  # JSON turns betas tuples into lists
                g[k] = copy.deepcopy(v)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def check_hyper(name: str, value, low=0.0, high=None, low_open=False) -> float:
    """Validate a hyper-parameter with a message naming it and its value."""
    value = float(value)
    bad = value <= low if low_open else value < low
    if high is not None:
        bad = bad or value >= high
    if bad or value != value:
        rng = f"({low}, " if low_open else f"[{low}, "
        rng += f"{high})" if high is not None else "inf)"
        raise ValueError(f"invalid {name}: {value} (must be in {rng})")
    return value


def fused_buckets(items, key):
    """``items`` split for multi-tensor launches: ``{key(item): [item, ...]}`` over the items
    whose parameter and gradient are C-contiguous, plus the list of the others (updated one
    by one, since the multi-tensor kernels index flat memory)."""
    buckets, rest = {}, []
    for item in items:
        if item[0].data.flags.c_contiguous and item[1].flags.c_contiguous:
            buckets.setdefault(key(item), []).append(item)
        else:
            rest.append(item)
    return buckets, rest
