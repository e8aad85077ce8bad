"""Ctrl-C of ``anodet run-night`` with the ephemeral Prefect API server: a terminal's SIGINT to the whole process group.

Before the server ran in a session of its own (flows.api_server) the signal ended it with the CLI, which then
retried its dead API for over a minute and exited with status 1.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.store import publish
from anodet_core.store.layout import Store

from helpers import save_lite_production

pytestmark = [pytest.mark.slow, pytest.mark.fault("ctrl_c_during_night")]

SPEC = DemoSpec(depot="ic", nights=2, trains=1, cars=1, regions=6, width=320, height=200, anomaly_rate=0.5, seed=3)
ANODET = str(Path(sys.executable).with_name("anodet"))


def _descendants(proc: psutil.Process) -> set[psutil.Process]:
    try:
        return set(proc.children(recursive=True))
    except psutil.Error:
        return set()


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def test_ctrl_c_of_run_night_exits_130_promptly_leaves_no_process_and_no_half_night(tmp_path):
    root = str(tmp_path / "store")
    store = Store(root)
    generate_depot(store, SPEC)
    night = store.nights(SPEC.depot)[-1]
    save_lite_production(store, threshold=0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANODET_") and k != "PREFECT_API_URL"}  # ephemeral mode
    # one pair per task: the night is still scoring when the signal comes
    env.update(ANODET_STORE=root, ANODET_BATCH_SIZE="1", ANODET_TASK_PAIRS="1", ANODET_DASK_WORKERS="1",
               ANODET_PREP_PROCESSES="0", ANODET_SINGLE_IMAGE="", PREFECT_HOME=str(tmp_path / "prefect"))
    cmd = [ANODET, "run-night", "--depot", SPEC.depot, "--night", night]

    # its own process group, as a terminal's foreground job; the night has started once its generation's maps exist
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    cli = psutil.Process(proc.pid)
    seen: set[psutil.Process] = set()
    maps = Path(store.path(store.maps_generations_rel(SPEC.depot, night)))
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and not (maps.is_dir() and any(maps.iterdir())):
            seen |= _descendants(cli)
            time.sleep(0.05)
        time.sleep(1.0)  # into the scoring of the batches
        seen |= _descendants(cli)
        assert proc.poll() is None, "run-night ended before it could be interrupted"
        assert any("uvicorn" in _cmd(p) for p in seen), "no ephemeral API server seen"
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        out, err = proc.communicate(timeout=60)
        wall = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(list(seen), timeout=5)  # what was started under the CLI ends with it
    left = [_cmd(p) for p in alive]
    for p in alive:
        p.kill()
    assert proc.returncode == 130, err[-3000:]
    assert wall < 20, f"{wall:.1f} s from the signal to the exit"
    assert not alive, left

    commit = publish.read_commit(store, SPEC.depot, night)
    caps = store.read_report("captures")
    manifest = sorted(store.read_manifest(SPEC.depot, night).capture_id)
    if commit is None:  # interrupted before the publish: nothing of the night is visible
        assert f"interrupted: depot {SPEC.depot} night {night} not published" in err, err[-3000:]
        assert "rerun" in err
        assert caps.empty or (caps.night != night).all()
    else:  # after it: the night is complete
        assert f"interrupted after depot {SPEC.depot} night {night} was published" in err, err[-3000:]
        assert sorted(caps[caps.night == night].capture_id) == manifest
    print(f"exit {wall:.1f} s after the signal; published: {commit is not None}")

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = publish.read_commit(store, SPEC.depot, night)
    assert again is not None and (commit is None or again.generation != commit.generation)
    caps = store.read_report("captures")
    assert sorted(caps[caps.night == night].capture_id) == manifest  # each capture exactly once
