"""Sequence classification with a GRU: the "marked sum sign" task (a classification variant
of Hochreiter & Schmidhuber's adding problem).

Each sequence has two channels: a value ``v_t ~ U(-1, 1)`` and a marker that is 1 at exactly
two random positions.  The label is 1 iff the two marked values sum to a positive number, so
the network must remember values seen many steps earlier and ignore the rest.  The input
is batch-first; the classifier reads the final hidden state ``h_n``, so backward enters
through ``d_hn`` only (``gru.backward(None, d_hn)``).

Run: ``python examples/sequence_classification.py``.
"""
from __future__ import annotations

import numpy as np

import nnx
from nnx import nn


def make_batch(rng, n, T):
    """``x (N, T, 2)`` batch-first and labels ``(N,)``."""
    v = rng.uniform(-1, 1, size=(n, T)).astype(np.float32)
    marks = np.zeros((n, T), np.float32)
    for i in range(n):
        a, b = rng.choice(T, size=2, replace=False)
        marks[i, [a, b]] = 1.0
    x = np.stack([v, marks], axis=-1)
    y = ((v * marks).sum(axis=1) > 0).astype(np.int64)
    return x, y


class Classifier(nn.Module):
    def __init__(self, hidden=32, classes=2):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        _, h_n = self.gru(x)             # h_n (1, N, H)
        return self.head(h_n[-1])

    def backward(self, dlogits):
        d_hn = self.head.backward(dlogits)[None]
        return self.gru.backward(None, d_hn)


def accuracy(model, x, y):
    return float((nnx.backend.get().to_numpy(model(x)).argmax(axis=1) == y).mean())


def main(steps=300, batch=64, T=12, hidden=32, lr=1e-2, seed=0, verbose=False):
    """Train and return the test accuracy (chance = 0.5)."""
    nnx.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Classifier(hidden)
    opt = nnx.optim.Adam(model.parameters(), lr=lr)
    crit = nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = make_batch(rng, batch, T)
        loss = crit(model(x), y)
        opt.zero_grad()
        model.backward(crit.backward())
        nnx.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if verbose and step % 50 == 0:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    model.eval()
    x, y = make_batch(np.random.default_rng(seed + 1000), 1000, T)
    acc = accuracy(model, x, y)
    if verbose:
        print(f"test accuracy {acc:.3f} (chance 0.5)")
    return acc


if __name__ == "__main__":
    main(verbose=True)
