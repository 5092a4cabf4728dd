"""Keep freed array memory in the process for the next training step (glibc only).

A training step allocates and frees the same activation-sized arrays every step.  With its
default heuristics glibc hands large freed blocks back to the operating system (``munmap``
above its mmap threshold, heap trimming above its trim threshold), and the next step faults
every page back in, each one zeroed by the kernel.  Measured on the reference CNN at batch
128 (2 cores): about 2,500 minor page faults and 10 ms of system time in a 16 ms step once
each call's saved state is freed right after its backward.  Raising both thresholds keeps
that memory mapped for reuse, as the caching allocators of GPU frameworks do; the step then
takes no page faults at all (``bench/NOTES.md``).

Process-wide: applied once, when the CPU backend is created.  ``NNX_CPU_MALLOC=system`` (read
then) leaves glibc's settings alone.  Elsewhere (musl, macOS, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# blocks up to 32 MiB (glibc's largest allowed mmap threshold on 64-bit) come from the heap;
# up to 512 MiB of free memory at the heap's top stays mapped
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20

_state: str | None = None


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds once; returns what was done (see describe)."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> str:
    choice = os.environ.get("NNX_CPU_MALLOC", "cache").strip().lower() or "cache"
    if choice not in ("cache", "system"):
        raise ValueError(f"NNX_CPU_MALLOC must be 'cache' or 'system', got {choice!r}")
    if choice == "system":
        return "system (NNX_CPU_MALLOC=system)"
    if platform.libc_ver()[0] != "glibc":
        return "system (not glibc)"
    try:
        libc = ctypes.CDLL(None)
        ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "system (mallopt refused)"
    return f"cache (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB)"


def describe() -> str:
    """One line for benchmark reports."""
    return _state or "not applied (the CPU backend was not created)"
