"""glibc's default allocator against the kept heap (:mod:`anodet_core.allocator`), side by side.

Each side runs in its own fresh process (the allocator's settings hold for a whole process and arenas, once made,
stay), the two alternating round by round so that a busy neighbour slows both alike. The workload is a forward
pass of the shipped base architecture (random init: speed does not depend on the weights) in fp32 at an input
side, like a fine-tune's validation or a night's inference at that side.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

_PROBE = "from anodet_core.evaluation.allocator_bench import probe; probe({keep}, {size}, {batch}, {repeats})"


@dataclass
class AllocatorSpeed:
    """Pairs/s, page faults and kernel CPU seconds per pair of each side, summed over the rounds."""

    size: int
    batch_size: int
    default_pairs_s: float
    kept_pairs_s: float
    default_faults_per_pair: float
    kept_faults_per_pair: float
    default_sys_s_per_pair: float
    kept_sys_s_per_pair: float

    @property
    def speedup(self) -> float:
        """Kept over default throughput (> 1: keeping freed memory is faster)."""
        return self.kept_pairs_s / self.default_pairs_s


def probe(keep: bool, size: int, batch: int, repeats: int) -> None:
    """In a fresh process: one warm-up and ``repeats`` timed forward passes; prints one JSON line."""
    if keep:
        from ..allocator import keep_freed_memory

        keep_freed_memory()
    import torch

    from ..models import create_model, model_info

    torch.manual_seed(0)
    field = model_info("anodfdnet").size_field
    model = create_model("anodfdnet", preset="base", pretrained=False, **({field: size} if field else {})).eval()
    cur, his = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    with torch.inference_mode():
        model(cur, his)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(repeats):
            model(cur, his)
        wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "pairs": batch * repeats, "faults": r1.ru_minflt - r0.ru_minflt,
                      "sys": r1.ru_stime - r0.ru_stime}))


def compare_allocators(size: int = 896, batch_size: int = 4, repeats: int = 3, rounds: int = 2) -> AllocatorSpeed:
    """Throughput with glibc's defaults and with the kept heap, ``rounds`` fresh processes each, alternating."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    sums = {side: {"wall": 0.0, "pairs": 0, "faults": 0, "sys": 0.0} for side in ("default", "kept")}
    for _ in range(rounds):
        for side in ("default", "kept"):
            code = _PROBE.format(keep=side == "kept", size=size, batch=batch_size, repeats=repeats)
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise RuntimeError(f"allocator probe ({side}) failed: {proc.stderr.strip()[-2000:]}")
            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                sums[side][k] += v
    d, k = sums["default"], sums["kept"]
    return AllocatorSpeed(size, batch_size, d["pairs"] / d["wall"], k["pairs"] / k["wall"], d["faults"] / d["pairs"],
                          k["faults"] / k["pairs"], d["sys"] / d["pairs"], k["sys"] / k["pairs"])
