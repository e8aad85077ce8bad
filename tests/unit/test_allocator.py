"""glibc keeps freed memory for torch's large buffers: in this process (mallopt) and in Dask workers (environment)."""

import os
import subprocess
import sys

import pytest

from anodet_core.config import Settings
from flows.runners import worker_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# page faults of the last 10 of 20 results of a 64 MiB tensor operation, each freed before the next, on a
# worker-like thread
CHILD = """
import resource, sys, threading
if sys.argv[1] == "mallopt":
    from anodet_core.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
x = torch.ones(16 * 2**20)
faults = []
def work():
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = x * 2  # a fresh 64 MiB result, freed before the next
        del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
th = threading.Thread(target=work)
th.start(); th.join()
print(sum(faults[10:]))  # once the heap holds a few freed blocks that coalesce into one that fits
"""


def _faults(mode: str, env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_are_reused_not_faulted_in_again():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default = _faults("none", {})
    assert default > 9 * pages  # glibc's default: each 64 MiB block is mapped afresh (the case this fixes)
    in_process = _faults("mallopt", {})
    workers = {k: v for k, v in worker_env(Settings()).items() if k.startswith("MALLOC_")}
    spawned = _faults("none", workers)
    assert in_process < 2 * pages, (in_process, default)  # at most one block mapped again, against ten
    assert spawned < 2 * pages, (spawned, default)


RELEASE = """
import sys
from anodet_core.allocator import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
import torch

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024

x = torch.ones(640 * 2**20)  # 2.5 GiB: more than the largest trim threshold mallopt takes (2 GiB)
del x
kept = rss_mib()
release_freed_memory()
print(kept, rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_gives_the_kept_heap_back():
    proc = subprocess.run([sys.executable, "-c", RELEASE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    kept, released = (int(v) for v in proc.stdout.split()[-2:])
    assert kept - released > 2000, (kept, released)  # the freed 2.5 GiB stayed resident until released


def test_bench_compares_the_two_allocators_in_fresh_processes():
    from anodet_core.evaluation.allocator_bench import compare_allocators

    sp = compare_allocators(size=128, batch_size=2, repeats=2, rounds=1)
    assert sp.size == 128 and sp.batch_size == 2
    assert sp.default_pairs_s > 0 and sp.kept_pairs_s > 0
    assert sp.speedup == pytest.approx(sp.kept_pairs_s / sp.default_pairs_s)
    # the default side must really be glibc's defaults: its forward passes fault pages in again, the kept side's fewer
    assert sp.default_faults_per_pair > sp.kept_faults_per_pair
