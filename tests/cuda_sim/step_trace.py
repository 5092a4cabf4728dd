"""Count what one training step on the CUDA backend would launch, transfer and wait for.

Used by tests (tests/test_step_counts_sim.py) and by ``bench/step_counts.py``.  The step is the
trainer's: forward, ``CrossEntropyLoss``, ``zero_grad``, backward (no input gradient),
``optimizer.step()`` and the trainer's per-step metric bookkeeping
(``nnx.train._StepMetrics.add`` when the trainer has it; otherwise the inline code the
trainer used before it: ``float(loss)``, a finiteness check and the correct-count sum).

Counting happens in the simulated CuPy (``fake_cupy.trace``; its docstring says what counts
as a launch).  On a real GPU the same numbers come from a profiler, not from this module:
``nsys profile --trace=cuda --stats=true python bench/step_counts.py --backend cuda`` lists
``cuLaunchKernel``/``cudaLaunchKernel`` calls (launches), ``cudaMemcpy*`` by direction
(transfers) and ``cudaStreamSynchronize``/``cudaDeviceSynchronize`` plus synchronous D2H
copies (synchronisations).
"""
from __future__ import annotations

import numpy as np

import fake_cupy

MODEL_KW = {"simple_cnn": {}, "resnet": {"width": 16, "blocks_per_stage": 1}}


def build(nnx, model_name, batch, optimizer="sgd", seed=0, **opt_kw):
    """Model, loss, optimizer and a fixed random batch on the active (simulated cuda)
    backend: the bench/train_step.py set-up (3x32x32 images, 10 classes)."""
    be = nnx.backend.get()
    nnx.manual_seed(seed)
    model = nnx.models.get(model_name, **MODEL_KW.get(model_name, {}))
    model.to(be)
    crit = nnx.nn.CrossEntropyLoss()
    if optimizer == "sgd":
        opt = nnx.optim.SGD(model.parameters(), **{"lr": 0.01, "momentum": 0.9, **opt_kw})
    elif optimizer == "adam":
        opt = nnx.optim.Adam(model.parameters(), **{"lr": 1e-3, **opt_kw})
    elif optimizer == "adamw":
        opt = nnx.optim.AdamW(model.parameters(), **{"lr": 1e-3, **opt_kw})
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    rng = np.random.default_rng(batch)
    x = be.asarray(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
    y = be.asarray(rng.integers(0, 10, size=batch))
    return model, crit, opt, x, y


def make_step(nnx, model, crit, opt):
    """The trainer's step as a function of one batch."""
    import nnx.train as T
    metrics = T._StepMetrics() if hasattr(T, "_StepMetrics") else None
    legacy = {"loss_sum": 0.0, "correct": 0}

    def step(x, y):
        logits = model(x)
        loss = crit(logits, y)
        if metrics is None:       # the trainer's per-step code before _StepMetrics
            loss_f = float(loss)
            if not np.isfinite(loss_f):
                raise RuntimeError("diverged")
        opt.zero_grad()
        model.backward(crit.backward(), input_grad=False)
        opt.step()
        if metrics is None:
            legacy["loss_sum"] += loss_f * int(y.shape[0])
            legacy["correct"] = legacy["correct"] + (logits.argmax(axis=1) == y).sum()
        else:
            metrics.add(loss, logits, y)
    step.metrics = metrics
    return step


def trace_steps(step, x, y, warmup=1, steps=2):
    """Run ``warmup`` untraced steps (state allocation, compilation), then trace ``steps``
    steps one by one; returns the list of traces."""
    for _ in range(warmup):
        step(x, y)
    traces = []
    for _ in range(steps):
        with fake_cupy.trace() as t:
            step(x, y)
        traces.append(t)
    return traces


def sequence_without_uploads(trace) -> list:
    """:meth:`Trace.sequence` less the buffer of each host->device upload.  The one upload
    in a step is the multi-tensor optimizer's pointer table (cupy_backend._tensor_table): it
    happens only when the gradients sit at addresses the backend has not seen, which depends
    on what the allocator hands out (the fake: NumPy's malloc; a GPU: CuPy's pool), not on
    nnx's code; persistent gradients (``zero_grad(set_to_none=False)``) never upload."""
    out, prev = [], None
    for e in trace.events:
        if not (e[0] == "alloc" and prev is not None and prev[0] == "h2d"
                and prev[1:] == e[1:]) and e[0] in ("launch", "alloc"):
            out.append(e)
        prev = e
    return out


def summary(trace) -> dict:
    """Counts, per-kind names and allocation bytes of one traced step."""
    c = trace.counts()
    allocs = [n for k, _, n in trace.events if k == "alloc"]
    return {"launches": c["launch"], "allocations": c["alloc"],
            "alloc_bytes": int(sum(allocs)), "h2d": c["h2d"], "d2h": c["d2h"],
            "syncs": c["sync"], "rng_created": c["rng_create"],
            "launch_names": trace.names("launch"), "sync_names": trace.names("sync"),
            "h2d_names": trace.names("h2d")}
