"""Learning-rate schedulers with PyTorch's semantics.

Construct after the optimizer (the constructor sets each group's ``lr`` to the schedule's
value at step 0 and records ``initial_lr``), then call ``scheduler.step()`` once per epoch
(``StepLR``, ``CosineAnnealingLR``) or per batch (``OneCycleLR``, warm-up), *after*
``optimizer.step()``.  Each schedule is evaluated in closed form from ``initial_lr`` and
``last_epoch``, which matches PyTorch's recursive updates up to float rounding while one
scheduler owns the lr.  Unlike PyTorch's chainable schedulers, ``step()`` overwrites the lr:
a second scheduler on the same optimizer, or a manual edit of ``group["lr"]``, does not
carry over.  Constructing with ``last_epoch=k`` continues the schedule at ``k + 1`` (PyTorch
2.13's CosineAnnealingLR and LinearLR leave their schedule then); resuming through
``state_dict``/``load_state_dict`` is exact in both.

To run schedules one after another (warm-up, then cosine), use :class:`SequentialLR`: each
child scheduler runs on its own step count, starting from 0 at its milestone, so a
``LinearLR`` warm-up followed by ``CosineAnnealingLR`` anneals from the full lr as PyTorch's
``SequentialLR`` does.  :class:`ReduceLROnPlateau` is the one scheduler that is not a function
of the step: like PyTorch's, it multiplies the group's current ``lr`` by ``factor``.
"""
from __future__ import annotations

import math
import types
from bisect import bisect_right

from .optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses implement ``_lr_at(base_lr, t, group_index)``."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an nnx Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   "when resuming an optimizer")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def _lr_at(self, base_lr: float, t: int, i: int) -> float:  # pragma: no cover
        raise NotImplementedError

    def _extra_at(self, t: int) -> None:
        """Hook for schedules that also change other hyper-parameters (momentum)."""

    def step(self) -> None:
        """Advance one epoch/step and write the new ``lr`` into every param group."""
        self.last_epoch += 1
        t = self.last_epoch
        for i, (g, base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            g["lr"] = self._lr_at(base, t, i)
        self._extra_at(t)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last :meth:`step` (one per param group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer (plain Python values: JSON-able)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in state.items()})


class StepLR(LRScheduler):
    """``lr_t = base_lr · gamma^⌊t / step_size⌋``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if int(step_size) < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        return base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr_t = eta_min + (base_lr - eta_min) · (1 + cos(π t / T_max)) / 2`` (SGDR without
    restarts; past ``T_max`` it rises again, as PyTorch's)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if int(T_max) < 1:
            raise ValueError(f"T_max must be a positive integer, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearLR(LRScheduler):
    """``lr_t = base_lr · (s + (e - s) · min(t, total_iters) / total_iters)`` with ``s =
    start_factor``, ``e = end_factor`` (PyTorch's ``LinearLR``; a linear warm-up when
    ``e = 1``)."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        if int(total_iters) < 1:
            raise ValueError(f"total_iters must be a positive integer, got {total_iters}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        frac = min(t, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class LinearWarmup(LinearLR):
    """Linear warm-up from ``start_factor · lr`` (default 0) to ``lr`` over ``warmup_steps``
    steps, then constant: ``lr_t = lr · (s + (1 - s) · min(t, W) / W)``."""

    def __init__(self, optimizer, warmup_steps: int, start_factor: float = 0.0,
                 last_epoch: int = -1):
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        if int(warmup_steps) < 1:
            raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps}")
        self.start_factor, self.end_factor = float(start_factor), 1.0
        self.total_iters = int(warmup_steps)
        LRScheduler.__init__(self, optimizer, last_epoch)


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin), PyTorch's ``OneCycleLR``: per *batch*, the lr rises
    from ``max_lr/div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total_steps`` and anneals to ``initial_lr/final_div_factor``; with ``cycle_momentum``
    the momentum (SGD ``momentum`` or Adam ``betas[0]``) moves inversely between
    ``max_momentum`` and ``base_momentum``.  Cosine annealing between phase ends ``a → b``
    at fraction ``p`` of the phase: ``b + (a - b)(1 + cos πp)/2``; linear: ``a + (b - a)p``.
    Stepping past ``total_steps`` raises ``ValueError``.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                 base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        groups = optimizer.param_groups
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.total_steps = int(total_steps)
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = bool(cycle_momentum)
        p = float(pct_start)
        if three_phase:
            self._phases = [
                dict(end_step=p * self.total_steps - 1, lr=("initial_lr", "max_lr"),
                     m=("max_momentum", "base_momentum")),
                dict(end_step=2 * p * self.total_steps - 2, lr=("max_lr", "initial_lr"),
                     m=("base_momentum", "max_momentum")),
                dict(end_step=self.total_steps - 1, lr=("initial_lr", "min_lr"),
                     m=("max_momentum", "max_momentum"))]
        else:
            self._phases = [
                dict(end_step=p * self.total_steps - 1, lr=("initial_lr", "max_lr"),
                     m=("max_momentum", "base_momentum")),
                dict(end_step=self.total_steps - 1, lr=("max_lr", "min_lr"),
                     m=("base_momentum", "max_momentum"))]
        max_lrs = _per_group(max_lr, len(groups), "max_lr")
        base_ms = _per_group(base_momentum, len(groups), "base_momentum")
        max_ms = _per_group(max_momentum, len(groups), "max_momentum")
        if last_epoch == -1:
            for g, mlr in zip(groups, max_lrs):
                g["initial_lr"] = mlr / div_factor
                g["max_lr"] = mlr
                g["min_lr"] = g["initial_lr"] / final_div_factor
        if self.cycle_momentum:
            d = optimizer.defaults
            if "momentum" not in d and "betas" not in d:
                raise ValueError("optimizer must support momentum or betas with "
                                 "cycle_momentum enabled")
            self._use_beta1 = "betas" in d
            for g, bm, mm in zip(groups, base_ms, max_ms):
                if last_epoch == -1:
                    self._set_momentum(g, mm)
                g["max_momentum"], g["base_momentum"] = mm, bm
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, g, m):
        if self._use_beta1:
            g["betas"] = (m,) + tuple(g["betas"][1:])
        else:
            g["momentum"] = m

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _locate(self, t, g, key):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times but total_steps is "
                             f"{self.total_steps}")
        start_step = 0.0
        for i, ph in enumerate(self._phases):
            end_step = ph["end_step"]
            if t <= end_step or i == len(self._phases) - 1:
                pct = (t - start_step) / (end_step - start_step)
                a, b = ph[key]
                return self._anneal(g[a], g[b], pct)
            start_step = end_step

    def _lr_at(self, base_lr, t, i):
        return self._locate(t, self.optimizer.param_groups[i], "lr")

    def _extra_at(self, t):
        if self.cycle_momentum:
            for g in self.optimizer.param_groups:
                self._set_momentum(g, self._locate(t, g, "m"))


def _per_group(value, n, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values for {name}, got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * n


class MultiStepLR(LRScheduler):
    """``lr_t = base_lr · gamma^m(t)``, ``m(t)`` = the number of milestones ``<= t`` (a
    milestone listed twice counts twice, as in PyTorch)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        ms = [int(m) for m in milestones]
        if any(m < 0 for m in ms):
            raise ValueError(f"milestones must be non-negative integers, got {ms}")
        self.milestones, self.gamma = sorted(ms), float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        return base_lr * self.gamma ** bisect_right(self.milestones, t)


class ExponentialLR(LRScheduler):
    """``lr_t = base_lr · gamma^t``."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        return base_lr * self.gamma ** t


class LambdaLR(LRScheduler):
    """``lr_t = base_lr · lr_lambda(t)`` (one function, or one per param group).
    ``state_dict`` keeps the attributes of callable objects, not functions (as PyTorch)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        fns = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * n
        if len(fns) != n:
            raise ValueError(f"Expected {n} lr_lambdas, but got {len(fns)}")
        if not all(callable(f) for f in fns):
            raise TypeError("lr_lambda must be a callable or a list of callables")
        self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr, t, i):
        return base_lr * float(self.lr_lambdas[i](t))

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(f.__dict__)
                               for f in self.lr_lambdas]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("lr_lambdas", None) or []
        super().load_state_dict(state)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter): ``lr = eta_min + (base_lr - eta_min)(1 + cos(π T_cur /
    T_i))/2``, where ``T_cur`` counts the steps since the last restart and the cycles last
    ``T_0, T_0·T_mult, T_0·T_mult², ...`` steps.  ``step(epoch)`` with a fractional epoch
    (``epoch + i / iters`` per batch) works as in PyTorch."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1):
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, float(eta_min)
        self.fraction = 0.0            # set by step(epoch) with a fractional epoch
        super().__init__(optimizer, last_epoch)

    def _cycle(self, t):
        """``(T_cur, T_i)`` at (possibly fractional) step ``t``."""
        T_0, m = self.T_0, self.T_mult
        if t < T_0:
            return t, T_0
        if m == 1:
            return t % T_0, T_0
        if float(t).is_integer():          # exact integer walk (PyTorch's step() path)
            t_cur, t_i = int(t), T_0
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * m
            return t_cur, t_i
        n = int(math.log(t / T_0 * (m - 1) + 1, m))       # PyTorch's step(epoch) path
        return t - T_0 * (m ** n - 1) / (m - 1), T_0 * m ** n

    def _lr_at(self, base_lr, t, i):
        t_cur, t_i = self._cycle(t + self.fraction)
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * t_cur / t_i)) / 2

    def step(self, epoch=None) -> None:
        """Advance one step, or jump to (fractional) ``epoch``."""
        if epoch is not None:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            self.fraction = float(epoch) - math.floor(epoch)
            self.last_epoch = math.floor(epoch) - 1
        super().step()


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``, ...: at step
    ``t`` with ``milestones[k-1] <= t < milestones[k]`` the lr is that of ``schedulers[k]`` at
    its own step ``t - milestones[k-1]``, so each schedule starts from its beginning at its
    milestone (a ``LinearLR`` warm-up then ``CosineAnnealingLR`` anneals from the full lr).
    ``state_dict`` holds the children's states."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        schedulers, milestones = list(schedulers), [int(m) for m in milestones]
        if not schedulers:
            raise ValueError("SequentialLR expects at least one scheduler, but got none")
        for k, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError("SequentialLR does not support ReduceLROnPlateau (its step "
                                 f"needs a metric); got one at index {k}")
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: schedulers[{k}] is a {type(s).__name__}, not "
                                "an nnx LRScheduler")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR expects all schedulers to belong to the same "
                                 f"optimizer, but schedulers[{k}] ({type(s).__name__}) has "
                                 "another one")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        if milestones != sorted(milestones):
            raise ValueError(f"SequentialLR: milestones must be increasing, got {milestones}")
        self._schedulers, self._milestones = schedulers, milestones
        super().__init__(optimizer, last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        t = self.last_epoch
        k = bisect_right(self._milestones, t)
        child = self._schedulers[k]
        child.last_epoch = t - (self._milestones[k - 1] if k else 0) - 1
        child.step()                  # closed form: writes the lr of its own step count
        self._last_lr = child.get_last_lr()

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        children = state.pop("_schedulers")
        super().load_state_dict(state)
        for s, sd in zip(self._schedulers, children):
            s.load_state_dict(sd)


class ReduceLROnPlateau(LRScheduler):
    """Divide the lr when a metric stops improving (PyTorch's ``ReduceLROnPlateau``).

    ``step(metric)`` once per evaluation.  The metric improves when it is below ``best ·
    (1 - threshold)`` (``mode="min"``, ``threshold_mode="rel"``), below ``best - threshold``
    (``"abs"``), or above ``best · (1 + threshold)`` / ``best + threshold`` (``mode="max"``).
    After more than ``patience`` steps without improvement every group's lr becomes
    ``max(lr · factor, min_lr)`` (skipped when that changes it by less than ``eps``), and
    the next ``cooldown`` steps count no bad epochs.  Unlike the other schedulers this one
    scales the group's current ``lr``."""

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr=0, eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError(f"Factor should be < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an nnx Optimizer")
        self.optimizer = optimizer
        self.min_lrs = _per_group(min_lr, len(optimizer.param_groups), "min_lr")
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = int(cooldown), float(eps)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.best, self.num_bad_epochs, self.cooldown_counter = self.mode_worse, 0, 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def _is_better(self, a: float) -> bool:
        if self.mode == "min":
            bar = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return a < bar
        bar = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return a > bar

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metrics) -> None:          # noqa: D401  (PyTorch's argument name)
        """Record one value of the monitored metric."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for g, floor in zip(self.optimizer.param_groups, self.min_lrs):
                new_lr = max(float(g["lr"]) * self.factor, floor)
                if float(g["lr"]) - new_lr > self.eps:
                    g["lr"] = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
