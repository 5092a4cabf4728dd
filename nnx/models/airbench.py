r"""The airbench94 network (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024).

With widths ``(w1, w2, w3)`` (published: 64, 256, 256), ``C`` input channels and a
``k x k`` whitening layer (``k = 2``, ``d = C·k²``)::

    whiten   Conv2d(C, 2d, k, no padding, bias)      weight from the patch statistics of
             (weight frozen; bias trained for the     the training images (whitening_init_),
              first epochs only)                       see nnx.nn.whitening
    GELU
    block_i  (i = 1..3):  Conv3x3(same) → MaxPool2 → BN → GELU → Conv3x3(same) → BN → GELU
    MaxPool2d(3) → Flatten → Linear(w3, classes, no bias) → · scale   (scale = 1/9)

For 32x32 input the spatial size goes 32 → 31 → 15 → 7 → 3 → 1.  Every BatchNorm has
``eps = 1e-12``, running-stat momentum ``1 - 0.6`` (PyTorch's convention: the weight of the
new batch) and its weight **frozen at 1** (``requires_grad_(False)``: it accumulates no
gradient and optimizers skip it); only its bias trains.  The 3x3 convolutions have no
bias; after PyTorch's default initialisation their first ``in_channels`` output channels
are set to the identity (a Dirac kernel), an implicit residual connection.
"""
from __future__ import annotations

from collections import OrderedDict

from .. import backend as B
from ..nn import functional as F
from ..nn.activation import GELU
from ..nn.batchnorm import BatchNorm2d
from ..nn.container import Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.pooling import MaxPool2d


def identity_init_(conv):
    """Set the first ``in_channels`` output channels of a ``(O, C, k, k)`` convolution to a
    Dirac kernel (``y_c = x_c`` with 'same' padding, for ``c < min(O, C)``); the other
    output channels keep their values."""
    w = conv.weight.data
    n = min(w.shape[0], w.shape[1])
    w[:n] = 0
    xp = B.get().xp
    idx = xp.arange(n)
    w[idx, idx, w.shape[2] // 2, w.shape[3] // 2] = 1
    return conv


def frozen_weight_batchnorm(channels, momentum=0.6, eps=1e-12, dtype=None):
    """BatchNorm2d with the weight frozen at 1 (``γ = 1``: ``y = x̂ + β``); ``momentum`` is
    airbench's (the weight of the old statistics), so PyTorch's is ``1 - momentum``."""
    bn = BatchNorm2d(channels, eps=eps, momentum=1 - momentum, dtype=dtype)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(Sequential):
    """``conv3x3 → maxpool2 → BN → GELU → conv3x3 → BN → GELU`` (both convs without bias,
    identity-initialised; both BatchNorms with frozen weight)."""

    def __init__(self, channels_in, channels_out, bn_momentum=0.6, bn_eps=1e-12, dtype=None):
        super().__init__(OrderedDict([
            ("conv1", identity_init_(Conv2d(channels_in, channels_out, 3, padding=1,
                                            bias=False, dtype=dtype))),
            ("pool", MaxPool2d(2)),
            ("norm1", frozen_weight_batchnorm(channels_out, bn_momentum, bn_eps, dtype)),
            ("activ1", GELU()),
            ("conv2", identity_init_(Conv2d(channels_out, channels_out, 3, padding=1,
                                            bias=False, dtype=dtype))),
            ("norm2", frozen_weight_batchnorm(channels_out, bn_momentum, bn_eps, dtype)),
            ("activ2", GELU()),
        ]))


class Airbench94(Module):
    """The airbench94 network (see the module docstring).  ``whiten`` must be initialised
    from training images with :func:`nnx.nn.whitening.whitening_init_` before training
    (until then it holds PyTorch's default initialisation with an identity part)."""

    def __init__(self, in_channels=3, num_classes=10, widths=(64, 256, 256),
                 whiten_kernel=2, bn_momentum=0.6, bn_eps=1e-12, scale=1 / 9,
                 image_size=None, dtype=None):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"Airbench94: widths must be three positive integers, got {widths}")
        self.widths, self.scale = widths, float(scale)
        whiten_width = 2 * in_channels * whiten_kernel ** 2
        self.whiten = identity_init_(Conv2d(in_channels, whiten_width, whiten_kernel,
                                            bias=True, dtype=dtype))
        self.whiten.bias.data[...] = 0
        self.whiten.weight.requires_grad_(False)
        self.activ = GELU()
        channels = (whiten_width,) + widths
        self.blocks = Sequential(*[ConvGroup(channels[i], channels[i + 1], bn_momentum, bn_eps,
                                             dtype) for i in range(3)])
        self.pool = MaxPool2d(3)
        self.flatten = Flatten()
        self.head = Linear(widths[2], num_classes, bias=False, dtype=dtype)

    def forward(self, x):
        x = self.blocks(self.activ(self.whiten(x)))
        return F.mul(self.head(self.flatten(self.pool(x))), self.scale)

    def batchnorm_biases(self):
        """The trainable BatchNorm biases (the recipe gives them a larger learning rate)."""
        return [m.bias for m in self.modules() if isinstance(m, BatchNorm2d)]


__all__ = ["Airbench94", "ConvGroup", "identity_init_", "frozen_weight_batchnorm"]
