"""Preparation helper processes (anodet_core.night.prep_pool): the same results as threads, a helper that dies, a helper
whose parent dies, a host that cannot have helpers, and a Dask worker that closes with them."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.models import create_model
from anodet_core.night import prep_pool
from anodet_core.night.batch import prep_processes, process_batch
from anodet_core.night.plan import plan_night
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store
from anodet_core.store.maps import open_night_maps
from anodet_core.store.schemas import row_dict

from helpers import die_on, die_once

SPEC = DemoSpec(depot="prep", nights=1, trains=1, cars=1, regions=6, width=320, height=200, anomaly_rate=0.5, seed=5)


@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("store"))
    store = Store(root)
    generate_depot(store, SPEC)
    torch.manual_seed(0)
    card = model_store.save_version(store, create_model("anodfdnet", preset="lite", depth=1),
                                    ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite", config={"depth": 1}))
    model_store.set_alias(store, "anodfdnet", card.version)
    night = store.nights(SPEC.depot)[0]
    return store, root, night, plan_night(store, SPEC.depot, night, "anodfdnet")


def test_helpers_give_the_rows_and_maps_that_threads_give(small_night):
    store, root, night, plan = small_night
    # one sub-batch of bytes changes after the manifest: a checksum_mismatch row either way (PrepError pickles back)
    broken = plan.jobs[3].capture["uri"]
    original = store.read_bytes(broken)
    store.write_bytes(broken, original[:-50])
    try:
        out = {}
        for n in (2, 0):
            s = Settings(store=root, batch_size=2, prep_processes=n, threshold=0.45)
            assert prep_processes(s) == n
            plan = plan_night(store, SPEC.depot, night, "anodfdnet")  # a fresh, empty map group each time
            res = process_batch(store, SPEC.depot, night, plan.jobs, plan.model_ref, s, "run")
            maps = np.asarray(open_night_maps(store, SPEC.depot, night, rel=plan.maps_rel)["maps"][:])
            out[n] = ({r.capture_id: row_dict(r) for r in res.captures}, maps)
    finally:
        store.write_bytes(broken, original)
    assert prep_pool._POOLS.get(2) is not None  # the helper path really ran
    rows2, maps2 = out[2]
    rows0, maps0 = out[0]
    assert rows2.keys() == rows0.keys() and len(rows2) == len(plan.jobs)
    # timings, and the map group: each plan is a new generation of the night with its own group
    timing = {"t_decode_ms", "t_register_ms", "t_infer_ms", "t_write_ms", "processed_at", "map_uri"}
    for cid, row in rows2.items():
        assert row.keys() == rows0[cid].keys()
        for k in row.keys() - timing:  # registration figures may differ in the last bit between processes
            a, b = row[k], rows0[cid][k]
            assert (a == pytest.approx(b, rel=1e-9, nan_ok=True)) if isinstance(a, float) else a == b, (cid, k, a, b)
    assert sorted(r["status"] for r in rows2.values()).count("checksum_mismatch") == 1
    assert "sha256" in next(r["error"] for r in rows2.values() if r["status"] == "checksum_mismatch")
    assert np.array_equal(maps2, maps0) and maps2.any()


def _alive(pids: list[int]) -> bool:
    """Whether any of these processes still runs (a zombie has ended, only its parent has not reaped it)."""
    return any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_a_helper_that_dies_costs_a_retry_and_twice_an_error(tmp_path):
    pool = prep_pool.PrepPool(1)
    try:
        futs = [pool.submit(die_on, x, 3) for x in range(6)]
        got = [f.result() for f in futs]
        assert got[:3] == [0, 10, 20] and got[4:] == [40, 50]
        assert isinstance(got[3], str) and "died twice" in got[3]
        # a death that does not repeat (memory, say) costs nothing
        assert pool.submit(die_once, 7, str(tmp_path / "marker")).result() == 70
        assert (tmp_path / "marker").exists()
        assert pool.submit(die_on, 1, 3).result() == 10  # and the pool still works
    finally:
        pool.shutdown()


def test_helpers_end_when_their_parent_is_killed():
    code = textwrap.dedent("""
        import os, sys, psutil
        from anodet_core.night.prep_pool import PrepPool
        pool = PrepPool(1)
        print(*[p.pid for p in psutil.Process().children() if "resource_tracker" not in " ".join(p.cmdline())], flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[3]))
    helpers = [int(p) for p in out.stdout.split()]
    assert len(helpers) == 1, out.stderr
    deadline = time.time() + 10
    while time.time() < deadline and _alive(helpers):
        time.sleep(0.2)
    assert not _alive(helpers)


def test_terminating_the_pool_does_not_wait_for_a_busy_helper():
    pool = prep_pool.PrepPool(1)
    busy = pool.submit(time.sleep, 120)
    deadline = time.time() + 60
    while not busy._future.running() and time.time() < deadline:
        time.sleep(0.1)
    helpers = list(pool._executor._processes)
    time.sleep(1.0)  # the helper has taken the sleep off its queue: a plain shutdown would wait 120 s for it
    t0 = time.perf_counter()
    pool.shutdown(terminate=True)
    assert time.perf_counter() - t0 < 20
    assert len(helpers) == 1 and not psutil.pid_exists(helpers[0])


def test_a_daemonic_process_prepares_in_threads():
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_pool_in_daemon, args=(q,), daemon=True)
    p.start()
    assert q.get(timeout=120) is None
    p.join(30)


def _pool_in_daemon(q) -> None:
    q.put(prep_pool.get_prep_pool(1))


@pytest.mark.slow
def test_a_dask_worker_closes_promptly_with_its_helpers():
    from distributed import Client, LocalCluster

    from flows.runners import local_cluster_kwargs

    with LocalCluster(**local_cluster_kwargs(Settings())) as cluster, Client(cluster) as client:
        helpers = client.submit(_start_helpers, pure=False).result()
        assert len(helpers) == 2
        t0 = time.perf_counter()
        client.close()
        cluster.close()
        closed_in = time.perf_counter() - t0
    assert closed_in < 3.5  # the nanny kills a worker that takes 4 s
    time.sleep(1.0)
    assert not _alive(helpers)


def _start_helpers() -> list[int]:
    assert prep_pool.get_prep_pool(2) is not None
    return [c.pid for c in psutil.Process().children() if "resource_tracker" not in " ".join(c.cmdline())]
