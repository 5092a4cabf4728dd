"""The CPU backend keeps freed array memory for reuse (glibc): a step that frees more than
glibc's default trim threshold and allocates it again takes no page faults."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four 16 MiB arrays allocated, written and freed, ten times: with glibc's defaults the 64 MiB
# freed at the heap's top exceed its (dynamic) trim threshold and are returned to the OS, so
# every round faults the pages in again; with the CPU backend's thresholds they stay mapped.
CHILD = """
import resource, sys, numpy as np, nnx
print(nnx.backend.create("cpu").name, end=" ")
from nnx.backend import cpu_memory
def rounds(k):
    for _ in range(k):
        arrays = [np.ones(4 << 20, np.float32) for _ in range(4)]
        del arrays
rounds(2)                                      # warm up: the first touch always faults
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, cpu_memory.describe())
"""


def _faults(malloc):
    env = dict(os.environ, PYTHONPATH=ROOT, NNX_CPU_MALLOC=malloc)
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    name, faults, described = r.stdout.split(" ", 2)
    return int(faults), described


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_memory_is_reused_without_page_faults():
    cached, described = _faults("cache")
    system, described_system = _faults("system")
    assert described.startswith("cache (glibc") and described_system.startswith("system")
    pages = 10 * 4 * (16 << 20) // os.sysconf("SC_PAGE_SIZE")       # every page, every round
    assert cached < pages // 1000, (cached, pages)
    if system < pages // 20:      # the premise: glibc's defaults return the memory (2.36: yes)
        pytest.skip(f"this C library kept the memory by itself ({system} faults)")


def test_bad_setting_is_a_clear_error(monkeypatch):
    from nnx.backend import cpu_memory
    monkeypatch.setenv("NNX_CPU_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="NNX_CPU_MALLOC must be 'cache' or 'system'"):
        cpu_memory._apply()
