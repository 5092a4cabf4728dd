"""nnx's C thread pool (kernels/cpu/parallel.c) and the tasks it runs (nnx/backend/cpu_tasks.py).

The pool is driven here through its probe task, which records for every item the start of the
chunk it was in and the index of the thread that ran it (0 = the caller, i = worker i)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from nnx.backend import cpu_conv, cpu_parallel, cpu_tasks, native
from native_build import c_kernels_build

needs_pool = pytest.mark.skipif(not c_kernels_build("parallel"),
                                reason="the C kernels do not build here")


def _probe(n, k, busy_us=0, fail_at=-1, nested=(0, 0)):
    """Run the probe over ``n`` items in ``k`` chunks; ``(return code, (n, 3) records)``."""
    lib = native.pool()
    out = np.full(3 * max(n, 1), -9, dtype=np.int64)
    args = cpu_tasks.pack(out, busy_us, fail_at, *nested)
    addr = native.task_address(lib.nnx_parallel_probe)
    rc = lib.nnx_parallel_run(addr, args.ctypes.data, n, k)
    return rc, out[:3 * n].reshape(n, 3)


@needs_pool
@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (8, 2), (5, 5), (3, 8), (100, 4), (65, 7)])
def test_chunks_are_chunk_bounds_and_chunk_i_runs_on_worker_i(n, k):
    rc, rec = _probe(n, k, busy_us=200)       # busy: the chunks really overlap
    assert rc == 0
    kk = min(k, n)
    for i, (a, b) in enumerate(cpu_parallel.chunk_bounds(n, kk)):
        assert (rec[a:b, 0] == a).all(), rec          # every item saw its chunk's start
        assert (rec[a:b, 1] == i).all(), rec          # chunk i: the caller (0) or worker i
    assert native.pool().nnx_parallel_workers() >= kk - 1


@needs_pool
def test_the_first_failing_chunk_in_chunk_order_gives_the_code():
    for fail_at in (0, 4, 6):
        rc, rec = _probe(7, 3, fail_at=fail_at)
        assert rc == 7
        assert (rec[:, 0] >= 0).all()                 # the other chunks still ran
    assert _probe(7, 3, fail_at=99)[0] == 0
    assert _probe(0, 3)[0] == 0                       # an empty range runs nothing


@needs_pool
def test_a_nested_call_runs_serially_on_the_calling_thread():
    rc, rec = _probe(4, 2, nested=(6, 3))
    assert rc == 0
    # each outer chunk's nested run happened on one thread: the one running that chunk
    assert (rec[:, 2] == rec[:, 1]).all(), rec


@needs_pool
def test_callers_on_several_python_threads_all_get_their_results():
    """One run at a time holds the workers; a concurrent caller runs its chunks itself."""
    errors, results = [], {}

    def call(t):
        try:
            for _ in range(20):
                rc, rec = _probe(9, 3, busy_us=50)
                assert rc == 0
                for a, b in cpu_parallel.chunk_bounds(9, 3):
                    assert (rec[a:b, 0] == a).all()
            results[t] = True
        except BaseException as e:   # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == 3


@needs_pool
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_starts_its_own_workers():
    _probe(6, 3, busy_us=10)                          # the parent's workers exist
    pid = os.fork()
    if pid == 0:                                      # child: the parent's threads are gone
        code = 1
        try:
            rc, rec = _probe(6, 3, busy_us=100)
            code = 0 if rc == 0 and list(rec[:, 1]) == [0, 0, 1, 1, 2, 2] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@needs_pool
def test_workers_that_sleep_at_once_still_pick_up_work(tmp_path):
    """NNX_SPIN_US=0: no spinning, every hand-off wakes a sleeping thread."""
    code = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_cpu_pool import _probe\n"
        "from nnx.backend import cpu_parallel\n"
        "for r in range(200):\n"
        "    rc, rec = _probe(10, 4)\n"
        "    assert rc == 0\n"
        "    for i, (a, b) in enumerate(cpu_parallel.chunk_bounds(10, 4)):\n"
        "        assert (rec[a:b, 1] == i).all(), rec\n"
        "print('ok')\n")
    env = dict(os.environ, NNX_SPIN_US="0", NNX_CACHE_DIR=os.environ.get("NNX_CACHE_DIR", ""))
    if not env["NNX_CACHE_DIR"]:
        env.pop("NNX_CACHE_DIR")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@needs_pool
@pytest.mark.parametrize("threads", ["2", "3"])
def test_without_the_pool_library_tasks_run_on_python_threads(monkeypatch, rng, threads):
    """The fallback (the pool failed to build) runs the same chunks: same bits."""
    from nnx.nn import Conv2d
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setenv("NNX_NUM_THREADS", threads)
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    conv = Conv2d(3, 5, 3, padding=1)
    x = rng.standard_normal((7, 3, 6, 5)).astype(np.float32)
    y_pool = conv(x)
    conv.backward(rng.standard_normal(y_pool.shape).astype(np.float32))
    calls = []
    real = cpu_parallel.parallel_chunks

    def spy(n, fn, min_items=1):
        calls.append(cpu_parallel.chunks_for(n, min_items))
        return real(n, fn, min_items)

    monkeypatch.setattr(native, "pool", lambda: None)
    monkeypatch.setattr(cpu_tasks, "parallel_chunks", spy)
    y_py = conv(x)
    assert calls == [int(threads)]
    # exact: each image is computed by the same C code whichever thread runs its chunk
    np.testing.assert_array_equal(y_py, y_pool)


@needs_pool
def test_pack_takes_arrays_none_and_integers():
    a = np.zeros(3, np.float32)
    v = cpu_tasks.pack(a, None, 5, np.int64(-2), True)
    assert v.dtype == np.int64 and list(v[1:]) == [0, 5, -2, 1]
    assert v[0] == a.ctypes.data


@needs_pool
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (1, 2, 0), (2, 3, 1)])
def test_strided_input_gradient_is_the_same_for_any_thread_count(rng, monkeypatch, kernel,
                                                                 stride, padding):
    """The phases of a strided convolution's dL/dx are scattered by C tasks over the images
    (zeroing first where no phase reaches): every element is one copy, so 1, 2 and 3 threads
    give the same bits, and the result matches the NumPy (im2col) path."""
    from nnx.backend import cpu_direct
    monkeypatch.setenv("NNX_CPU_KERNELS", "1")
    monkeypatch.setattr(cpu_conv, "_MIN_TASK_ELEMS", 1)
    x = rng.standard_normal((5, 3, 9, 8)).astype(np.float64)
    w = rng.standard_normal((4, 3, kernel, kernel))
    _, xc = cpu_direct.conv2d_forward(x, w, None, (padding, padding), (1, 1), (stride, stride))
    oh = (9 + 2 * padding - kernel) // stride + 1
    ow = (8 + 2 * padding - kernel) // stride + 1
    dy = rng.standard_normal((5, 4, oh, ow))
    got = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NNX_NUM_THREADS", threads)
        got[threads] = cpu_direct.conv2d_backward(xc, w, dy, False, True, (padding, padding),
                                                  (1, 1), (stride, stride))[0]
    np.testing.assert_array_equal(got["2"], got["1"])
    np.testing.assert_array_equal(got["3"], got["1"])
    # reference: scatter dy through every tap in float64
    ref = np.zeros((5, 3, 9 + 2 * padding, 8 + 2 * padding))
    for i in range(kernel):
        for j in range(kernel):
            ref[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += \
                np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    ref = ref[:, :, padding:padding + 9, padding:padding + 8]
    np.testing.assert_allclose(got["1"], ref, rtol=1e-12, atol=1e-12)


@needs_pool
def test_spin_time_can_be_set_and_the_pool_still_works():
    lib = native.pool()
    _probe(4, 2)                                  # the pool has started (spin time read)
    old = lib.nnx_parallel_set_spin_us(0)
    try:
        assert old >= 0
        assert lib.nnx_parallel_set_spin_us(5) == 0
        for _ in range(50):                       # workers sleep between runs now
            rc, rec = _probe(6, 2)
            assert rc == 0 and list(rec[:, 1]) == [0, 0, 0, 1, 1, 1]
    finally:
        lib.nnx_parallel_set_spin_us(old)
