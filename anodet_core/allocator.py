"""glibc's allocator told to keep freed memory for reuse: torch's CPU tensors come straight from ``malloc``.

By default glibc maps every buffer above its mmap threshold (at most 32 MiB) afresh and unmaps it on free, and
gives freed heap tops back to the kernel: each forward pass then page-faults all its large activations again. On
this project's 2-core VMs that kernel time (page faults and zeroing) was more than half of a 896 px fine-tune's
CPU time, and the base architecture's 896 px forward ran 2.28x faster with the heap kept (``anodet bench
--allocator``; README, performance). Dask worker
processes get the same through environment variables (``flows.runners.worker_env``): glibc reads those once at
start, which is too late for the process that is already running, hence ``mallopt`` here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# -1: never trim the heap top (mallopt(3)); a fine-tune's fp32 validation at 896 px swings the heap by over 2 GiB
# per epoch, and the largest positive value (2 GiB) still had it given back and faulted in again every time
_NO_TRIM = -1

_applied = False


@functools.cache  # once per process: a worker releases memory after every batch
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (musl and other C libraries have none)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory (no mmap for large blocks, no trimming of the heap, one
    arena so that threads share it); True if applied, False where the C library is not glibc. Idempotent.

    The price is that the resident size stays at the process's high-water mark instead of shrinking after a peak
    (:func:`release_freed_memory` gives it back on demand); the peak itself is unchanged.
    """
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM), (_M_ARENA_MAX, 1)))
    _applied = ok
    return ok


def release_freed_memory() -> None:
    """Give the memory this process has freed back to the kernel now (glibc ``malloc_trim``): after a phase whose
    peak the next phase, in other processes, needs the room of (the demo's fine-tune before its Dask workers)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
