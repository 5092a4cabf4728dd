"""Named image-classification data sets for the command-line tools (train/eval)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .digits import DIGITS_CLASSES, load_digits

# Per-channel mean/std of the CIFAR-10 training images on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

DATASETS = ("cifar10", "digits")


@dataclass
class ImageDataset:
    """Train/test arrays (``uint8`` NCHW images, ``int64`` labels) and their description."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    mean: tuple
    std: tuple

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def get_dataset(name: str, root=None, download: bool = True) -> ImageDataset:
    """``"cifar10"`` (``root``: see :func:`load_cifar10`) or ``"digits"`` (offline)."""
    if name == "cifar10":
        arrays = load_cifar10(root, download=download)
        return ImageDataset(name, *arrays, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD)
    if name == "digits":
        arrays = load_digits()
        x = arrays[0].astype(np.float64) / 255.0   # statistics of the training split
        mean = tuple(float(m) for m in x.mean(axis=(0, 2, 3)))
        std = tuple(float(s) for s in x.std(axis=(0, 2, 3)))
        return ImageDataset(name, *arrays, DIGITS_CLASSES, mean, std)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


__all__ = ["ImageDataset", "get_dataset", "DATASETS", "CIFAR10_MEAN", "CIFAR10_STD"]
