r"""Lookahead averaging of a model's weights (Zhang et al., 2019, in airbench's EMA form).

:class:`Lookahead` keeps a slow copy ``φ`` of every floating parameter **and buffer** of a
model (BatchNorm running statistics included; integer buffers such as
``num_batches_tracked`` are left alone).  Each :meth:`Lookahead.update` with decay ``ρ``::

    φ ← ρ·φ + (1 - ρ)·θ        (a lerp of φ towards the fast weights θ)
    θ ← φ                      (the model continues from the average)

``update(1.0)`` only copies ``φ`` back into the model.  Frozen parameters are averaged
too (they do not change, so their average is themselves).

Airbench's schedule (:func:`lookahead_decay`), with the update made every ``k`` steps from
the start epoch on, at step ``t`` of ``T``::

    ρ_t = (β^k) · (t / T)^p        (β = 0.95, k = 5, p = 3)

so the average follows the weights closely early on and averages strongly at the end.
"""
from __future__ import annotations

import numpy as np


def _floating(model):
    """The model's floating parameters' data and floating buffers, in a fixed order."""
    arrays = [p.data for _, p in model.named_parameters()]
    arrays += [b for _, b in model.named_buffers()]
    return [a for a in arrays if np.dtype(a.dtype).kind == "f"]


class Lookahead:
    """The slow weights ``φ`` of ``model`` (copies of its floating parameters and buffers
    when created).  See the module docstring for the update."""

    def __init__(self, model):
        self.model = model
        self.slow = [a.copy() for a in _floating(model)]

    def update(self, decay: float) -> None:
        """``φ ← decay·φ + (1-decay)·θ``, then ``θ ← φ`` (in place, on the model's backend)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"Lookahead.update: decay must be in [0, 1], got {decay}")
        fast = _floating(self.model)
        if len(fast) != len(self.slow):
            raise ValueError("Lookahead.update: the model's parameters changed since the "
                             "Lookahead was created")
        for slow, theta in zip(self.slow, fast):
            if decay != 1.0:
                slow += slow.dtype.type(1.0 - decay) * (theta - slow)
            theta[...] = slow


def lookahead_decay(step: int, total_steps: int, decay_base: float = 0.95,
                    every_n_steps: int = 5, power: float = 3.0) -> float:
    """Airbench's decay ``ρ = decay_base^every_n_steps · (step / total_steps)^power``."""
    if total_steps <= 0:
        raise ValueError(f"lookahead_decay: total_steps must be positive, got {total_steps}")
    return decay_base ** every_n_steps * (step / total_steps) ** power


__all__ = ["Lookahead", "lookahead_decay"]
