"""Seconds per training step (and per CIFAR-10 epoch, extrapolated) of the full-size
airbench94 recipe on this machine: random CIFAR-shaped data, the real network (64/256/256),
batch 1024, the recipe's own loop (nnx.recipes.airbench94.train).  One warm-up step is
dropped; the median of the timed steps times the 48 steps of a CIFAR-10 epoch (50000 // 1024)
is the extrapolated epoch time.  The CPU seconds of the process per step are reported too
(less sensitive to other load on a shared machine; with N cores busy, wall ≈ CPU / N).

    python bench/airbench94_step_time.py --backend cpu --steps 4
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import nnx
import nnx.backend as B
from nnx.nn.whitening import whitening_init_
from nnx.recipes import airbench94 as R

STEPS_PER_CIFAR_EPOCH = 50000 // 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=1024)
    args = p.parse_args(argv)
    be = B.use(args.backend)
    nnx.manual_seed(0)
    n = args.batch_size * (args.steps + 1)
    rng = np.random.default_rng(0)
    images = be.asarray(rng.standard_normal((n, 3, 32, 32)).astype(np.float32))
    labels = be.asarray(rng.integers(0, 10, n))
    cfg = R.Config(batch_size=args.batch_size, epochs=1)
    model = R.build_model(cfg)
    whitening_init_(model.whiten, images[:5000])
    stamps = []

    def hook(event, info):
        if event == "step":
            be.synchronize()
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
    cpu = []
    be.synchronize()
    stamps.append(time.perf_counter())
    cpu.append(time.process_time())
    R.train(model, images, labels, cfg, hook=hook)
    steps = np.diff(stamps)[1:]                      # drop the warm-up step
    step = float(np.median(steps))
    cpu_step = float(np.median(np.diff(cpu)[1:]))   # CPU seconds of this process, all threads
    result = dict(backend=args.backend, batch_size=args.batch_size, timed_steps=len(steps),
                  step_seconds=[round(float(s), 3) for s in steps],
                  median_step_seconds=round(step, 3),
                  median_step_cpu_seconds=round(cpu_step, 3),
                  extrapolated_epoch_seconds=round(step * STEPS_PER_CIFAR_EPOCH, 1),
                  extrapolated_9_9_epochs_seconds=round(step * STEPS_PER_CIFAR_EPOCH * 9.9, 1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
