"""A night on an external Dask cluster, as deployed: `dask scheduler` and two `dask worker` processes (nannies).

One worker offers ``GPU=1`` and ANODET_INFERENCE_RESOURCES=GPU=1 restricts the score-batch tasks to it. The night
runs in its own process (as `anodet run-night` would), so its ephemeral Prefect API is gone when the workers are
stopped, as in a deployment whose flow runs come and go while the workers stay.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle  # type: ignore[import-untyped]
import pytest
import torch

from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SPEC = DemoSpec(depot="dist", nights=2, trains=1, cars=1, regions=4, width=320, height=200, anomaly_rate=0.5, seed=5)
NANNY_WAIT_S = 8.0  # `dask worker` closes its nanny with timeout=10 on SIGTERM: the worker is killed after 0.8 of it

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the probes below run in the workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANODET_", "PREFECT_", "DASK_"))}
    tmp.mkdir(parents=True, exist_ok=True)
    return {**env, "PREFECT_HOME": str(tmp / "prefect"), "DASK_TEMPORARY_DIRECTORY": str(tmp / "dask"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            **extra}


def _count_loads() -> None:
    """In a worker: count the model loads of anodet_core.night.batch, per model ref."""
    from anodet_core.night import batch

    counts: dict[str, int] = {}
    original = batch.load

    def counting(store, model_ref, device):
        counts[model_ref] = counts.get(model_ref, 0) + 1
        return original(store, model_ref, device)

    batch.load = counting  # type: ignore[assignment]
    batch.LOAD_COUNTS = counts  # type: ignore[attr-defined]


def _worker_state() -> dict:
    """In a worker: model loads, cached models, and its preparation helpers (alive processes per pool)."""
    import multiprocessing

    from anodet_core.night import batch, prep_pool

    pools = {n: (None if p is None else sum(proc.is_alive() for proc in p._executor._processes.values()))
             for n, p in prep_pool._POOLS.items()}
    return {"loads": dict(batch.LOAD_COUNTS), "models": [k[1] for k in batch._MODELS],  # type: ignore[attr-defined]
            "pools": pools, "daemon": multiprocessing.current_process().daemon}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Scheduler + workers "cpu" and "gpu" (``--resources GPU=1``) with the documented worker configuration."""
    tmp = tmp_path_factory.mktemp("cluster")
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def start(name: str, *args: str) -> None:
        logs[name] = tmp / f"{name}.log"
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen([str(BIN / "dask"), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                           env=_env(tmp / name, DASK_DISTRIBUTED__WORKER__DAEMON="False"))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard",
              "--dashboard-address", "127.0.0.1:0")
        for name, extra in [("cpu", []), ("gpu", ["--resources", "GPU=1"])]:
            start(name, "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                  "--host", "127.0.0.1", "--local-directory", str(tmp / name / "local"), *extra)
        yield address, procs, logs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_a_night_on_an_external_cluster(cluster, tmp_path):
    from distributed import Client

    address, procs, logs = cluster
    root = tmp_path / "store"
    store = Store(str(root))
    generate_depot(store, SPEC)
    torch.manual_seed(0)
    card = model_store.save_version(store, create_model("anodfdnet", preset="lite", depth=1),
                                    ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite", config={"depth": 1},
                                              threshold=0.5))
    model_store.set_alias(store, "anodfdnet", card.version)
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=90)
        client.run(_count_loads)
        start = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.get_task_stream_index())
        # both nights in one process that then exits, its ephemeral API server with it; task_pairs=2: several
        # score-batch tasks a night, which two idle workers would share without the restriction
        night_env = _env(tmp_path / "flow", ANODET_STORE=str(root), ANODET_DASK_ADDRESS=address,
                         ANODET_INFERENCE_RESOURCES="GPU=1", ANODET_THRESHOLD="0.9", ANODET_BATCH_SIZE="2",
                         ANODET_TASK_PAIRS="2", ANODET_TORCH_THREADS="1", ANODET_PREP_PROCESSES="1",
                         PREFECT_LOGGING_LEVEL="WARNING")
        code = ("import sys\nfrom anodet_core.config import Settings\nfrom flows.nightly import run_night\n"
                "for night in sys.argv[2:]:\n    print(run_night(Settings.from_env(), sys.argv[1], night).n_captures)\n")
        nights = store.nights(SPEC.depot)
        run = subprocess.run([sys.executable, "-c", code, SPEC.depot, *nights], cwd=REPO, env=night_env,
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.split() == [str(len(store.read_manifest(SPEC.depot, n))) for n in nights]

        workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
        stream = client.run_on_scheduler(lambda dask_scheduler, i=start: dask_scheduler.get_task_stream(start_index=i))
        ran = {(t["key"] if isinstance(t["key"], str) else str(t["key"]), t["worker"]) for t in stream}
        batches = {worker for key, worker in ran if "score" in key and "batch" in key}
        assert batches == {workers["gpu"]}, ran
        n_batches = sum("score" in key and "batch" in key for key, _ in ran)
        assert n_batches >= 2 * len(nights), ran  # ceil(captures / task_pairs) per night

        state = client.run(_worker_state)
        gpu, cpu = state[workers["gpu"]], state[workers["cpu"]]
        assert gpu["loads"] == {"anodfdnet:1": 1} and gpu["models"] == ["anodfdnet:1"], gpu  # once, for both nights
        assert cpu["loads"] == {} and cpu["models"] == [], cpu
        assert not gpu["daemon"] and gpu["pools"] == {1: 1}, gpu  # its preparation helper runs
    caps = store.read_report("captures")
    assert set(caps.night) == set(nights) and (caps.model_version[caps.status == "ok"] == "1").all()

    # SIGTERM, as Kubernetes and compose stop a worker: each worker process ends inside the nanny's wait
    stopped = {}
    for name in ("gpu", "cpu"):
        t0 = time.monotonic()
        procs[name].send_signal(signal.SIGTERM)
        procs[name].wait(30)
        stopped[name] = time.monotonic() - t0, logs[name].read_text(errors="replace")
    for name, (elapsed, text) in stopped.items():
        assert elapsed < NANNY_WAIT_S and "still alive after" not in text, f"{name}: {elapsed:.1f} s\n{text}"
        # Prefect's services talking to the run's API, gone with the flow process (a Dask heartbeat cut short by
        # the close may log a traceback of its own: not ours)
        for bad in ("Still processing items", "EventsWorker", "APILogWorker", "ConnectError", "Connection refused",
                    "cannot start"):
            assert bad not in text, f"{name}: {bad!r} in its log\n{text}"
