"""Stochastic gradient descent with optional momentum, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, check_hyper, fused_buckets


class SGD(Optimizer):
    r"""SGD exactly as ``torch.optim.SGD`` (the arithmetic runs in ``backend.sgd_update``)::

        g   = -grad if maximize else grad
        g   = g + weight_decay * θ
        buf = g                                       on the first step (no dampening)
        buf = momentum * buf + (1 - dampening) * g    afterwards
        d   = g + momentum * buf  if nesterov  else  buf        (d = g when momentum == 0)
        θ  -= lr * d

    **EMA momentum** (the seeds' form), ``ema_momentum=True``: an exponential moving average
    of the gradients that starts at zero, with ``β = momentum``::

        v_{t+1} = β v_t + (1 - β) g_t,    v_0 = 0,    θ -= lr · v_{t+1}

    (``g_t`` after ``maximize`` and ``weight_decay`` as above.)  It differs from PyTorch's
    momentum with ``dampening=β`` only in the first step (PyTorch: ``v_1 = g_0``), and from
    plain momentum by the factor ``1-β``: in steady state PyTorch's buffer is ``1/(1-β)``
    times the EMA, so use a correspondingly larger ``lr`` with the EMA.  It cannot be
    combined with ``dampening`` (the EMA fixes the gradient weight at ``1-β``) or with
    ``nesterov``.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, ema_momentum=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=bool(nesterov),
                                      maximize=bool(maximize),
                                      ema_momentum=bool(ema_momentum)))

    def add_param_group(self, group: dict) -> None:
        if isinstance(group, dict):   # validate before the group joins the optimizer
            _check_group({**self.defaults, **group})
        super().add_param_group(group)

    def _buffer(self, be, p, state, group):
        """``(momentum buffer or None, first_step)``; creates the buffer on first use."""
        if not float(group["momentum"]):
            return None, False
        buf = state.get("momentum_buffer")
        if buf is not None:
            return buf, False
        # PyTorch starts the buffer at g (first_step); the EMA starts it at zero
        buf = state["momentum_buffer"] = be.xp.zeros_like(p.data)
        return buf, not group["ema_momentum"]

    def _hyper(self, group):
        momentum = float(group["momentum"])
        return dict(momentum=momentum,
                    dampening=momentum if group["ema_momentum"] else float(group["dampening"]),
                    nesterov=bool(group["nesterov"]), weight_decay=float(group["weight_decay"]))

    def _update(self, be, p, grad, state, group):
        buf, first = self._buffer(be, p, state, group)
        be.sgd_update(p.data, grad, buf, float(group["lr"]), first_step=first,
                      **self._hyper(group))

    def _update_group(self, be, items, group):
        """One ``sgd_update_multi`` launch per (dtype, first step) where the backend has it."""
        multi = getattr(be, "sgd_update_multi", None)
        if multi is None:
            return super()._update_group(be, items, group)
        firsts = {id(p): self._buffer(be, p, st, group)[1] for p, _, st in items}
        buckets, rest = fused_buckets(items, lambda it: (it[0].data.dtype.str, firsts[id(it[0])]))
        for (_, first), bucket in buckets.items():
            multi([p.data for p, _, _ in bucket], [g for _, g, _ in bucket],
                  [st.get("momentum_buffer") for _, _, st in bucket], float(group["lr"]),
                  first_step=first, **self._hyper(group))
        for p, grad, state in rest:   # buffers exist now: _update sees first_step False
            be.sgd_update(p.data, grad, state.get("momentum_buffer"), float(group["lr"]),
                          first_step=firsts[id(p)], **self._hyper(group))


def _check_group(g: dict) -> None:
    """Validate one parameter group's hyper-parameters (PyTorch's checks, plus the EMA's)."""
    check_hyper("learning rate", g["lr"])
    check_hyper("momentum value", g["momentum"])
    check_hyper("weight_decay value", g["weight_decay"])
    if g["ema_momentum"]:
        if g["dampening"] != 0:
            raise ValueError(f"ema_momentum=True weights the gradient by (1 - momentum) "
                             f"itself; it cannot be combined with dampening "
                             f"(got dampening={g['dampening']})")
        if g["nesterov"]:
            raise ValueError("ema_momentum=True cannot be combined with nesterov=True")
    elif g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
