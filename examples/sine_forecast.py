"""One-step-ahead forecasting of noisy sine waves with an LSTM (sequence-to-sequence).

Each sample is a sine wave with random frequency, phase and amplitude plus Gaussian noise;
the model reads ``x_1..x_T`` and predicts ``x_{t+1}`` at every step (per-step MSE, the first
``warmup`` steps masked out because the frequency cannot be known yet).  The test MSE is
compared with the noise floor (``noise²``) and the naive "repeat the last value" forecast.

Run: ``python examples/sine_forecast.py``.
"""
from __future__ import annotations

import numpy as np

import nnx
from nnx import nn


def make_batch(rng, n, T, noise):
    """``x (T, N, 1)`` and next-step targets ``y (T, N, 1)`` (time-major)."""
    t = np.arange(T + 1, dtype=np.float64)[:, None]
    freq = rng.uniform(0.15, 0.5, size=(1, n))
    phase = rng.uniform(0, 2 * np.pi, size=(1, n))
    amp = rng.uniform(0.5, 1.0, size=(1, n))
    s = amp * np.sin(freq * t + phase) + noise * rng.standard_normal((T + 1, n))
    s = s.astype(np.float32)[..., None]
    return s[:-1], s[1:]


class Forecaster(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.rnn = nn.LSTM(1, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)

    def backward(self, dy):
        return self.rnn.backward(self.head.backward(dy))


def main(steps=250, batch=64, T=30, hidden=32, noise=0.05, warmup=5, lr=1e-2, seed=0,
         verbose=False):
    """Train and return the final test MSE (masked steps excluded)."""
    nnx.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Forecaster(hidden)
    opt = nnx.optim.Adam(model.parameters(), lr=lr)
    crit = nn.SequenceMSELoss()
    mask = np.broadcast_to(np.arange(T)[:, None] >= warmup, (T, batch))
    for step in range(steps):
        x, y = make_batch(rng, batch, T, noise)
        loss = crit(model(x), y, mask=mask)
        opt.zero_grad()
        model.backward(crit.backward())
        nnx.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if verbose and step % 50 == 0:
            print(f"step {step:4d}  train mse {float(loss):.5f}")
    model.eval()
    test_rng = np.random.default_rng(seed + 1000)
    x, y = make_batch(test_rng, 512, T, noise)
    test_mask = np.broadcast_to(np.arange(T)[:, None] >= warmup, (T, 512))
    mse = float(crit(model(x), y, mask=test_mask))
    if verbose:
        naive = float(crit(x, y, mask=test_mask))
        print(f"test mse {mse:.5f}  (target noise variance {noise ** 2:.5f}; "
              f"repeat-last-value forecast {naive:.5f})")
    return mse


if __name__ == "__main__":
    main(verbose=True)
