"""A custom model with no hand-written backward: two views of each digit, concatenated.

``forward`` calls layers (one ReLU instance three times) and functions of
``nnx.nn.functional`` (mean, cat, flatten, add); nnx records the calls and
``model.backward`` runs their backward in reverse, so the class has no ``backward``.
Data: scikit-learn's 8x8 digits.  Run: ``python examples/custom_model.py``.
"""
from __future__ import annotations

import numpy as np

import nnx
from nnx import nn, optim
from nnx.data.digits import load_digits
from nnx.nn import functional as F


class TwoViewNet(nn.Module):
    """Conv features and the image's row/column profiles, concatenated, then a residual
    block and a linear classifier."""

    def __init__(self, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, dtype=dtype)
        self.pool = nn.MaxPool2d(2)
        self.profile = nn.Linear(16, 32, dtype=dtype)
        self.mix = nn.Linear(160, 160, dtype=dtype)
        self.head = nn.Linear(160, 10, dtype=dtype)
        self.act = nn.ReLU()                                   # one instance, used 3 times

    def forward(self, x):                                      # x: (N, 1, 8, 8)
        a = F.flatten(self.pool(self.act(self.conv(x))), 1)    # (N, 128)
        rows, cols = F.mean(x, dim=3), F.mean(x, dim=2)        # (N, 1, 8) each
        b = self.act(self.profile(F.flatten(F.cat([rows, cols], 2), 1)))   # (N, 32)
        h = F.cat([a, b], 1)                                   # (N, 160)
        h = F.add(h, self.act(self.mix(h)))                    # residual block
        return self.head(h)


def main(epochs=8, batch=64, lr=3e-3, seed=0, verbose=True):
    """Train and return the test accuracy."""
    nnx.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits("float32")
    model = TwoViewNet()
    crit, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = crit(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            model.backward(crit.backward(), input_grad=False)  # no backward written above
            opt.step()
        if verbose:
            print(f"epoch {epoch + 1}: last batch loss {float(loss):.3f}")
    model.eval()
    with nnx.no_grad():                                        # evaluation keeps nothing
        pred = model(x_test).argmax(axis=1)
    acc = float((pred == y_test).mean())
    if verbose:
        print(f"test accuracy {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
