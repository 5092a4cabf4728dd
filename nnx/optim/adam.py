"""Adam and AdamW (the arithmetic runs in ``backend.adam_update``)."""
from __future__ import annotations

from .optimizer import Optimizer, check_hyper, fused_buckets


class Adam(Optimizer):
    r"""Adam (Kingma & Ba) with PyTorch's defaults; ``t`` counts from 1 per parameter::

        g  = (-grad if maximize else grad) + weight_decay * θ      (L2 folded into g)
        m  = β1 m + (1-β1) g                    v = β2 v + (1-β2) g²
        θ -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps)
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False):
        check_hyper("learning rate", lr)
        check_hyper("epsilon value", eps)
        check_hyper("beta parameter at index 0", betas[0], 0.0, 1.0)
        check_hyper("beta parameter at index 1", betas[1], 0.0, 1.0)
        check_hyper("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, maximize=bool(maximize)))

    @staticmethod
    def _advance(be, p, state):
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = be.xp.zeros_like(p.data)
            state["exp_avg_sq"] = be.xp.zeros_like(p.data)
        state["step"] += 1

    def _hyper(self, group):
        beta1, beta2 = group["betas"]
        return (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                float(group["weight_decay"]))

    def _update(self, be, p, grad, state, group):
        self._advance(be, p, state)
        be.adam_update(p.data, grad, state["exp_avg"], state["exp_avg_sq"], *self._hyper(group),
                       state["step"], decoupled=self._decoupled)

    def _update_group(self, be, items, group):
        """One ``adam_update_multi`` launch per (dtype, step) where the backend has it."""
        multi = getattr(be, "adam_update_multi", None)
        if multi is None:
            return super()._update_group(be, items, group)
        buckets, rest = fused_buckets(
            items, lambda it: (it[0].data.dtype.str, it[2].get("step", 0) + 1))
        for (_, step), bucket in buckets.items():
            for p, _, st in bucket:
                self._advance(be, p, st)
            multi([p.data for p, _, _ in bucket], [g for _, g, _ in bucket],
                  [st["exp_avg"] for _, _, st in bucket],
                  [st["exp_avg_sq"] for _, _, st in bucket], *self._hyper(group), step,
                  decoupled=self._decoupled)
        for p, grad, state in rest:
            self._update(be, p, grad, state, group)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's ``AdamW``::

        θ *= 1 - lr · weight_decay              (before the Adam step; no L2 term in g)
        m, v, θ as in :class:`Adam`
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize)
