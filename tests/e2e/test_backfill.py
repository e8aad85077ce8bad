"""``anodet backfill`` as a real process: killed after its first night, resumed, rerun, forced past a failing night."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.store import publish
from anodet_core.store.layout import Store

from helpers import save_lite_production

pytestmark = pytest.mark.slow

SPEC = DemoSpec(depot="bf", nights=4, trains=1, cars=1, regions=6, width=320, height=200, anomaly_rate=0.5, seed=7)
ANODET = str(Path(sys.executable).with_name("anodet"))


def _env(root: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANODET_")}
    # one pair per task: a night takes long enough to be killed between two publishes
    env.update(ANODET_STORE=root, ANODET_BATCH_SIZE="1", ANODET_TASK_PAIRS="1", ANODET_DASK_WORKERS="1",
               ANODET_PREP_PROCESSES="0", ANODET_SINGLE_IMAGE="", PREFECT_HOME=str(tmp / "prefect"))
    return env


def _backfill(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [ANODET, "backfill", "--depot", SPEC.depot, "--from", "2026-01-01", "--to", "2026-12-31", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _lines(out: str) -> dict[str, str]:
    """night -> its status word, from the progress lines."""
    return {w[0]: w[1] for w in (line.split() for line in out.splitlines()) if len(w) > 1 and w[0][:4].isdigit()}


def _generations(store: Store, nights: list[str]) -> dict[str, str | None]:
    commits = {n: publish.read_commit(store, SPEC.depot, n) for n in nights}
    return {n: c.generation if c else None for n, c in commits.items()}


def _assert_reported_once(store: Store, nights: list[str]) -> None:
    caps = store.read_report("captures")
    for night in nights:
        assert sorted(caps[caps.night == night].capture_id) == sorted(store.read_manifest(SPEC.depot, night).capture_id)
    assert (caps.model_version == "1").all()


def test_backfill_killed_resumes_skips_and_forces(tmp_path):
    root = str(tmp_path / "store")
    store = Store(root)
    generate_depot(store, SPEC)
    nights = store.nights(SPEC.depot)
    save_lite_production(store, threshold=0.5)
    env = _env(root, tmp_path)

    # kill -9 of the whole process group (flow, Prefect server, Dask workers) once the first night is published
    proc = subprocess.Popen([ANODET, "backfill", "--depot", SPEC.depot, "--from", "2026-01-01", "--to", "2026-12-31"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = Path(store.path(store.commit_rel(SPEC.depot, nights[0])))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not first.exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = _generations(store, nights)
    assert before[nights[0]] is not None, "the first night was never published"
    assert before[nights[-1]] is None, "the backfill finished before it could be killed"
    published = [n for n in nights if before[n]]

    t0 = time.perf_counter()
    resumed = _backfill(env)
    wall = time.perf_counter() - t0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _lines(resumed.stdout) == {n: "skipped" if n in published else "done" for n in nights}
    done = _generations(store, nights)
    assert all(done[n] == before[n] for n in published)  # skipped: not republished
    _assert_reported_once(store, nights)
    again = _backfill(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_lines(again.stdout).values()) == {"skipped"} and _generations(store, nights) == done

    # --force redoes nights already reported with this version; one whose manifest broke since is reported
    # failed (its published night stays), and the backfill goes on with the next one, exit status 1
    broken = store.manifest_rel(SPEC.depot, nights[2])
    store.write_bytes(broken, b"not parquet")
    forced = subprocess.run([ANODET, "backfill", "--depot", SPEC.depot, "--from", nights[1], "--to", nights[3], "--force",
                             "--model", "anodfdnet:1"], env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 1, forced.stderr[-3000:]
    assert _lines(forced.stdout) == {nights[1]: "done", nights[2]: "failed", nights[3]: "done"}
    assert "1 failed" in forced.stdout.splitlines()[-1] and nights[2] in forced.stdout.splitlines()[-1]
    regen = _generations(store, nights)
    assert regen[nights[0]] == done[nights[0]] and regen[nights[2]] == done[nights[2]]
    assert regen[nights[1]] != done[nights[1]] and regen[nights[3]] != done[nights[3]]
    _assert_reported_once(store, [n for n in nights if n != nights[2]])
    print(f"resumed backfill of {len(nights) - len(published)} nights: {wall:.1f} s")
