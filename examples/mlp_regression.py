"""3-layer ReLU MLP regression with MSE, trained by mini-batch SGD (the seeds' example).

    ŷ = W3 σ(W2 σ(W1 x + b1) + b2) + b3,   σ = ReLU,   J = (1/N) Σ (ŷ_i - y_i)²

nnx computes exactly the seeds' gradients (δ3 = 2/N (ŷ - y), δ2 = (W3ᵀ δ3) ⊙ σ'(z2), ...)
through ``model.backward``.  Run:  ``python examples/mlp_regression.py --epochs 60``
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


def make_data(n=1024, d=4, seed=0):
    """y = sin(x0) + 0.5 x1² - x2 x3 + small noise, x ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3]
    y = y + 0.05 * rng.standard_normal(n)
    return x, y[:, None].astype(np.float32)


def main(epochs=60, seed=0, verbose=True, lr=0.05, batch_size=32, hidden=64):
    """Train and return the final epoch's mean training loss (float)."""
    nnx.manual_seed(seed)
    x, y = make_data(seed=seed)
    d = x.shape[1]
    model = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 1))
    crit = nn.MSELoss()
    opt = nnx.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    be = nnx.backend.get()
    xb_all, yb_all = be.asarray(x), be.asarray(y)
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        order = be.asarray(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = xb_all[idx], yb_all[idx]
            opt.zero_grad()
            loss = crit(model(xb), yb)              # forward pass + loss
            model.backward(crit.backward())          # backward pass: dJ/dθ into p.grad
            opt.step()                               # θ -= η dJ/dθ
            total += float(loss) * len(xb)
        epoch_loss = total / len(x)
        if verbose:
            print(f"Epoch {epoch}/{epochs}, Loss: {epoch_loss:.6f}")
    return epoch_loss


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    final = main(a.epochs, a.seed, not a.quiet, lr=a.lr, batch_size=a.batch_size)
    print(f"final training MSE: {final:.6f}")
