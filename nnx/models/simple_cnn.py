"""The seeds' reference CNN (268,650 parameters for 3x32x32 input, 10 classes)."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.activation import ReLU
from ..nn.container import Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.pooling import MaxPool2d


def _hw(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class SimpleCNN(Sequential):
    """``[conv3x3(C→16, pad 1) → ReLU → maxpool 2] → [conv3x3(16→32, pad 1) → ReLU →
    maxpool 2] → flatten → Linear(32·(H/4)·(W/4) → 128) → ReLU → Linear(128 → classes)``.

    For 3x32x32 and 10 classes: 448 + 4,640 + 262,272 + 1,290 = 268,650 parameters.
    ``image_size`` (int or (H, W)) sizes the first linear layer; H and W must be ≥ 4
    (pooling floors odd sizes, as PyTorch does).  Layer names (``conv1``, ``fc1``, ...) make
    the state_dict keys match an equally named ``torch.nn.Sequential``.
    """

    def __init__(self, in_channels=3, num_classes=10, image_size=32, dtype=None):
        h, w = _hw(image_size)
        if h < 4 or w < 4:
            raise ValueError(f"SimpleCNN needs images of at least 4x4, got {h}x{w}")
        flat = 32 * (h // 2 // 2) * (w // 2 // 2)
        super().__init__(OrderedDict([
            ("conv1", Conv2d(in_channels, 16, 3, padding=1, dtype=dtype)),
            ("relu1", ReLU()),
            ("pool1", MaxPool2d(2)),
            ("conv2", Conv2d(16, 32, 3, padding=1, dtype=dtype)),
            ("relu2", ReLU()),
            ("pool2", MaxPool2d(2)),
            ("flatten", Flatten()),
            ("fc1", Linear(flat, 128, dtype=dtype)),
            ("relu3", ReLU()),
            ("fc2", Linear(128, num_classes, dtype=dtype)),
        ]))
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, (h, w)
