"""kill -9 of a real ``anodet run-night`` part-way through a rerun: the previous night stays whole and readable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.store import publish
from anodet_core.store.layout import Store
from anodet_core.store.maps import read_map

from helpers import save_lite_production

pytestmark = [pytest.mark.slow, pytest.mark.fault("kill_during_rerun")]

SPEC = DemoSpec(depot="crash", nights=1, trains=1, cars=1, regions=8, width=320, height=200, anomaly_rate=0.5, seed=5)
ANODET = str(Path(sys.executable).with_name("anodet"))
VOLATILE = ["run_id", "processed_at", "t_decode_ms", "t_register_ms", "t_infer_ms", "t_write_ms", "map_uri"]


def _env(root: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANODET_")}
    env.update(ANODET_STORE=root, ANODET_BATCH_SIZE="1", ANODET_TASK_PAIRS="1", ANODET_DASK_WORKERS="1",
               ANODET_PREP_PROCESSES="0", ANODET_SINGLE_IMAGE="", PREFECT_HOME=str(tmp / "prefect"))
    return env


def _state(store: Store, night: str):
    caps = store.read_report("captures").sort_values("capture_id").reset_index(drop=True)
    finds = store.read_report("findings").sort_values(["capture_id", "finding_id"]).reset_index(drop=True)
    scored = caps[caps.status.isin(["ok", "registration_failed"])].capture_id
    maps = {c: read_map(store, SPEC.depot, night, c) for c in scored}
    return caps, finds, maps


def test_kill_during_rerun_keeps_the_previous_night(tmp_path):
    root = str(tmp_path / "store")
    store = Store(root)
    generate_depot(store, SPEC)
    (night,) = store.nights(SPEC.depot)
    save_lite_production(store, threshold=0.5)
    env = _env(root, tmp_path)
    cmd = [ANODET, "run-night", "--depot", SPEC.depot, "--night", night, "--model", "anodfdnet"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    commit = publish.read_commit(store, SPEC.depot, night)
    caps, finds, maps = _state(store, night)
    assert len(caps) == len(store.read_manifest(SPEC.depot, night)) and maps

    # the rerun, killed (the whole process group: flow, Prefect server, Dask workers) once it has written maps
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gens = Path(store.path(store.maps_generations_rel(SPEC.depot, night)))
    deadline = time.monotonic() + 300
    killed_with = 0
    while time.monotonic() < deadline and proc.poll() is None:
        new = [g for g in gens.iterdir() if g.name != Path(commit.maps).name]
        written = sum(1 for g in new for _ in (g / "maps" / "c").glob("*/0/0")) if new else 0
        if written >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_with = written
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_with >= 2, "the rerun finished (or never wrote maps) before it could be killed"
    assert killed_with < len(caps), "the rerun had written every map: not killed part-way"

    # what readers see is exactly the first run: the same commit, rows, findings and maps
    assert publish.read_commit(store, SPEC.depot, night) == commit
    caps2, finds2, maps2 = _state(store, night)
    assert caps2.equals(caps) and finds2.equals(finds)
    assert maps2.keys() == maps.keys() and all(np.array_equal(maps2[c], maps[c]) for c in maps)

    # the next rerun publishes the same content and removes the debris of the killed one
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    new = publish.read_commit(store, SPEC.depot, night)
    assert new.generation != commit.generation and [p.name for p in gens.iterdir()] == [Path(new.maps).name]
    caps3, finds3, maps3 = _state(store, night)
    assert caps3.drop(columns=VOLATILE).equals(caps.drop(columns=VOLATILE))
    assert finds3.drop(columns=["run_id"]).equals(finds.drop(columns=["run_id"]))
    assert all(np.array_equal(maps3[c], maps[c]) for c in maps)
