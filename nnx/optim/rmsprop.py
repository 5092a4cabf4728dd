"""RMSprop (PyTorch's formulation), written in ``xp`` array math."""
from __future__ import annotations

from .optimizer import Optimizer, check_hyper


class RMSprop(Optimizer):
    r"""RMSprop exactly as ``torch.optim.RMSprop``::

        g   = (-grad if maximize else grad) + weight_decay * θ
        s   = α s + (1-α) g²                               (square_avg, starts at 0)
        if centered:  a = α a + (1-α) g;   den = sqrt(s - a²) + eps
        else:         den = sqrt(s) + eps
        if momentum:  buf = momentum * buf + g / den;   θ -= lr * buf
        else:         θ -= lr * g / den

    Note ``eps`` is added outside the square root (as PyTorch, unlike some Keras versions).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        check_hyper("learning rate", lr)
        check_hyper("epsilon value", eps)
        check_hyper("alpha value", alpha)
        check_hyper("momentum value", momentum)
        check_hyper("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=bool(centered),
                                      maximize=bool(maximize)))

    def _update(self, be, p, grad, state, group):
        xp = be.xp
        alpha, eps = float(group["alpha"]), float(group["eps"])
        lr, wd, momentum = float(group["lr"]), float(group["weight_decay"]), \
            float(group["momentum"])
        if "step" not in state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.data)
            if momentum > 0:
                state["momentum_buffer"] = xp.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = xp.zeros_like(p.data)
        state["step"] += 1
        g = grad + wd * p.data if wd else grad
        sq = state["square_avg"]
        sq *= alpha
        sq += (1 - alpha) * (g * g)
        if group["centered"]:
            ga = state.setdefault("grad_avg", xp.zeros_like(p.data))
            ga *= alpha
            ga += (1 - alpha) * g
            den = xp.sqrt(sq - ga * ga) + eps
        else:
            den = xp.sqrt(sq) + eps
        if momentum > 0:
            buf = state.setdefault("momentum_buffer", xp.zeros_like(p.data))
            buf *= momentum
            buf += g / den
            p.data -= lr * buf
        else:
            p.data -= lr * (g / den)
