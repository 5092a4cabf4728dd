"""Utilities under PyTorch's ``torch.nn.utils`` names."""
from __future__ import annotations

from .rnn import detach_state


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, **kwargs):
    """Same as :func:`nnx.optim.clip_grad_norm_` (``torch.nn.utils`` spelling)."""
    from ..optim import clip_grad_norm_ as clip
    return clip(parameters, max_norm, norm_type, **kwargs)


__all__ = ["detach_state", "clip_grad_norm_"]
