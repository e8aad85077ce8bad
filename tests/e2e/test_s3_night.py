"""Whole nights on S3 for real: a moto server process, the nightly flow (Prefect, a Dask LocalCluster), the CLI.

The same demo depot goes into a local folder store and into ``s3://<bucket>/store``; every night runs through
``flows.nightly.run_night`` on both, and the S3 store must hold the same reports, maps and answers as the local
one. s3fs finds the server only through the store's ``storage_options`` (``endpoint_url``): given to
``run_night`` as settings (so they must travel as a flow parameter to the flow and its Dask workers) and to the
CLI as ``ANODET_STORAGE_OPTIONS``. Credentials come from the AWS variables and must appear in no report, Zarr
attribute or Prefect flow-run parameter.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import time
import uuid
from uuid import UUID

import numpy as np
import pandas as pd
import pytest
import torch

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store
from anodet_core.store.maps import open_night_maps, read_map
from flows.cli import main
from flows.nightly import run_night  # imports Prefect here, not under capsys: its log handlers keep the stream they found

pytestmark = pytest.mark.slow

SPEC = DemoSpec(depot="s3n", nights=2, trains=1, cars=1, regions=4, width=320, height=200, anomaly_rate=0.5, seed=3)
SECRET = f"moto-secret-{uuid.uuid4().hex}"  # a value that can be searched for wherever settings may end up
_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
# columns that differ between any two runs of a night: run ids, timings, the generation in the map group's name
_PER_RUN = ("run_id", "processed_at", "t_decode_ms", "t_register_ms", "t_infer_ms", "t_write_ms", "map_uri")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_process(tmp_path_factory):
    """A moto S3 server in its own process on 127.0.0.1: its endpoint URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"moto server exited: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"moto server not listening after 60 s: {log.read_text()}"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _save_model(store: Store) -> None:
    """The random-init lite AnoDFDNet of tests/e2e/test_night_e2e.py as production. It scores ~0.5 everywhere,
    so at the card's 0.9 every scored capture is normal and night 2 takes night 1's captures as histories."""
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite", depth=1)
    card = model_store.save_version(store, model, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite",
                                                            config={"depth": 1}, threshold=0.9))
    model_store.set_alias(store, "anodfdnet", card.version)


@pytest.fixture(scope="module")
def nights(moto_process, tmp_path_factory, prefect_harness):
    """Both stores after every night ran on each: (local, s3, options, bucket, nights, walls, run ids of S3 runs).

    The runs share one LocalCluster (``dask_address``, as a deployment's scheduler): a cluster started and stopped
    per run would cost more than the nights themselves and blur the comparison of the stores.
    """
    import boto3
    import s3fs
    from distributed import Client, LocalCluster

    from flows.runners import local_cluster_kwargs

    mp = pytest.MonkeyPatch()
    for k in _AWS_VARS:
        mp.delenv(k, raising=False)  # no endpoint from the environment: only the store's options name it
    aws = tmp_path_factory.mktemp("aws")
    mp.setenv("AWS_ACCESS_KEY_ID", "anodet-test")
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")  # not client_kwargs: moto refuses the bucket's location then
    mp.setenv("AWS_CONFIG_FILE", str(aws / "no-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "no-credentials"))
    mp.setenv("ANODET_TASK_PAIRS", "3")  # run_night does not pass it: the flow reads it, on both stores alike
    s3fs.S3FileSystem.clear_instance_cache()
    base = Settings(batch_size=2, dask_workers=1, device="cpu")
    cluster = LocalCluster(**local_cluster_kwargs(base))  # after the variables above: its workers inherit them
    try:
        bucket = f"anodet-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=moto_process).create_bucket(Bucket=bucket)
        options = {"endpoint_url": moto_process}
        local, remote = Store(str(tmp_path_factory.mktemp("store"))), Store(f"s3://{bucket}/store", options)
        for st in (local, remote):
            generate_depot(st, SPEC, workers=1)
            _save_model(st)
        night_ids = local.nights(SPEC.depot)
        with Client(cluster) as client:  # the worker's imports (torch...) before the clock starts, for neither store
            client.run(importlib.import_module, "tasks.inspection")
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        for night in night_ids:  # alternating, so that neither store pays alone for what is warmed up first
            for name, st in (("local", local), ("s3", remote)):
                settings = base.with_(store=st.root, storage_options=st.storage_options,
                                      dask_address=cluster.scheduler_address)
                t0 = time.perf_counter()
                run_night(settings, SPEC.depot, night)
                walls[name].append(time.perf_counter() - t0)
        remote = Store(remote.root, options)  # a fresh one: nothing cached from the writes
        run_ids = sorted(set(remote.read_report("captures").run_id))
        yield local, remote, options, bucket, night_ids, walls, run_ids
    finally:
        cluster.close()
        s3fs.S3FileSystem.clear_instance_cache()
        mp.undo()


def _comparable(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    out = df.drop(columns=[c for c in _PER_RUN if c in df.columns])
    out["night"] = out["night"].astype(str)
    return out.sort_values(key).reset_index(drop=True)


def test_the_s3_report_equals_the_local_one(nights):
    local, remote, _, _, night_ids, walls, _ = nights
    n = sum(len(local.read_manifest(SPEC.depot, night)) for night in night_ids)
    print(f"\n{len(night_ids)} nights, {n} captures ({SPEC.width}x{SPEC.height}), nightly flow on one Dask LocalCluster, "
          "wall per night: " + "; ".join(f"{name} {' + '.join(f'{w:.1f}' for w in ws)} = {sum(ws):.1f} s"
                                         for name, ws in (("local folder", walls["local"]), ("moto S3", walls["s3"]))))
    for night in night_ids:
        assert remote.read_manifest(SPEC.depot, night).equals(local.read_manifest(SPEC.depot, night))  # one depot
    key = ["night", "capture_id"]
    got, want = _comparable(remote.read_report("captures"), key), _comparable(local.read_report("captures"), key)
    assert len(want) == n and set(want.night) == set(night_ids)
    # the night chained: night 2 took night 1's captures as histories, read back from each store's own reports
    assert (want[want.night == night_ids[1]].history_source == "capture").any()
    assert want.status.isin(["ok", "registration_failed"]).sum() >= n - 1 and want.score_max.notna().all()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    fkey = ["night", "capture_id", "finding_id"]
    pd.testing.assert_frame_equal(_comparable(remote.read_report("findings"), fkey),
                                  _comparable(local.read_report("findings"), fkey), check_exact=True)


def test_the_maps_are_equal_value_by_value(nights):
    local, remote, _, _, night_ids, _, _ = nights
    caps = local.read_report("captures")
    compared = 0
    for night in night_ids:
        for cid in caps[(caps.night.astype(str) == night) & caps.status.isin(["ok", "registration_failed"])].capture_id:
            a, b = read_map(local, SPEC.depot, night, cid), read_map(remote, SPEC.depot, night, cid)
            assert a.shape == (SPEC.height, SPEC.width) and np.array_equal(a, b), (night, cid)
            compared += 1
    assert compared == len(caps[caps.status.isin(["ok", "registration_failed"])]) > 0


def test_registry_maps_and_reports_live_in_the_bucket(nights):
    import boto3

    _, remote, options, bucket, night_ids, _, _ = nights
    client = boto3.client("s3", endpoint_url=options["endpoint_url"])
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="store/")
            for o in page.get("Contents", [])}
    assert {"store/models/anodfdnet/versions/1/weights.safetensors", "store/models/anodfdnet/versions/1/card.json",
            "store/models/anodfdnet/aliases/production"} <= keys
    assert model_store.get_alias(remote, "anodfdnet") == "1"
    assert model_store.read_card(remote, "anodfdnet", "1").threshold == pytest.approx(0.9)
    for night in night_ids:
        assert any(k.startswith(f"store/maps/{SPEC.depot}/{night}/") and k.endswith("zarr.json") for k in keys)
        assert any(k.startswith(f"store/reports/captures/depot={SPEC.depot}/night={night}/") for k in keys)
        assert f"store/reports/_nights/depot={SPEC.depot}/night={night}.json" in keys


def test_no_credential_in_reports_zarr_attributes_or_flow_run_parameters(nights):
    from prefect.client.orchestration import get_client

    _, remote, options, _, night_ids, _, run_ids = nights
    for table in ("captures", "findings"):
        assert SECRET not in remote.read_report(table).to_csv()
    for night in night_ids:
        assert SECRET not in json.dumps(dict(open_night_maps(remote, SPEC.depot, night).attrs), default=str)
    assert len(run_ids) == len(night_ids)
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            params = client.read_flow_run(UUID(run_id)).parameters
            assert params["storage_options"] == options  # the route the endpoint took to the flow and its workers
            assert SECRET not in json.dumps(params, default=str)


def test_the_cli_query_answers_the_same_on_s3(nights, capsys, monkeypatch):
    local, remote, options, _, _, _, _ = nights
    sql = ("select night, status, decision, history_source, count(*) n, sum(n_findings) f, max(score_max) top "
           "from captures group by all order by all")
    answers = {}
    for name, st in (("local", local), ("s3", remote)):
        # the endpoint the way a deployment gives it: the variable (blank for the local store)
        monkeypatch.setenv("ANODET_STORAGE_OPTIONS", json.dumps(options) if name == "s3" else "")
        assert main(["query", "--store", st.root, "--format", "json", sql]) == 0
        answers[name] = json.loads(capsys.readouterr().out)
    assert answers["s3"] == answers["local"]
    assert sum(r["n"] for r in answers["local"]) == len(local.read_report("captures"))
    monkeypatch.setenv("ANODET_STORAGE_OPTIONS", json.dumps({**options, "secret": SECRET}))
    assert main(["query", "--store", remote.root, sql]) == 2  # refused: credentials do not go into the options
    err = capsys.readouterr().err
    assert "ANODET_STORAGE_OPTIONS" in err and "credentials" in err and SECRET not in err
