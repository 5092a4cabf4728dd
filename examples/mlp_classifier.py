"""tanh-tanh-softmax MLP classifier (the seeds' 3-layer MLP) on 3-class spirals, trained with
plain SGD and with the seeds' EMA momentum ``SGD(momentum=β, ema_momentum=True)``
(``v = β v + (1-β) g``, ``v_0 = 0``, ``θ -= lr v``).

    a1 = tanh(x W1 + b1),  a2 = tanh(a1 W2 + b2),  p = softmax(a2 W3 + b3)
    J = -(1/m) Σ log p_{y},   ∂J/∂z3 = (P - Y_onehot)/m

``CrossEntropyLoss`` takes the logits z3 and fuses the softmax with the loss (the same
gradient, computed stably).  Run:  ``python examples/mlp_classifier.py --epochs 150``
"""
from __future__ import annotations

import argparse

import os
import sys

import numpy as np

try:
    import nnx
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import nnx
from nnx import nn


def make_spirals(n_per_class=200, classes=3, noise=0.2, seed=0):
    """The classic interleaved spirals (2-D inputs, integer labels)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + noise * rng.standard_normal(
            n_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def train(optimizer="sgd", epochs=150, seed=0, verbose=True, lr=None, beta=0.9,
          batch_size=32, hidden=64):
    """Train one model; ``optimizer`` is ``"sgd"`` or ``"ema"`` (EMA momentum).  Returns
    ``(final epoch loss, training accuracy)``."""
    nnx.manual_seed(seed)
    x, y = make_spirals(seed=seed)
    model = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, 3))
    crit = nn.CrossEntropyLoss()
    if optimizer == "sgd":
        opt = nnx.optim.SGD(model.parameters(), lr=lr or 0.2)
    elif optimizer == "ema":
        opt = nnx.optim.SGD(model.parameters(), lr=lr or 0.2, momentum=beta,
                            ema_momentum=True)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'ema', got {optimizer!r}")
    be = nnx.backend.get()
    xa, ya = be.asarray(x), be.asarray(y)
    rng = np.random.default_rng(seed + 1)
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        order = be.asarray(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = crit(model(xa[idx]), ya[idx])
            model.backward(crit.backward())
            opt.step()
            total += float(loss) * len(idx)
        epoch_loss = total / len(x)
        if verbose and (epoch % 10 == 0 or epoch == 1):
            print(f"[{optimizer}] Epoch {epoch}/{epochs}, Loss: {epoch_loss:.4f}")
    acc = nnx.metrics.accuracy(y, model(xa))
    return epoch_loss, acc


def main(epochs=150, seed=0, verbose=True):
    """Train with plain SGD and with EMA momentum; returns
    ``{"sgd": (loss, accuracy), "ema": (loss, accuracy)}``."""
    out = {}
    for name in ("sgd", "ema"):
        out[name] = train(name, epochs=epochs, seed=seed, verbose=verbose)
        if verbose:
            print(f"[{name}] final loss {out[name][0]:.4f}, accuracy {out[name][1]:.3f}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    main(a.epochs, a.seed, not a.quiet)
