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
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NNX_NUM_THREADS"):        # nnx's own batch-parallel CPU pool too
        os.environ[var] = str(n)
    # OpenBLAS worker threads otherwise busy-wait ~2^28 cycles (~0.1 s) after every GEMM:
    # in an interleaved A/B run they steal the cores PyTorch's step runs on next (measured:
    # PyTorch 19 -> 39 ms on 2 cores).  2^4 cycles makes them sleep at once; nnx pays ~4%.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return n


def pin_threads(n: int) -> dict:
    """After importing NumPy: enforce ``n`` BLAS threads with threadpoolctl when it is
    installed (it is optional; the environment set by :func:`set_threads` is the fallback)
    and report what the BLAS libraries use."""
    info = {"requested": n, "env": os.environ.get("OPENBLAS_NUM_THREADS")}
    try:
        import threadpoolctl
    except ImportError:
        info["threadpoolctl"] = None
        return info
    global _THREADPOOL_LIMIT  # keep the limiter alive for the whole run
    _THREADPOOL_LIMIT = threadpoolctl.threadpool_limits(limits=n)
    info["threadpoolctl"] = threadpoolctl.__version__
    info["pools"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads"),
                      "version": p.get("version")} for p in threadpoolctl.threadpool_info()]
    return info


_THREADPOOL_LIMIT = None


def add_common_args(parser, default_repeats: int):
    """Arguments shared by the bench scripts (parsed before NumPy is imported)."""
    parser.add_argument("--backend", default="cpu", choices=["cpu", "cuda"],
                        help="nnx backend to time (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for BLAS and PyTorch (default: all cores)")
    parser.add_argument("--repeats", type=int, default=default_repeats,
                        help=f"timed repetitions per measurement (default {default_repeats})")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs")
    parser.add_argument("--quick", action="store_true", help="few small sizes, for a smoke run")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--out", default=None, help="result directory (default bench/results)")
    parser.add_argument("--tag", default=None, help="suffix for the result file names")
    return parser


def import_torch(enabled: bool, threads: int, device: str):
    """PyTorch with ``threads`` intra-op threads, or ``(None, reason)`` when unavailable."""
    if not enabled:
        return None, "disabled with --no-torch"
    try:
        import torch
    except ImportError as e:
        return None, f"PyTorch not importable ({e})"
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA device"
    return torch, None


def make_sync(backend):
    """Clock-read barrier for the nnx backend (a no-op on the CPU)."""
    return backend.synchronize


def torch_sync(torch, device: str):
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def gpu_pool_bytes(backend):
    """The backend's ``memory_info()`` (CuPy pool bytes) when it has one, else None."""
    fn = getattr(backend, "memory_info", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:  # a broken device query must not lose the timings
        return {"error": str(e)}


def paired_ratio(samples_a_ms, samples_b_ms) -> dict:
    """Ratio A/B from interleaved rounds: median of the per-round ratios, with its IQR, and
    the ratio of the medians."""
    r = sorted(a / b for a, b in zip(samples_a_ms, samples_b_ms) if b > 0)
    if not r:
        return {}
    q = statistics.quantiles(r, n=4) if len(r) >= 4 else [r[0], statistics.median(r), r[-1]]
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2],
            "of_medians": statistics.median(samples_a_ms) / statistics.median(samples_b_ms)}


def summarize(samples_s, keep_samples=False):
    xs = sorted(samples_s)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    out = {"median_ms": 1e3 * statistics.median(xs), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2],
           "min_ms": 1e3 * xs[0], "repeats": len(xs)}
    if keep_samples:  # in run order, for paired ratios
        out["samples_ms"] = [round(1e3 * t, 4) for t in samples_s]
    return out


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


def time_interleaved(fns: dict, syncs: dict, warmup=3, repeats=20, budget_s=None, block=1):
    """Time several callables A, B, ... in rounds A B A B ... so drift affects all alike.

    The order inside a round alternates (A B, B A, ...) so neither side always runs right
    after the other's cache pollution.  ``budget_s`` caps the timed phase: at least 5 rounds
    (or ``repeats`` if fewer) run, then rounds stop once the budget is spent.  Each summary
    keeps its ``samples_ms`` in round order (for :func:`paired_ratio`).

    ``block > 1``: in each round each callable runs ``block`` times in a row; the first run
    (the hand-over, right after the other callable) is reported apart as ``handover_ms`` and
    the round's sample is the median of the other ``block - 1``.  Threads that spin after
    their work (OpenMP's, OpenBLAS's, nnx's C pool) hold cores for a while after a step, so
    with ``block=1`` every step pays for the *other* framework's spinning; in training a
    framework follows itself."""
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        syncs[name]()
    samples = {name: [] for name in fns}
    handover = {name: [] for name in fns}
    names = list(fns)
    start = time.perf_counter()
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times = []
            for _ in range(max(1, block)):
                syncs[name]()
                t0 = time.perf_counter()
                fns[name]()
                syncs[name]()
                times.append(time.perf_counter() - t0)
            if block > 1:
                handover[name].append(times[0])
                samples[name].append(statistics.median(times[1:]))
            else:
                samples[name].append(times[0])
        if budget_s is not None and r + 1 >= min(5, repeats) and \
                time.perf_counter() - start > budget_s:
            break
    out = {name: summarize(s, keep_samples=True) for name, s in samples.items()}
    if block > 1:
        for name in fns:
            out[name]["block"] = block
            out[name]["handover_ms"] = 1e3 * statistics.median(handover[name])
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def _proc_status_mb(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024          # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mb() -> float:
    """Resident set size of this process now (MiB; Linux VmRSS, else the peak so far)."""
    v = _proc_status_mb("VmRSS")
    return peak_rss_mb() if v is None else v


def own_peak_rss_mb() -> float:
    """Peak resident set of this process's own memory (MiB; Linux VmHWM).  Unlike
    ``ru_maxrss`` it does not inherit the parent's peak across fork + exec."""
    v = _proc_status_mb("VmHWM")
    return peak_rss_mb() if v is None else v


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
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}
    try:
        import nnx
        info["nnx"] = nnx.__version__
    except ImportError:
        pass
    if backend.name == "cpu":
        from nnx.backend import native
        info["cpu_kernels"] = native.describe()      # C kernels or the NumPy fallback
        from nnx.backend import cpu_memory
        info["cpu_malloc"] = cpu_memory.describe()   # freed memory kept for reuse or not
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


def fmt_time(summary: dict) -> str:
    """``median [q1-q3] ms``."""
    return (f"{summary['median_ms']:.2f} [{summary['q1_ms']:.2f}-{summary['q3_ms']:.2f}]")


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.2f} [{r['q1']:.2f}-{r['q3']:.2f}]" if r else "-"


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_markdown(info: dict, command: str) -> str:
    keys = ", ".join(f"{k}: {v}" for k, v in info.items() if v is not None)
    return f"Machine: {keys}\n\nCommand: `{command}`\n\n"
