"""infra/: the storage bootstrap against a local S3 (moto), and the deployment files against the code.

Docker and Kubernetes are not available to the tests, so the files are checked for what can drift silently:
YAML that no longer parses, ANODET_* names that are not Settings fields (or values that do not parse),
service names and ports that do not match, CLI commands that do not exist, Dockerfile copies of paths that
moved.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
BOOTSTRAP = INFRA / "bootstrap_storage.py"


def _load_bootstrap():
    spec = importlib.util.spec_from_file_location("anodet_infra_bootstrap_storage", BOOTSTRAP)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _settings_env_names() -> set[str]:
    from anodet_core.config import Settings

    return set(Settings.env_names().values())  # storage_options is not read from the environment


# ------------------------------------------------------------------------------------------ S3 bootstrap

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "ANODET_STORE")


def _s3_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """Exactly what compose gives the containers: endpoint, keys and region as plain AWS variables."""
    env = {k: v for k, v in os.environ.items() if k not in _AWS_VARS}
    env.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
    )
    return env


@pytest.fixture
def s3_env(moto_endpoint, tmp_path, monkeypatch):
    env = _s3_env(moto_endpoint, tmp_path)
    for k in _AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # cached instances would keep an older endpoint
    yield env
    s3fs.S3FileSystem.clear_instance_cache()


def _bucket() -> str:
    return f"anodet-{uuid.uuid4().hex[:12]}"


def _boto(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BOOTSTRAP), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_bootstrap_help():
    r = subprocess.run([sys.executable, str(BOOTSTRAP), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ANODET_STORE" in r.stdout and "--wait" in r.stdout


def test_bootstrap_creates_bucket_from_environment_only(s3_env, moto_endpoint):
    """As the compose one-shot runs it: no flags but --wait, everything from the environment."""
    bucket = _bucket()
    env = dict(s3_env, ANODET_STORE=f"s3://{bucket}/store")
    r = _run(["--wait", "5"], env)
    assert r.returncode == 0, r.stderr
    assert "created" in r.stdout
    client = _boto(moto_endpoint)
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # writes nothing else
    again = _run([], env)
    assert again.returncode == 0, again.stderr
    assert "already there" in again.stdout
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_bootstrapped_store_is_usable_by_the_pipeline(s3_env):
    """The endpoint variable compose sets reaches the pipeline's own fsspec path (Store with no options)."""
    from anodet_core.store.layout import Store

    url = f"s3://{_bucket()}/depots"
    assert _load_bootstrap().main(["--store", url]) == 0
    store = Store(url)
    store.write_text("models/anodfdnet/aliases/production", "1")
    assert store.read_text("models/anodfdnet/aliases/production") == "1"
    assert store.ls("models/anodfdnet/aliases") == ["production"]


def test_bootstrap_local_folder(tmp_path):
    mod = _load_bootstrap()
    target = tmp_path / "a" / "b"
    assert mod.main(["--store", str(target)]) == 0
    assert target.is_dir() and not any(target.iterdir())
    assert mod.ensure_store(str(target)) == "exists"


def test_bootstrap_rejects_bad_bucket_and_reports_unreachable(tmp_path, monkeypatch):
    mod = _load_bootstrap()
    assert mod.main(["--store", "s3://ab/x"]) == 2  # S3 bucket names have >= 3 characters
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _s3_env(f"http://127.0.0.1:{port}", tmp_path)
    r = _run(["--store", f"s3://{_bucket()}/x"], env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "not reachable" in r.stderr


# ------------------------------------------------------------------------------------------ files vs code


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _k8s_docs() -> list[dict]:
    docs = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return docs


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _expand(value: object) -> str:
    """Compose interpolation with the defaults, as `docker compose up` does with nothing set."""
    return _INTERP.sub(lambda m: m.group(2) or "", str(value))


def _service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _expand(v) for k, v in env.items()}


def test_every_infra_yaml_parses():
    files = _yaml_files()
    names = {p.relative_to(INFRA).as_posix() for p in files}
    assert {"compose.yaml", "k8s/kustomization.yaml"} <= names
    for p in files:
        docs = list(yaml.safe_load_all(p.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), p


def test_compose_env_matches_settings(monkeypatch):
    from anodet_core.config import Settings

    known = _settings_env_names()
    services = _compose()["services"]
    for name, svc in services.items():
        unknown = {k for k in _service_env(svc) if k.startswith("ANODET_")} - known
        assert not unknown, f"compose service {name}: {sorted(unknown)} are not anodet_core.config.Settings fields"
    for name in ("anodet-serve", "dask-worker", "bootstrap"):
        env = _service_env(services[name])
        for key in ("ANODET_STORE", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert key in env, f"{name} lacks {key}"
    serve = _service_env(services["anodet-serve"])
    assert _service_env(services["dask-worker"]) == serve == _service_env(services["bootstrap"])
    # the values parse as Settings would read them, and point at services that exist
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k, v in serve.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    assert settings.store.startswith("s3://")
    addr = urlparse(settings.dask_address)
    assert addr.scheme == "tcp" and addr.hostname in services
    assert str(addr.port) in services[addr.hostname]["command"]
    api = urlparse(serve["PREFECT_API_URL"])
    assert api.hostname in services and api.path == "/api"
    assert any(str(p).endswith(f":{api.port}") for p in services[api.hostname]["ports"])
    minio = urlparse(serve["AWS_ENDPOINT_URL_S3"])
    assert minio.hostname in services
    assert serve["AWS_ACCESS_KEY_ID"] == _service_env(services["minio"])["MINIO_ROOT_USER"]
    assert serve["AWS_SECRET_ACCESS_KEY"] == _service_env(services["minio"])["MINIO_ROOT_PASSWORD"]
    gpu = services["dask-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_k8s_matches_settings_and_itself(monkeypatch):
    from anodet_core.config import Settings

    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    for res in listed:
        assert (K8S / res).is_file(), f"kustomization lists missing {res}"
    unlisted = {p.name for p in K8S.glob("*.yaml")} - listed - {"kustomization.yaml"}
    assert all(".example." in n for n in unlisted), f"not in kustomization.yaml: {sorted(unlisted)}"

    docs = _k8s_docs()
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind["ConfigMap"]["anodet-config"]["data"]
    unknown = {k for k in config if k.startswith("ANODET_")} - _settings_env_names()
    assert not unknown, f"configmap: {sorted(unknown)} are not anodet_core.config.Settings fields"
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k, v in config.items():
        monkeypatch.setenv(k, str(v))
    settings = Settings.from_env()  # every value parses
    services = by_kind["Service"]
    for url in (settings.dask_address, config["PREFECT_API_URL"]):
        u = urlparse(url)
        assert u.hostname in services, url
        assert u.port in {p["port"] for p in services[u.hostname]["spec"]["ports"]}, url

    deployments = by_kind["Deployment"]
    assert {"prefect-server", "dask-scheduler", "dask-worker", "anodet-serve"} <= set(deployments)
    for svc in services.values():  # every Service selects some Deployment's pods
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())
    for name, dep in deployments.items():
        spec = dep["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), name
        for c in spec["template"]["spec"]["containers"]:
            assert c["image"] == "anodet", f"{name}: the kustomization's images: entry names `anodet`"
            assert {e["name"] for e in c.get("env", []) if e["name"].startswith("ANODET_")} <= _settings_env_names()
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in by_kind["ConfigMap"]
                if "secretRef" in ref:  # the secret is created by hand from the template
                    assert ref["secretRef"]["name"] == "anodet-s3" and ref["secretRef"].get("optional") is True
    template = yaml.safe_load((K8S / "secret-s3.example.yaml").read_text())
    assert template["kind"] == "Secret" and template["metadata"]["name"] == "anodet-s3"
    assert set(template["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    worker = deployments["dask-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert int(config["ANODET_TORCH_THREADS"]) == int(worker["resources"]["limits"]["cpu"])
    assert (K8S / "dask-worker.yaml").read_text().count("# nvidia.com/gpu: 1") >= 1


def _anodet_commands() -> dict[str, str]:
    """`anodet` subcommands the files run: {where: command}."""
    out: dict[str, str] = {}
    for name, svc in _compose()["services"].items():
        if svc.get("image", "").startswith("anodet:") and "entrypoint" not in svc and svc.get("command"):
            out[f"compose {name}"] = svc["command"][0]
    for d in _k8s_docs():
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                if "command" not in c and c.get("args"):
                    out[f"k8s {d['metadata']['name']}"] = c["args"][0]
    return out


def test_commands_exist():
    from flows.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    used = _anodet_commands()
    assert used.get("compose anodet-serve") == "serve" and used.get("k8s anodet-serve") == "serve"
    for name, svc in _compose()["services"].items():
        ep = svc.get("entrypoint") or []
        if ep[:1] == ["dask"]:
            assert ep[1] in {"scheduler", "worker"}, name
    missing = {where: cmd for where, cmd in used.items() if cmd not in sub.choices}
    assert not missing, f"not anodet subcommands: {missing}"


def test_dockerfile_matches_repository():
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["anodet"]' in lines
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert any("pip install -c constraints.txt ." in ln for ln in lines)

    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "anodet" in pyproject["project"]["scripts"]
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert torch_pin in text, "the CUDA note in the Dockerfile names another torch than pyproject.toml"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    copied = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ")]
    sources = {s for srcs in copied for s in srcs if not s.startswith("--")}
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by Dockerfile.dockerignore"
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= sources, f"packages not copied into the image: {packages - sources}"
    build = _compose()["x-anodet"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (INFRA / "Dockerfile").resolve()


def _dask_config_from_env(env: dict[str, str]) -> dict:
    """What a `dask worker` process started with ``env`` reads as its Dask config (dask's own env parser)."""
    import dask.config

    return dask.config.collect_env({k: v for k, v in env.items() if k.startswith("DASK_")})


def test_external_workers_get_the_local_clusters_worker_setup():
    """compose and k8s workers must run like the LocalCluster's: same Dask config, same malloc/thread env."""
    import dask.config

    from anodet_core.config import Settings
    from flows.runners import WORKER_CONFIG, worker_env

    def get(cfg: dict, dotted: str):
        return dask.config.get(dotted, config=cfg)

    compose_env = _service_env(_compose()["services"]["dask-worker"])
    worker = next(d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "dask-worker")
    k8s_env = {e["name"]: str(e["value"]) for e in worker["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    expected_malloc = {k: v for k, v in worker_env(Settings()).items() if k.startswith("MALLOC_") or k in ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")}
    for name, env in (("compose", compose_env), ("k8s", k8s_env)):
        cfg = _dask_config_from_env(env)
        for key, value in WORKER_CONFIG.items():
            assert get(cfg, key) == value, f"{name}: {key}"
        spawn = {k: str(v) for k, v in get(cfg, "distributed.nanny.pre-spawn-environ").items()}
        assert spawn == expected_malloc, name
