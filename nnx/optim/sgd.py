"""Stochastic gradient descent with optional momentum, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, check_hyper, required


class SGD(Optimizer):
    r"""SGD with momentum, update by update (the arithmetic runs in ``backend.sgd_update``)::

        g   = grad + weight_decay * θ
        buf = momentum * buf + (1 - dampening) * g      (buf starts at 0)
        d   = g + momentum * buf  if nesterov  else  buf        (d = g when momentum == 0)
        θ  -= lr * d

    **Seeds' EMA momentum.**  The seeds write momentum as an exponential moving average
    ``m_{t+1} = β m_t + (1-β) g_t`` with ``m_0 = 0``, ``θ -= α m_{t+1}``: that is exactly
    ``SGD(params, lr=α, momentum=β, dampening=β)``.

    **PyTorch.**  With ``dampening=0`` (the default) every step equals ``torch.optim.SGD``'s.
    PyTorch's first step sets ``buf = g`` even when ``dampening > 0``; here it is
    ``(1 - dampening) g`` (the buffer starting at zero), which is what makes the EMA form
    exact.  So with ``dampening > 0`` the two differ, by a first-step term that decays as
    ``momentum^t``.  Plain momentum (``dampening=0``) equals ``1/(1-β)`` times the EMA in
    steady state; use a correspondingly smaller ``lr`` when switching between the forms.
    """

    def __init__(self, params, lr=required, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        if lr is not required:
            check_hyper("learning rate", lr)
        check_hyper("momentum", momentum)
        check_hyper("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=bool(nesterov), weight_decay=weight_decay))

    def _update(self, be, p, grad, state, group):
        momentum = float(group["momentum"])
        buf = None
        first = False
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = be.xp.zeros_like(p.data)
                first = True
        be.sgd_update(p.data, grad, buf, float(group["lr"]), momentum=momentum,
                      dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                      weight_decay=float(group["weight_decay"]), first_step=first)
