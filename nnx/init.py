"""Weight initialisers with PyTorch's formulas (fan computed as in ``torch.nn.init``).

Each ``*_`` function fills a :class:`~nnx.nn.Parameter` in place, drawing on the host
generator (see :mod:`nnx.random`) so that a seed gives identical weights on every backend.
"""
from __future__ import annotations

import math

import numpy as np

from .random import host_rng


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in/out need at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "sigmoid", "identity")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """PyTorch's recommended gains: 1 (linear, convolutions, sigmoid), 5/3 (tanh), √2 (relu),
    √(2/(1+slope²)) (leaky_relu, slope ``param`` default 0.01), 3/4 (selu)."""
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fill(param, values):
    from . import backend
    values = np.asarray(values, dtype=param.data.dtype)
    param.data[...] = backend.get().asarray(values)
    return param


def uniform_(param, a=0.0, b=1.0):
    return _fill(param, host_rng().uniform(a, b, size=param.data.shape))


def normal_(param, mean=0.0, std=1.0):
    return _fill(param, host_rng().normal(mean, std, size=param.data.shape))


def constant_(param, val):
    param.data[...] = val
    return param


def zeros_(param):
    return constant_(param, 0.0)


def ones_(param):
    return constant_(param, 1.0)


def xavier_uniform_(param, gain=1.0):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))  (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _fans(param.data.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -a, a)


def xavier_normal_(param, gain=1.0):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(param.data.shape)
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(shape, a, mode, nonlinearity):
    fan_in, fan_out = _fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(param, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """U(-b, b), b = gain * sqrt(3 / fan)  (He et al., 2015)."""
    bound = math.sqrt(3.0) * _kaiming_std(param.data.shape, a, mode, nonlinearity)
    return uniform_(param, -bound, bound)


def kaiming_normal_(param, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """N(0, std^2), std = gain / sqrt(fan)."""
    return normal_(param, 0.0, _kaiming_std(param.data.shape, a, mode, nonlinearity))


# names without the trailing underscore, as some users expect
xavier_uniform, xavier_normal = xavier_uniform_, xavier_normal_
kaiming_uniform, kaiming_normal = kaiming_uniform_, kaiming_normal_
