"""Build the PyTorch twin of an nnx model (same layers, names and weights) for peer timings.

Only the bench scripts import this, and only when PyTorch is importable; nnx never does.
"""
from __future__ import annotations

from collections import OrderedDict


def torch_twin(model, torch, device="cpu"):
    """A ``torch.nn.Module`` with the structure of the nnx ``model`` and its weights copied
    (``state_dict`` keys are the same).  Raises ``NotImplementedError`` for a layer it does
    not know."""
    twin = _convert(model, torch)
    state = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.to(device)


def _convert(m, torch):
    import nnx.nn as N
    tn = torch.nn
    if isinstance(m, N.Residual):
        return _Residual(torch, _convert(m.body, torch), _convert(m.shortcut, torch),
                         getattr(m, "relu", False))
    if isinstance(m, N.Sequential):
        return tn.Sequential(OrderedDict((name, _convert(c, torch))
                                         for name, c in m.named_children()))
    if isinstance(m, N.Conv2d):
        return tn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, m.groups, bias=m.bias is not None)
    if isinstance(m, N.Linear):
        return tn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, N.BatchNorm2d):
        return tn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats)
    if isinstance(m, N.MaxPool2d):
        return tn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, N.AvgPool2d):
        return tn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                            count_include_pad=m.count_include_pad)
    if isinstance(m, N.AdaptiveAvgPool2d):
        return tn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, N.Flatten):
        return tn.Flatten(m.start_dim, m.end_dim)
    if isinstance(m, N.Dropout):
        return tn.Dropout(m.p)
    simple = {N.ReLU: tn.ReLU, N.Tanh: tn.Tanh, N.Sigmoid: tn.Sigmoid, N.Identity: tn.Identity}
    for cls, tcls in simple.items():
        if type(m) is cls:
            return tcls()
    raise NotImplementedError(f"no PyTorch twin for {type(m).__name__}")


def _Residual(torch, body, shortcut, relu=False):
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            y = self.body(x) + self.shortcut(x)
            return torch.relu(y) if relu else y

    return Residual()
