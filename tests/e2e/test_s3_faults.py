"""Storage faults on S3: a real moto server behind a fault-injecting reverse proxy of this test's own.

s3fs reaches the proxy through ``AWS_ENDPOINT_URL_S3`` alone, as every process of a deployment does (the Dask
workers inherit it). The proxy answers 503 (SlowDown, ServiceUnavailable) or drops the connection for a seeded
share of the requests, keeps failing chosen keys, or breaks a body off; the store must retry what is transient
exactly as configured (:mod:`anodet_core.store.s3`), say "not found" for a missing object, stop the run for a
missing bucket, and report a capture it still cannot read as ``io_error`` while the rest of its night is scored.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store import s3
from anodet_core.store.layout import Store
from flows.cli import main
from flows.nightly import run_night  # imports Prefect here, not under capsys: its log handlers keep the stream they found

SCORED = {"ok", "registration_failed", "no_history"}
_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


# ------------------------------------------------------------------------------------------ the proxy

_S3_ERRORS = {"slowdown": ("SlowDown", "Please reduce your request rate."),
              "unavailable": ("ServiceUnavailable", "Service is unable to handle request.")}
_RANDOM_FAULTS = ("slowdown", "unavailable", "drop")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "expect"})


class FaultProxy(ThreadingHTTPServer):
    """A reverse proxy on 127.0.0.1 in front of an S3 endpoint, injecting the faults S3 clients must survive.

    A request is forwarded unless a fault is chosen for it: for a ``rate`` of the requests, a 503 SlowDown, a
    503 ServiceUnavailable or a connection dropped before the answer, chosen from a hash of the seed, the request
    line less its bucket and how often it was seen: the same requests get the same faults in any thread order and
    in any bucket (names that differ between runs, a night's generation, draw differently);
    every GET of a key in ``failing`` gets 503 SlowDown; the first GET of a key in ``breaking``
    gets half its body, then the connection is dropped. Keys are paths as the proxy sees them: ``/bucket/key``.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream: str, seed: int = 0) -> None:
        url = urlsplit(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self.seed = seed
        self._lock = threading.Lock()
        self.reset()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def endpoint(self) -> str:
        """The proxy's URL, for ``AWS_ENDPOINT_URL_S3``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset(self, rate: float = 0.0, failing: frozenset[str] = frozenset(), breaking: frozenset[str] = frozenset()) -> None:
        """New faults, counters from zero."""
        with self._lock:
            self.rate, self.failing, self.breaking = rate, failing, breaking
            self.counts: Counter[str] = Counter()  # "requests", "injected" and one count per fault kind
            self.hits: Counter[str] = Counter()  # "METHOD /bucket/key" -> requests
            self._seen: Counter[str] = Counter()
            self._broken: set[str] = set()

    def choose(self, method: str, target: str) -> str | None:
        """The fault for this request (None: forward it), counted."""
        key = target.split("?", 1)[0]
        bucket = target[1:].split("/", 1)[0].split("?", 1)[0]
        line = f"{method} {target[1 + len(bucket):]}"  # less the bucket: each test makes a fresh one
        with self._lock:
            n = self._seen[line]
            self._seen[line] += 1
            self.counts["requests"] += 1
            self.hits[f"{method} {key}"] += 1
            fault: str | None = None
            if method == "GET" and key in self.failing:
                fault = "slowdown"  # the answer s3fs's own loop would retry too, were it not off
            elif method == "GET" and key in self.breaking and key not in self._broken:
                self._broken.add(key)
                fault = "break"
            elif self.rate:
                digest = hashlib.sha256(f"{self.seed}|{line}|{n}".encode()).digest()
                if int.from_bytes(digest[:8], "big") / 2**64 < self.rate:
                    fault = _RANDOM_FAULTS[digest[8] % len(_RANDOM_FAULTS)]
            if fault:
                self.counts[fault] += 1
                self.counts["injected"] += 1
            return fault

    def requests_for(self, key: str) -> int:
        """Requests for ``key`` (``/bucket/key``), any method."""
        with self._lock:
            return sum(n for line, n in self.hits.items() if line.split(" ", 1)[1] == key)

    def forward(self, method: str, target: str, headers: dict[str, str],
                body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """The upstream's answer to one request: status, reason, headers, body."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: dropped connections are the point."""


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients pool their connections
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """Quiet."""

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _handle(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # botocore sends Content-Length here
            self.send_error(501, "chunked request bodies are not proxied")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.choose(self.command, self.path)
        if fault == "drop":
            self._drop()
            return
        if fault in _S3_ERRORS:
            code, message = _S3_ERRORS[fault]
            xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        status, reason, resp_headers, data = self.server.forward(self.command, self.path, headers, body)
        self.send_response(status, reason)
        for k, v in resp_headers:
            # a HEAD answer's Content-Length is the object's size: kept; other bodies were read whole
            if k.lower() not in _HOP_BY_HOP and (self.command == "HEAD" or k.lower() != "content-length"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "break":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def proxy(moto_endpoint):
    """The fault proxy in front of the module's moto server (no faults until a test asks for them)."""
    server = FaultProxy(moto_endpoint, seed=20261122)
    thread = threading.Thread(target=server.serve_forever, name="s3-fault-proxy", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _boto(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


@pytest.fixture
def store_url(proxy, moto_endpoint, tmp_path, monkeypatch):
    """``s3://<fresh bucket>/store``, reached through the proxy: endpoint, keys and region from the environment only."""
    import s3fs

    proxy.reset()
    for k in _AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    s3fs.S3FileSystem.clear_instance_cache()  # cached instances would keep an older endpoint
    bucket = f"anodet-{uuid.uuid4().hex[:12]}"
    _boto(moto_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/store"
    s3fs.S3FileSystem.clear_instance_cache()


def _key(url: str) -> str:
    """The proxy's key (``/bucket/key``) of an ``s3://`` URL."""
    return "/" + url.split("://", 1)[1]


def _depot(store: Store, spec: DemoSpec) -> str:
    """A demo night and a production paired model (the classical difference baseline: fast, deterministic)."""
    generate_depot(store, spec, workers=1)
    card = model_store.save_version(store, create_model("classical_diff"),
                                    ModelCard(name="cdiff", arch="classical_diff", preset="default", threshold=0.5))
    model_store.set_alias(store, "cdiff", card.version)
    (night,) = store.nights(spec.depot)
    return night


# ------------------------------------------------------------------------------------------ retry settings


def test_retry_defaults_merge_under_the_users_options(store_url, monkeypatch):
    defaults = {"mode": "standard", "total_max_attempts": s3.DEFAULT_ATTEMPTS}
    assert s3.fs_options(store_url, None) == {"config_kwargs": {"retries": defaults}}
    fs = Store(store_url).fs
    assert fs.config_kwargs["retries"] == defaults and fs.retries == 1  # s3fs's own loop: one attempt
    mine = {"config_kwargs": {"retries": {"max_attempts": 1}, "read_timeout": 30}, "use_ssl": False}
    assert s3.fs_options(store_url, mine) == {"config_kwargs": {"retries": {"mode": "standard", "max_attempts": 1},
                                                                "read_timeout": 30}, "use_ssl": False}
    assert mine["config_kwargs"]["retries"] == {"max_attempts": 1}  # not changed in place
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert s3.fs_options(store_url, None) == {"config_kwargs": {"retries": {}}}  # botocore reads the variables
    assert s3.fs_options("/data/store", {"auto_mkdir": True}) == {"auto_mkdir": True}


@pytest.mark.fault("s3_read_keeps_failing")
def test_a_read_that_keeps_failing_is_tried_exactly_the_configured_times(store_url, proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    store = Store(store_url)
    store.write_bytes("captures/a.jpg", b"jpeg")
    url = store.url("captures/a.jpg")
    proxy.reset(failing=frozenset({_key(url)}))
    with pytest.raises(OSError) as exc:
        store.read_bytes("captures/a.jpg")
    assert not isinstance(exc.value, FileNotFoundError)
    assert proxy.hits[f"GET {_key(url)}"] == 3  # botocore's attempts, not multiplied by s3fs's loop


@pytest.mark.fault("s3_body_break")
def test_a_body_that_breaks_off_is_fetched_again(store_url, proxy):
    store = Store(store_url)
    data = bytes(range(256)) * 64
    store.write_bytes("captures/b.jpg", data)
    url = store.url("captures/b.jpg")
    proxy.reset(breaking=frozenset({_key(url)}))
    assert store.read_bytes("captures/b.jpg") == data
    assert proxy.counts["break"] == 1 and proxy.hits[f"GET {_key(url)}"] == 2


# ------------------------------------------------------------------------------------------ missing things


@pytest.mark.fault("s3_missing_object")
def test_a_missing_object_is_not_found_and_named(store_url, proxy):
    store = Store(store_url)
    store.write_bytes("captures/d/2026-01-01/there.jpg", b"x")
    url = store.url("captures/d/2026-01-01/nope.jpg")
    with pytest.raises(FileNotFoundError, match="not found") as exc:
        store.read_bytes("captures/d/2026-01-01/nope.jpg")
    assert url in str(exc.value) and exc.value.filename == url
    assert proxy.requests_for(_key(url)) == 1  # a 404 is not retried


@pytest.mark.fault("s3_missing_bucket")
def test_a_missing_bucket_stops_the_run_with_a_clear_error(store_url, moto_endpoint, capsys):
    missing = f"s3://anodet-missing-{uuid.uuid4().hex[:8]}/store"
    with pytest.raises(s3.BucketNotFound, match=r"bucket 'anodet-missing-\w+' of store s3://\S+ does not exist") as exc:
        Store(missing).read_manifest("d", "2026-01-01")
    assert not isinstance(exc.value, OSError)  # no per-capture OSError handler turns it into a status
    assert main(["run-night", "--store", missing, "--depot", "d", "--night", "2026-01-01"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "manifest" not in err
    # a bucket that disappears while a store is in use: the same error, from the read
    store = Store(store_url)
    store.write_bytes("captures/c.jpg", b"x")
    bucket = store_url.split("/")[2]
    client = _boto(moto_endpoint)
    client.delete_object(Bucket=bucket, Key="store/captures/c.jpg")
    client.delete_bucket(Bucket=bucket)
    with pytest.raises(s3.BucketNotFound, match=f"bucket '{bucket}' does not exist"):
        store.read_bytes("captures/c.jpg")


# ------------------------------------------------------------------------------------------ nights


def _night_rows(store: Store, depot: str, night: str, settings: Settings):
    """What the nightly flow does, without Prefect and Dask (plan, batches, reports): the capture rows."""
    from anodet_core.night.batch import process_batch
    from anodet_core.night.plan import split_jobs
    from tasks.inspection import plan_night_task

    plan = plan_night_task.fn(store, depot, night, settings, "run-1")
    settings = settings.with_(threshold=plan.threshold, min_finding_area=plan.min_finding_area)
    rows = []
    for batch in split_jobs(plan.jobs, settings.task_pairs):
        rows += process_batch(store, depot, night, batch, plan.model_ref, settings, "run-1", plan.single_models).captures
    return rows


@pytest.mark.fault("s3_read_keeps_failing")
def test_a_capture_that_cannot_be_read_is_io_error_and_the_night_goes_on(store_url, proxy, monkeypatch):
    store = Store(store_url)
    spec = DemoSpec(depot="io", nights=1, trains=1, cars=1, regions=6, width=320, height=200, seed=4)
    night = _depot(store, spec)
    manifest = store.read_manifest(spec.depot, night)
    bad = manifest.iloc[2]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # keeps the test short; the default waits ~15 s before giving up
    proxy.reset(failing=frozenset({_key(store.url(bad.uri))}))
    settings = Settings(store=store_url, model="cdiff", device="cpu", prep_processes=0, task_pairs=4)
    rows = {r.capture_id: r for r in _night_rows(Store(store_url), spec.depot, night, settings)}
    assert sorted(rows) == sorted(manifest.capture_id)
    assert rows[bad.capture_id].status == "io_error"
    assert bad.uri in rows[bad.capture_id].error
    assert {r.status for cid, r in rows.items() if cid != bad.capture_id} <= SCORED - {"no_history"}
    assert proxy.hits[f"GET {_key(store.url(bad.uri))}"] == 2


def _report(store: Store, depot: str, night: str):
    caps = store.read_report("captures")
    return caps[(caps.depot == depot) & (caps.night.astype(str) == night)]


@pytest.mark.slow
@pytest.mark.fault("s3_transient")
def test_a_whole_night_survives_transient_s3_faults(store_url, proxy, prefect_harness, monkeypatch):
    """The flow (Prefect, a Dask LocalCluster) through the proxy: once clean, once with 20 % of requests faulted."""
    store = Store(store_url)
    spec = DemoSpec(depot="faults", nights=1, trains=1, cars=3, regions=10, width=320, height=200, seed=7)
    night = _depot(store, spec)
    manifest = store.read_manifest(spec.depot, night)
    # enough retries: a request faulted 10 times running, at 20 %, is one in ten million
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    monkeypatch.setenv("ANODET_TASK_PAIRS", "10")
    settings = Settings(store=store_url, model="cdiff", device="cpu", dask_workers=1)
    walls, reports, counts = {}, {}, {}
    for name, rate in (("clean", 0.0), ("faults", 0.2)):
        proxy.reset(rate=rate)
        t0 = time.perf_counter()
        run_night(settings, spec.depot, night)
        walls[name] = time.perf_counter() - t0
        counts[name] = dict(proxy.counts)
        proxy.reset()
        reports[name] = _report(Store(store_url), spec.depot, night).set_index("capture_id")
    print(f"\nS3 night of {len(manifest)} captures through the fault proxy: clean {walls['clean']:.1f} s "
          f"({counts['clean']['requests']} requests), with faults {walls['faults']:.1f} s "
          f"({counts['faults'].get('injected', 0)} of {counts['faults']['requests']} requests faulted: "
          f"{ {k: v for k, v in counts['faults'].items() if k in _RANDOM_FAULTS} })")
    assert counts["clean"].get("injected", 0) == 0
    assert counts["faults"]["injected"] >= 0.10 * counts["faults"]["requests"]
    assert all(counts["faults"].get(kind, 0) > 0 for kind in _RANDOM_FAULTS)
    for rep in reports.values():
        assert len(rep) == len(manifest) and rep.index.is_unique
        assert sorted(rep.index) == sorted(manifest.capture_id)
        assert set(rep.status) <= SCORED, rep.status.value_counts()
    clean, faulted = reports["clean"], reports["faults"].loc[reports["clean"].index]
    assert (faulted.status == clean.status).all()
    assert faulted.score_max.equals(clean.score_max)  # the faults changed nothing that was scored
