"""A small ResNet (He et al., 2016) with BatchNorm, for CIFAR-sized or digit images."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.activation import ReLU
from ..nn.batchnorm import BatchNorm2d
from ..nn.container import Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.pooling import AdaptiveAvgPool2d
from ..nn.residual import Residual


class BasicBlock(Sequential):
    """``relu(body(x) + shortcut(x))`` with ``body = conv3x3(s)-bn-relu-conv3x3-bn`` and
    ``shortcut = conv1x1(s)-bn`` when the shape changes (stride or width), else identity.
    Backward: ``dx = body.backward(δ) + shortcut.backward(δ)`` with ``δ`` the ReLU's
    input gradient (composed by :class:`~nnx.nn.Residual`).  The sum and the ReLU are one
    fused pass (``Residual(..., relu=True)``), so the block has the single child ``res``."""

    def __init__(self, in_planes, planes, stride=1, dtype=None):
        body = Sequential(OrderedDict([
            ("conv1", Conv2d(in_planes, planes, 3, stride, 1, bias=False, dtype=dtype)),
            ("bn1", BatchNorm2d(planes, dtype=dtype)),
            ("relu", ReLU()),
            ("conv2", Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype)),
            ("bn2", BatchNorm2d(planes, dtype=dtype)),
        ]))
        shortcut = None
        if stride != 1 or in_planes != planes:
            shortcut = Sequential(OrderedDict([
                ("conv", Conv2d(in_planes, planes, 1, stride, bias=False, dtype=dtype)),
                ("bn", BatchNorm2d(planes, dtype=dtype)),
            ]))
        super().__init__(OrderedDict([("res", Residual(body, shortcut, relu=True))]))


class ResNetSmall(Sequential):
    """ResNet-(6n+2): conv3x3-bn-relu stem of ``width`` channels, three stages of ``n``
    basic blocks with ``width, 2·width, 4·width`` channels (stages 2 and 3 start with a
    stride-2 block and a 1x1-conv+bn shortcut), global average pooling, linear classifier.
    ``n = 1`` (default) is ResNet-8.  Works for any image size ≥ 1 (e.g. 1x8x8 digits:
    8 → 8 → 4 → 2 → 1); ``image_size`` is accepted for a uniform model interface."""

    def __init__(self, in_channels=3, num_classes=10, width=16, blocks_per_stage=1,
                 image_size=None, dtype=None):
        w = int(width)
        layers = OrderedDict([
            ("conv1", Conv2d(in_channels, w, 3, 1, 1, bias=False, dtype=dtype)),
            ("bn1", BatchNorm2d(w, dtype=dtype)),
            ("relu", ReLU()),
        ])
        in_planes = w
        for stage, (planes, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2)], start=1):
            blocks = []
            for b in range(int(blocks_per_stage)):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, dtype))
                in_planes = planes
            layers[f"layer{stage}"] = Sequential(*blocks)
        layers["avgpool"] = AdaptiveAvgPool2d(1)
        layers["flatten"] = Flatten()
        layers["fc"] = Linear(in_planes, num_classes, dtype=dtype)
        super().__init__(layers)
