"""nnx: a small, transparent deep-learning library with explicit backward passes, running on
NumPy (``NNX_BACKEND=cpu``) or CuPy with our own CUDA kernels (``NNX_BACKEND=cuda``)."""
from __future__ import annotations

__version__ = "0.1.0"

from . import backend
from .dtypes import get_default_dtype, set_default_dtype
from .random import manual_seed
from . import init, nn
from .nn.tape import enable_grad, inference_mode, is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck
from .summary import Summary, summary
from . import optim, metrics
from .checkpoint import CheckpointError, load, save

__all__ = ["backend", "nn", "init", "manual_seed", "gradcheck", "GradcheckError",
           "get_default_dtype", "set_default_dtype", "__version__"]
__all__ += ["optim", "metrics", "save", "load", "CheckpointError"]
__all__ += ["no_grad", "enable_grad", "inference_mode", "is_grad_enabled"]
__all__ += ["data", "models", "summary", "Summary"]

_LAZY = ("data", "models")


def __getattr__(name):
    """``nnx.data`` and ``nnx.models`` are imported on first use (``nnx.data`` alone costs
    ~0.1 s, paid only by scripts that load data through nnx)."""
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nnx' has no attribute {name!r}")
