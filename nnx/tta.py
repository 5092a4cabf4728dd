r"""Test-time augmentation for image classifiers (airbench's levels).

With ``f`` the model's logits and ``m(x)`` the left-right mirror of ``x``::

    level 0:  y = f(x)
    level 1:  y = ½ f(x) + ½ f(m(x))                                    ("mirror")
    level 2:  y = ½ y₁(x) + ¼ y₁(t₋(x)) + ¼ y₁(t₊(x))           ("mirror + translate")

where ``y₁`` is level 1 and ``t₋``/``t₊`` translate by one pixel up-left / down-right: the
image reflect-padded by 1 and cut at offset ``(0, 0)`` / ``(2, 2)``.  The model runs in
eval mode under ``no_grad``, in batches of ``batch_size`` images.
"""
from __future__ import annotations

from . import backend as B
from .data.alternating_flip import reflect_pad
from .nn.tape import no_grad

LEVELS = (0, 1, 2)


def _mirror(model, x):
    return 0.5 * model(x) + 0.5 * model(B.get().xp.ascontiguousarray(x[..., ::-1]))


def _mirror_translate(model, x):
    h, w = x.shape[2:]
    padded = reflect_pad(x, 1)
    xp = B.get().xp
    up_left = xp.ascontiguousarray(padded[:, :, 0:h, 0:w])
    down_right = xp.ascontiguousarray(padded[:, :, 2:h + 2, 2:w + 2])
    translated = 0.5 * (_mirror(model, up_left) + _mirror(model, down_right))
    return 0.5 * _mirror(model, x) + 0.5 * translated


_INFER = {0: lambda model, x: model(x), 1: _mirror, 2: _mirror_translate}


def predict(model, images, level: int = 2, batch_size: int = 2000):
    """The ``(N, classes)`` logits of ``images (N, C, H, W)`` with test-time augmentation of
    the given ``level`` (0, 1 or 2, see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"tta level must be one of {LEVELS}, got {level!r}")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            parts = [_INFER[level](model, images[i:i + batch_size])
                     for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return B.get().xp.concatenate(parts)


__all__ = ["predict", "LEVELS"]
