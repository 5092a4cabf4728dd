"""Ready-made models: ``nnx.models.get("simple_cnn" | "resnet" | "airbench94", **kwargs)``."""
from __future__ import annotations

from .airbench import Airbench94
from .resnet import BasicBlock, ResNetSmall
from .simple_cnn import SimpleCNN

_REGISTRY = {"simple_cnn": SimpleCNN, "resnet": ResNetSmall, "resnet8": ResNetSmall,
             "airbench94": Airbench94}


def get(name: str, **kwargs):
    """Build the model called ``name`` (see :func:`available`) with ``kwargs``."""
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {available()}")
    return _REGISTRY[key](**kwargs)


def available():
    return sorted(_REGISTRY)


__all__ = ["Airbench94", "SimpleCNN", "ResNetSmall", "BasicBlock", "get", "available"]
