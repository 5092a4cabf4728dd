"""Data sets (CIFAR-10, scikit-learn's 8x8 digits), map-style ``Dataset``/``TensorDataset``/
``random_split``, a batching ``DataLoader`` (optionally prefetching on threads) and
whole-batch augmentations that run on the active backend."""
from .errors import DataError
from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .digits import load_digits
from .datasets import ImageDataset, get_dataset
from .collate import default_collate
from .dataset import Dataset, Subset, TensorDataset, random_split
from .loader import DataLoader
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["DataError", "load_cifar10", "CIFAR10_CLASSES", "load_digits", "get_dataset", "ImageDataset", "DataLoader",
           "Dataset", "TensorDataset", "Subset", "random_split", "default_collate",
           "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]
