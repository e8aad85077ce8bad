"""The real deployment on one machine: a ``prefect server start`` process, ``anodet serve`` against it, and one run of
the nightly deployment triggered through the API, as the scheduler (or a person in the UI) would trigger it.

Everything started here runs in its own process group and is ended by id: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.store.layout import Store

from helpers import save_lite_production

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ANODET = Path(sys.executable).with_name("anodet")
PREFECT = Path(sys.executable).with_name("prefect")
SPEC = DemoSpec(depot="served", nights=1, trains=1, cars=1, regions=4, width=320, height=200, seed=5)
SERVER_START_S = 90  # cold start is 15-19 s here (shared/STACK.md); more with the test suite's other processes
RUN_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANODET_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="INFO")
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # a file, not a pipe: nobody reads while the test waits
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End ``proc``'s process group (its flow-run and Dask children too): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group's id is the process's
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            # the leader is gone; SIGKILL what is left of its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{_tail(log)}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_S} s:\n{_tail(log)}")


@pytest.fixture
def api(tmp_path) -> Iterator[str]:
    """``prefect server start`` on a free port, with its own PREFECT_HOME (SQLite): its API URL."""
    port = _free_port()
    log = tmp_path / "server.log"
    proc = _start([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  _base_env(tmp_path / "server-home"), log)
    try:
        url = f"http://127.0.0.1:{port}/api"
        _wait_healthy(url, proc, log)
        yield url
    finally:
        _stop(proc)


def test_served_nightly_deployment_runs_a_night_triggered_through_the_api(api, tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    root = str(tmp_path / "store")
    store = Store(root)
    generate_depot(store, SPEC)
    (night,) = store.nights(SPEC.depot)
    save_lite_production(store, threshold=0.9)

    env = _base_env(tmp_path / "serve-home")
    env.update(PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="1", DASK_TEMPORARY_DIRECTORY=str(tmp_path / "dask"),
               ANODET_STORE=root, ANODET_DEPOTS=SPEC.depot, ANODET_TIMEZONE="UTC", ANODET_DEVICE="cpu",
               ANODET_DASK_WORKERS="1", ANODET_TORCH_THREADS="1", ANODET_PREP_PROCESSES="0", ANODET_BATCH_SIZE="2",
               ANODET_TASK_PAIRS="2", ANODET_SINGLE_IMAGE="")
    log = tmp_path / "serve.log"
    serve = _start([str(ANODET), "serve"], env, log)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            name = f"nightly-inspection/nightly-{SPEC.depot}"
            deadline = time.monotonic() + 60
            with get_client(sync_client=True) as client:
                while True:  # `anodet serve` registers its deployments when it starts
                    assert serve.poll() is None, f"anodet serve exited ({serve.returncode}):\n{_tail(log)}"
                    try:
                        deployment = client.read_deployment_by_name(name)
                        break
                    except Exception:  # ObjectNotFound until it is registered
                        assert time.monotonic() < deadline, f"{name} not registered:\n{_tail(log)}"
                        time.sleep(0.5)
                assert deployment.parameters == {"depot": SPEC.depot}
                assert [s.schedule.timezone for s in deployment.schedules] == ["UTC"]
            run = run_deployment(name, parameters={"depot": SPEC.depot, "night": night}, timeout=RUN_S, poll_interval=1)
        assert run.state is not None and run.state.is_completed(), f"{run.state}:\n{_tail(log)}"
        assert run.parameters == {"depot": SPEC.depot, "night": night}
    finally:
        _stop(serve)

    caps = store.read_report("captures")
    manifest = store.read_manifest(SPEC.depot, night)
    assert sorted(caps.capture_id) == sorted(manifest.capture_id)  # every manifest row once
    assert set(caps.night) == {night} and set(caps.depot) == {SPEC.depot}
    assert set(caps.run_id) == {str(run.id)}  # written by the run the API started
    print(f"served night in {time.monotonic() - t0:.1f} s after the server was healthy")
