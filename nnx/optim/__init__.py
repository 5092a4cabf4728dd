"""Optimizers, gradient clipping and learning-rate schedulers (PyTorch names and semantics)."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .lookahead import Lookahead, lookahead_decay
from .clip import clip_grad_norm_, clip_grad_value_
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm_",
           "clip_grad_value_", "lr_scheduler", "Lookahead", "lookahead_decay"]
