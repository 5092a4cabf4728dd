"""Shared benchmark machinery: timing with warm-up and medians, interleaved A/B peers, machine
description, and result files (JSON + Markdown) under bench/results/.

Method (see bench/README.md): warm up, repeat, report the median and the spread (IQR), call the
backend's ``synchronize`` before every clock read, pin the CPU thread count, and compare peers
by interleaving their repetitions so that machine drift cancels in the ratio.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone


def set_threads(n: int | None) -> int:
    """Pin BLAS/OpenMP threads (must run before NumPy is imported to take full effect)."""
    n = n or os.cpu_count() or 1
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def summarize(samples_s):
    xs = sorted(samples_s)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    return {"median_ms": 1e3 * statistics.median(xs), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2],
            "min_ms": 1e3 * xs[0], "repeats": len(xs)}


def time_fn(fn, sync, warmup=3, repeats=20, min_time_s=0.0):
    """Median timing of ``fn()``; ``sync()`` is called before each clock read."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - start_all < min_time_s:
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 10 * repeats:
            break
    return summarize(samples)


def time_interleaved(fns: dict, syncs: dict, warmup=3, repeats=20):
    """Time several callables A, B, ... in rounds A B A B ... so drift affects all alike."""
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        syncs[name]()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            syncs[name]()
            t0 = time.perf_counter()
            fn()
            syncs[name]()
            samples[name].append(time.perf_counter() - t0)
    return {name: summarize(s) for name, s in samples.items()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(backend) -> dict:
    """Describe the machine and library versions the numbers were taken on."""
    import numpy as np

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "backend": backend.name,
            "threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import nnx
        info["nnx"] = nnx.__version__
    except ImportError:
        pass
    if backend.name == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def write_results(name: str, payload: dict, markdown: str, out_dir=None) -> tuple[str, str]:
    """Write ``<name>.json`` and ``<name>.md`` atomically under bench/results/ (or out_dir)."""
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    payload.setdefault("command", " ".join([os.path.basename(sys.executable)] + sys.argv))
    paths = []
    for ext, text in (("json", json.dumps(payload, indent=2, default=str) + "\n"),
                      ("md", markdown)):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        paths.append(path)
    return tuple(paths)


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_markdown(info: dict, command: str) -> str:
    keys = ", ".join(f"{k}: {v}" for k, v in info.items() if v is not None)
    return f"Machine: {keys}\n\nCommand: `{command}`\n\n"
