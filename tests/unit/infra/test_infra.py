"""infra/: the storage bootstrap against a local S3 (moto), and the deployment files against the code.

Docker and Kubernetes are not available to the tests, so the files are checked for what can drift silently:
YAML that no longer parses, ANODET_* names that are not Settings fields (or values that do not parse),
service names and ports that do not match, CLI commands that do not exist, Dockerfile copies of paths that
moved.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
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

    return set(Settings.env_names().values())


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
    json_patches = {(INFRA / "overlays" / "gpu" / n).resolve() for n in ("dask-worker-gpu.yaml", "train-job-gpu.yaml")}  # RFC 6902 ops
    for p in files:
        docs = list(yaml.safe_load_all(p.read_text()))
        if p.resolve() in json_patches:
            assert len(docs) == 1 and docs[0] and all(isinstance(op, dict) and {"op", "path"} <= set(op)
                                                      for op in docs[0]), p
            continue
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
    cluster = _dask_cluster()
    operator_pods = _operator_pods(cluster)
    services = {**by_kind["Service"], **_operator_services(cluster)}  # + the scheduler Service the operator creates
    for url in (settings.dask_address, config["PREFECT_API_URL"]):
        u = urlparse(url)
        assert u.hostname in services, url
        assert u.port in {p["port"] for p in services[u.hostname]["spec"]["ports"]}, url

    deployments = by_kind["Deployment"]
    assert {"prefect-server", "anodet-serve"} <= set(deployments)
    templates = [*(d["spec"]["template"] for d in [*deployments.values(), *by_kind["StatefulSet"].values()]),
                 *operator_pods.values()]
    for svc in services.values():  # every Service selects some Deployment's, StatefulSet's or operator's pods
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= t["metadata"]["labels"].items() for t in templates), svc
    for name, dep in deployments.items():
        spec = dep["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), name
    for name, pod_template in [*((n, d["spec"]["template"]) for n, d in deployments.items()), *operator_pods.items()]:
        for c in pod_template["spec"]["containers"]:
            assert c["image"] == "anodet", f"{name}: the kustomization's images: entry names `anodet`"
            assert {e["name"] for e in c.get("env", []) if e["name"].startswith("ANODET_")} <= _settings_env_names()
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in by_kind["ConfigMap"]
                if "secretRef" in ref:  # created by hand from a template, and required
                    assert ref["secretRef"]["name"] in {"anodet-s3", "prefect-auth"}, name
                    assert not ref["secretRef"].get("optional"), f"{name}: {ref['secretRef']['name']} is optional"
    template = yaml.safe_load((K8S / "secret-s3.example.yaml").read_text())
    assert template["kind"] == "Secret" and template["metadata"]["name"] == "anodet-s3"
    assert set(template["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    worker = operator_pods["dask-worker"]["spec"]["containers"][0]
    assert int(config["ANODET_TORCH_THREADS"]) == int(worker["resources"]["limits"]["cpu"])
    assert "nvidia.com/gpu" not in str(worker["resources"]), "the base stays CPU: GPUs come from infra/overlays/gpu"


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
        for argv in _k8s_anodet_argvs(d).values():
            out[f"k8s {d['metadata']['name']}"] = argv[0]
    return out


def _k8s_anodet_argvs(doc: dict) -> dict[str, list[str]]:
    """{container: its ``anodet`` arguments} of a workload whose command replaces the image's ENTRYPOINT with
    ``tini -- anodet ...`` (the Jobs), or that passes ``args`` to it (the ENTRYPOINT is ``tini -- anodet``)."""
    out = {}
    for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if c.get("command", [])[:3] == ["tini", "--", "anodet"]:
            out[c["name"]] = c["command"][3:] + c.get("args", [])
        elif "command" not in c and c.get("args") and c.get("image") == "anodet":
            out[c["name"]] = list(c["args"])
    return out


def _parse_anodet(argv: list[str]):
    """``argv`` parsed by the CLI's own parser; a flag it does not have fails the test (argparse exits)."""
    from flows.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`anodet {' '.join(argv)}` is not a valid command line (argparse exit {exc.code})") from None


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
    assert used.get("k8s anodet-train") == "train"
    for d in _k8s_docs():  # every flag too, not only the subcommand
        for argv in _k8s_anodet_argvs(d).values():
            _parse_anodet(argv)


def test_parse_helper_refuses_a_flag_the_cli_lacks():
    assert _parse_anodet(["train", "--depot", "d", "--max-minutes", "5"]).max_minutes == 5
    with pytest.raises(AssertionError, match="not a valid command line"):
        _parse_anodet(["train", "--depot", "d", "--minutes", "5"])


def test_train_job_is_a_suspended_locked_down_job_of_the_training_cli(monkeypatch):
    """`anodet train` runs as its own Job (never inside anodet-serve); applying the base starts nothing."""
    from anodet_core.config import Settings

    kinds = _by_kind()
    job = kinds["Job"]["anodet-train"]
    assert job["spec"]["suspend"] is True, "a Job runs at once when applied: keep it suspended in the base"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "anodet"
    argv = _k8s_anodet_argvs(job)[c["name"]]
    args = _parse_anodet(argv)
    assert args.func.__name__ == "cmd_train" and args.depot and args.max_minutes > 0
    assert not getattr(args, "normal_dir", None)  # the paired model the nightly flow uses
    assert args.depot in str(kinds["ConfigMap"]["anodet-config"]["data"]["ANODET_DEPOTS"]).split(",")
    refs = c["envFrom"]
    assert {"configMapRef": {"name": "anodet-config"}} in refs
    assert {"secretRef": {"name": "anodet-s3"}} in refs  # the store's keys, required (no optional: true)
    assert {e["name"] for e in c.get("env", []) if e["name"].startswith("ANODET_")} <= _settings_env_names()
    assert "nvidia.com/gpu" not in str(job), "the base stays CPU: the GPU comes from infra/overlays/gpu"
    # the settings the pod gets parse, and the store is the one the serving process and the workers use
    config = kinds["ConfigMap"]["anodet-config"]["data"]
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k, v in config.items():
        monkeypatch.setenv(k, str(v))
    assert Settings.from_env().store == config["ANODET_STORE"]
    serve = kinds["Deployment"]["anodet-serve"]["spec"]["template"]["spec"]["containers"][0]
    assert {r["secretRef"]["name"] for r in serve["envFrom"] if "secretRef" in r} >= {"anodet-s3"}


def test_dockerfile_matches_repository():
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["tini", "--", "anodet"]' in lines  # an init process as PID 1
    assert any("apt-get install" in ln and " tini" in ln for ln in lines)
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
    worker = _operator_pods(_dask_cluster())["dask-worker"]
    k8s_env = {e["name"]: str(e["value"]) for e in worker["spec"]["containers"][0].get("env", [])}
    expected_malloc = {k: v for k, v in worker_env(Settings()).items() if k.startswith("MALLOC_") or k in ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")}
    for name, env in (("compose", compose_env), ("k8s", k8s_env)):
        cfg = _dask_config_from_env(env)
        for key, value in WORKER_CONFIG.items():
            assert get(cfg, key) == value, f"{name}: {key}"
        spawn = {k: str(v) for k, v in get(cfg, "distributed.nanny.pre-spawn-environ").items()}
        assert spawn == expected_malloc, name


# ------------------------------------------------------------------------------------------ hardening

OVERLAY = INFRA / "overlays" / "gpu"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PLACEHOLDER = "sha256:<digest>"  # the project image's digest, filled in by whoever pushes it (kustomization.yaml)


def _by_kind() -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for d in _k8s_docs():
        if d["kind"] != "Secret":  # the *.example.yaml templates
            out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


DASK_API = "kubernetes.dask.org/v1"  # the Dask Kubernetes operator's resources (dask-kubernetes 2025.x CRDs)


def _dask_cluster(docs: list[dict] | None = None) -> dict:
    """The one DaskCluster of ``docs`` (default: the base's files)."""
    clusters = [d for d in (_k8s_docs() if docs is None else docs) if d["kind"] == "DaskCluster"]
    assert len(clusters) == 1, f"{len(clusters)} DaskClusters"
    assert clusters[0]["apiVersion"] == DASK_API
    return clusters[0]


def _operator_pods(cluster: dict) -> dict[str, dict]:
    """{"dask-scheduler" | "dask-worker": pod template} as the Dask operator makes them from ``cluster``.

    Labels as dask-kubernetes' controller sets them (controller.py, build_scheduler_deployment_spec and
    build_worker_deployment_spec): the DaskCluster's labels, then ``spec.<scheduler|worker>.metadata.labels``, then
    its own ``dask.org/*`` labels, which override both. The pod spec is ``spec.<scheduler|worker>.spec`` as is.
    """
    name = cluster["metadata"]["name"]
    out = {}
    for part in ("scheduler", "worker"):
        sub = cluster["spec"][part]
        labels = {**cluster["metadata"].get("labels", {}), **sub.get("metadata", {}).get("labels", {}),
                  "dask.org/cluster-name": name, "dask.org/component": part}
        if part == "worker":
            labels["dask.org/workergroup-name"] = f"{name}-default"
        out[f"dask-{part}"] = {"metadata": {"labels": labels}, "spec": sub["spec"]}
    return out


def _operator_services(cluster: dict) -> dict[str, dict]:
    """The Service the operator makes from ``spec.scheduler.service`` (a ServiceSpec as is): ``<name>-scheduler``."""
    name = f"{cluster['metadata']['name']}-scheduler"
    return {name: {"metadata": {"name": name}, "spec": cluster["spec"]["scheduler"]["service"]}}


def _workloads() -> dict[str, dict]:
    """{name: pod template spec} of every Deployment, StatefulSet and Job of the base, and of the operator's pods."""
    kinds = _by_kind()
    out = {name: d["spec"]["template"] for kind in ("Deployment", "StatefulSet", "Job")
           for name, d in kinds.get(kind, {}).items()}
    for cluster in kinds.get("DaskCluster", {}).values():
        clash = set(out) & {"dask-scheduler", "dask-worker"}
        assert not clash, f"workloads named like the operator's Dask pods: {sorted(clash)}"
        out.update(_operator_pods(cluster))
    return out


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_every_pod_is_locked_down_and_probed():
    workloads = _workloads()
    assert {"prefect-server", "prefect-postgres", "dask-scheduler", "dask-worker", "anodet-serve",
            "bootstrap-storage"} <= set(workloads)
    jobs = set(_by_kind().get("Job", {}))
    claims = {name: {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
              for name, d in _by_kind().get("StatefulSet", {}).items()}
    for name, template in workloads.items():
        pod = template["spec"]
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, name
        assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        mounts_ok = {v["name"] for v in pod.get("volumes", [])} | claims.get(name, set())
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            assert not sc.get("privileged"), f"{name}/{c['name']}"
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounts_ok, name
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, f"{name}: a read-only root needs /tmp"
            if c["image"] == "anodet":  # tini as PID 1: the image's ENTRYPOINT, or first in a command replacing it
                assert "command" not in c or c["command"][:2] == ["tini", "--"], f"{name}: {c.get('command')}"
            for ref in c.get("envFrom", []):
                assert not ref.get("secretRef", {}).get("optional"), f"{name}: optional secret"
            for e in c.get("env", []):
                key_ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert not (key_ref or {}).get("optional"), f"{name}: {e['name']} from an optional secret"
            if name in jobs:
                continue
            assert "livenessProbe" in c, f"{name}: no liveness probe"
            assert "readinessProbe" in c or "startupProbe" in c, f"{name}: no readiness/startup probe"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(kind)
                if probe and "httpGet" in probe:
                    assert probe["httpGet"]["port"] in ports, f"{name} {kind}: port is not a container port"
                if probe and "exec" in probe:
                    assert probe["exec"]["command"], name


def test_dask_and_prefect_probes_hit_real_health_endpoints():
    workloads = _workloads()

    def container(name: str) -> dict:
        return workloads[name]["spec"]["containers"][0]

    for name, port in (("dask-scheduler", 8787), ("dask-worker", 8788)):  # the operator's pods (DaskCluster)
        c = container(name)
        for kind in ("livenessProbe", "readinessProbe"):
            probe = c[kind]["httpGet"]
            assert probe["path"] == "/health", f"{name} {kind}"
            http = next(p["containerPort"] for p in c["ports"] if p["name"] == probe["port"])
            assert http == port, f"{name} {kind}"
            assert _flag(c["command"], "--dashboard-address") == f":{http}", name  # the HTTP server listens there
    server = container("prefect-server")
    assert server["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert server["readinessProbe"]["httpGet"]["path"] in {"/api/health", "/api/ready"}
    # anodet-serve: Prefect's runner health server (503 once the runner stops polling), local to the pod
    serve = container("anodet-serve")
    env = {e["name"]: e.get("value") for e in serve["env"]}
    assert env["PREFECT_RUNNER_SERVER_ENABLE"] == "true" and env["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    probe = " ".join(serve["livenessProbe"]["exec"]["command"])
    assert f"http://127.0.0.1:{env['PREFECT_RUNNER_SERVER_PORT']}/health" in probe
    from prefect.runner.server import perform_health_check  # the route the probe reads exists in this Prefect

    assert callable(perform_health_check)


def test_prefect_settings_names_are_the_installed_prefects(monkeypatch):
    """The variables the files set are settings of the installed Prefect (server auth, client auth, DB, runner)."""
    from prefect.settings import Settings as PrefectSettings

    for k in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "u:server")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "u:client")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect:pw@prefect-postgres:5432/prefect")
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_ENABLE", "true")
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_PORT", "8080")
    monkeypatch.setenv("PREFECT_RUNNER_SERVER_MISSED_POLLS_TOLERANCE", "30")
    s = PrefectSettings()
    assert s.server.api.auth_string.get_secret_value() == "u:server"
    assert s.api.auth_string.get_secret_value() == "u:client"
    assert s.server.database.connection_url.get_secret_value().startswith("postgresql+asyncpg://")
    assert s.runner.server.enable is True and s.runner.server.host == "127.0.0.1"
    assert s.runner.server.port == 8080 and s.runner.server.missed_polls_tolerance == 30


def test_prefect_auth_and_postgres_secrets_are_required_refs():
    import importlib.util as ilu

    from sqlalchemy.engine import make_url

    workloads = _workloads()
    templates = {d["metadata"]["name"]: d for p in K8S.glob("secret-*.example.yaml")
                 for d in yaml.safe_load_all(p.read_text()) if d}
    assert {"anodet-s3", "prefect-postgres", "prefect-auth"} <= set(templates)

    def secret_env(name: str) -> dict[str, dict]:
        c = workloads[name]["spec"]["containers"][0]
        return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}

    def secret_refs(name: str) -> set[str]:
        c = workloads[name]["spec"]["containers"][0]
        return {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}

    server = secret_env("prefect-server")
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"]["name"] == "prefect-postgres"
    assert server["PREFECT_SERVER_API_AUTH_STRING"]["name"] == "prefect-auth"
    assert secret_env("prefect-postgres")["POSTGRES_PASSWORD"]["name"] == "prefect-postgres"
    for ref in [*server.values(), *secret_env("prefect-postgres").values()]:
        assert ref["key"] in templates[ref["name"]]["stringData"] and not ref.get("optional"), ref
    for name in ("anodet-serve", "dask-worker"):  # the Prefect clients: flow process and tasks on the workers
        assert {"anodet-s3", "prefect-auth"} <= secret_refs(name), name
    assert "PREFECT_API_AUTH_STRING" in templates["prefect-auth"]["stringData"]
    assert "anodet-s3" in secret_refs("bootstrap-storage")
    # the URL in the template points at the Postgres Service, user and database as the StatefulSet creates them
    url = make_url(templates["prefect-postgres"]["stringData"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    pg = workloads["prefect-postgres"]["spec"]["containers"][0]
    pg_env = {e["name"]: e.get("value") for e in pg["env"]}
    service = _by_kind()["Service"]["prefect-postgres"]
    assert url.drivername == "postgresql+asyncpg" and ilu.find_spec("asyncpg") is not None
    assert url.host == "prefect-postgres" and url.port in {p["port"] for p in service["spec"]["ports"]}
    assert url.username == pg_env["POSTGRES_USER"] and url.database == pg_env["POSTGRES_DB"]
    # no SQLite volume left on the server; compose keeps SQLite unless compose.postgres.yaml is added
    assert not _by_kind().get("PersistentVolumeClaim")
    override = yaml.safe_load((INFRA / "compose.postgres.yaml").read_text())["services"]
    compose_url = make_url(_service_env(override["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    pg_compose = _service_env(override["postgres"])
    assert compose_url.host == "postgres" and compose_url.password == pg_compose["POSTGRES_PASSWORD"]
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in _service_env(_compose()["services"]["prefect-server"])


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


# the Dask operator's controller pods: namespace of the README's `helm install -n dask-operator`, pod label
# app.kubernetes.io/name = the chart's name (dask-kubernetes-operator helm chart, _helpers.tpl selectorLabels)
_OPERATOR_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dask-operator"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "dask-kubernetes-operator"}}}


def test_networkpolicy_selects_the_operators_dask_pods():
    """The Dask policies select the pods by the labels the operator gives them, and nothing else."""
    policies = _by_kind()["NetworkPolicy"]
    cluster = _dask_cluster()
    pods = _operator_pods(cluster)
    labels = {name: t["metadata"]["labels"] for name, t in _workloads().items()}
    for policy, component in (("dask-scheduler", "scheduler"), ("dask-worker", "worker")):
        selector = policies[policy]["spec"]["podSelector"]
        assert selector == {"matchLabels": {"dask.org/cluster-name": cluster["metadata"]["name"],
                                            "dask.org/component": component}}, policy
        assert {w for w, lab in labels.items() if _selects(selector, lab)} == {f"dask-{component}"}, policy
    for pol in policies.values():  # no selector that matches no pod (labels that drifted from the operator's)
        assert any(_selects(pol["spec"]["podSelector"], lab) for lab in labels.values()), pol["metadata"]["name"]
        rules = [*pol["spec"].get("ingress", []), *pol["spec"].get("egress", [])]
        for peer in [p for r in rules for p in r.get("from", []) + r.get("to", [])]:
            if "namespaceSelector" in peer:
                assert peer == _OPERATOR_PEER, f"{pol['metadata']['name']}: {peer}"
            elif "podSelector" in peer:
                assert any(_selects(peer["podSelector"], lab) for lab in labels.values()), peer
    # the operator's own labels are on the pods, whatever the DaskCluster's metadata says
    assert pods["dask-worker"]["metadata"]["labels"]["dask.org/component"] == "worker"


def test_networkpolicy_lets_only_the_flow_process_and_workers_reach_dask():
    kinds = _by_kind()
    policies = list(kinds["NetworkPolicy"].values())
    workloads = _workloads()
    labels = {name: t["metadata"]["labels"] for name, t in workloads.items()}

    def policies_for(name: str) -> list[dict]:
        return [p for p in policies if _selects(p["spec"]["podSelector"], labels[name])]

    def ingress_sources(name: str, port: int) -> set[str]:
        """Workloads some policy lets in on ``port`` (k8s: allowed iff any selecting policy allows)."""
        allowed = set()
        for pol in policies_for(name):
            for rule in pol["spec"].get("ingress", []):
                assert rule.get("from"), f"{pol['metadata']['name']}: an ingress rule open to every source"
                if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                    continue
                for peer in rule["from"]:
                    if peer == _OPERATOR_PEER:  # another namespace: the operator's controller
                        allowed.add("dask-operator")
                        continue
                    assert set(peer) == {"podSelector"}, f"{pol['metadata']['name']}: {peer}"
                    allowed |= {w for w, lab in labels.items() if _selects(peer["podSelector"], lab)}
        return allowed

    for name in ("dask-scheduler", "dask-worker", "anodet-serve", "prefect-postgres"):
        pols = policies_for(name)
        assert pols and any("Ingress" in p["spec"]["policyTypes"] for p in pols), f"no policy selects {name}"
    scheduler = workloads["dask-scheduler"]["spec"]["containers"][0]["command"]
    worker = workloads["dask-worker"]["spec"]["containers"][0]["command"]
    assert _flag(scheduler, "--port") == "8786"
    assert ingress_sources("dask-scheduler", 8786) == {"anodet-serve", "dask-worker", "dask-operator"}
    # Dask's HTTP API (/api/v1/adaptive_target, retire_workers: no auth) for the operator only; probes come from the node
    assert _flag(scheduler, "--dashboard-address") == ":8787"
    assert ingress_sources("dask-scheduler", 8787) == {"dask-operator"}
    for flag in ("--worker-port", "--nanny-port"):
        assert ingress_sources("dask-worker", int(_flag(worker, flag))) == {"dask-scheduler", "dask-worker"}, flag
    assert ingress_sources("dask-worker", 4200) == set()  # nothing else reaches a worker
    assert ingress_sources("anodet-serve", 8080) == set()
    assert ingress_sources("prefect-postgres", 5432) == {"prefect-server"}
    # the workers may connect to the scheduler, the Prefect API and the object store
    egress = [r for p in policies_for("dask-worker") for r in p["spec"].get("egress", [])]

    def egress_to(target: str, port: int) -> bool:
        for r in egress:
            if "ports" in r and port not in {p["port"] for p in r["ports"]}:
                continue
            if "to" not in r or any(_selects(peer.get("podSelector", {"matchExpressions": [1]}), labels[target])
                                    for peer in r["to"]):
                return True
        return False

    assert egress_to("dask-scheduler", 8786) and egress_to("prefect-server", 4200)
    assert any("to" not in r and 443 in {p["port"] for p in r["ports"]} for r in egress)  # S3 (address unknown)


def _kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def test_images_are_pinned_by_digest():
    """No image floats by tag: k8s images by digest through kustomize `images:`, compose images by digest."""
    kust = _kustomization(K8S)
    entries = {e["name"]: e for e in kust["images"]}
    used = {c["image"] for t in _workloads().values() for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])}
    assert used <= set(entries), f"images without a kustomization entry: {used - set(entries)}"
    for name in used:
        assert "@" not in name and ":" not in name, f"{name}: pin it in kustomization.yaml images:, not in place"
        digest = entries[name].get("digest", "")
        if name == "anodet":  # the project image: its digest exists once it is pushed (README, kustomization.yaml)
            assert digest == _PLACEHOLDER or _DIGEST.match(digest), digest
        else:
            assert _DIGEST.match(digest), f"{name}: {digest!r}"
    for path in (INFRA / "compose.yaml", INFRA / "compose.postgres.yaml"):
        for svc_name, svc in yaml.safe_load(path.read_text())["services"].items():
            image = svc.get("image")
            if image is None or "build" in svc:  # built here from infra/Dockerfile
                continue
            ref, _, digest = image.partition("@")
            assert _DIGEST.match(digest), f"{path.name} {svc_name}: {image} is not pinned by digest"
    minio = _compose()["services"]["minio"]["image"]
    assert minio.startswith("quay.io/minio/minio:"), "Docker Hub's minio/minio is no longer updated"
    assert _compose()["x-anodet"].get("init") is True


def _json_patch(doc: dict, ops: list[dict]) -> None:
    """Apply RFC 6902 ``add`` ops (the only op the overlay uses) to ``doc`` in place, as kustomize does: the parent
    must exist, ``-`` appends to a list, ``~1``/``~0`` in a path are ``/``/``~``."""
    for op in ops:
        assert op["op"] == "add" and set(op) == {"op", "path", "value"}, op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: object = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        else:
            assert isinstance(node, dict), op["path"]
            node[last] = copy.deepcopy(op["value"])


def _overlay(base: dict[str, dict[str, dict]], kust: dict, folder: Path) -> dict[str, list[dict]]:
    """Apply the ``patches`` of ``kust`` to ``base`` (by kind, by name) in place; returns {kind: patch bodies}."""
    bodies: dict[str, list[dict]] = {}
    for patch in kust["patches"]:
        target = patch["target"]
        doc = base[target["kind"]][target["name"]]
        assert doc["apiVersion"] == "/".join(p for p in (target.get("group"), target["version"]) if p), target
        body = yaml.safe_load((folder / patch["path"]).read_text() if "path" in patch else patch["patch"])
        if isinstance(body, list):
            _json_patch(doc, body)
        else:  # a strategic merge patch: kustomize merges lists of custom resources as a whole, so built-ins only
            assert target["kind"] in {"ConfigMap", "Deployment", "StatefulSet", "Job"}, f"merge patch of {target}"
            assert (body["kind"], body["metadata"]["name"]) == (target["kind"], target["name"])
            assert set(body) <= {"apiVersion", "kind", "metadata", "data"}, "only ConfigMap data is merged here"
            doc.setdefault("data", {}).update(body.get("data", {}))
        bodies.setdefault(target["kind"], []).append(body)
    return bodies


def test_gpu_overlay_patches_what_the_base_has(monkeypatch):
    """Without kustomize: the overlay's patches applied to a copy of the base give GPU workers, CPU control pods."""
    from anodet_core.config import Settings

    kust = _kustomization(OVERLAY)
    assert kust["kind"] == "Kustomization"
    assert [(OVERLAY / r).resolve() for r in kust["resources"]] == [K8S.resolve()]
    assert K8S.resolve() not in OVERLAY.resolve().parents  # kustomize refuses an overlay inside its base
    base = _by_kind()
    unpatched = copy.deepcopy(base)
    bodies = _overlay(base, kust, OVERLAY)
    # the worker patch targets the operator's resource (a custom resource: group, version and kind named)
    dask_targets = [p["target"] for p in kust["patches"] if p["target"]["kind"] in {"DaskCluster", "DaskWorkerGroup"}]
    assert dask_targets, "no patch targets the DaskCluster / a DaskWorkerGroup"
    for target in dask_targets:
        assert (target["group"], target["version"]) == tuple(DASK_API.split("/")), target
    assert not any(p["target"]["kind"] == "Deployment" and "dask" in p["target"]["name"] for p in kust["patches"])
    # the autoscaler scales the default worker group only: GPU workers are the DaskCluster's spec.worker
    cluster = base["DaskCluster"][_dask_cluster()["metadata"]["name"]]
    assert {t["kind"] for t in dask_targets} == {"DaskCluster"}
    pods = _operator_pods(cluster)
    worker = pods["dask-worker"]
    pod = worker["spec"]
    gpu = pod["containers"][0]
    assert len(pod["containers"]) == 1 and gpu["image"] == "anodet"  # patched in place, not replaced
    command = gpu["command"]
    assert command[:2] == ["tini", "--"] and command[2:4] == ["dask", "worker"]
    assert _flag(command, "--resources") == "GPU=1" and _flag(command, "--nworkers") == "1"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    base_worker = _operator_pods(unpatched["DaskCluster"][cluster["metadata"]["name"]])["dask-worker"]["spec"]
    for key in ("cpu", "memory"):  # the base's CPU and memory stay
        assert gpu["resources"]["limits"][key] == base_worker["containers"][0]["resources"]["limits"][key]
    assert gpu["securityContext"] == base_worker["containers"][0]["securityContext"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
                                       for t in pod["tolerations"])
    spread = pod["topologySpreadConstraints"][0]
    assert _selects(spread["labelSelector"], worker["metadata"]["labels"])
    assert not _selects(spread["labelSelector"], pods["dask-scheduler"]["metadata"]["labels"])
    # the scheduler (and every other pod) stays off the GPU nodes: no toleration, no GPU
    scheduler = pods["dask-scheduler"]["spec"]
    assert "tolerations" not in scheduler and "nvidia.com/gpu" not in str(scheduler)
    assert base["DaskAutoscaler"] == unpatched["DaskAutoscaler"]  # the same autoscaling, now of GPU workers
    # `anodet train` on a GPU node: the Job asks for one GPU, goes where the GPU workers go, and stays suspended
    job = base["Job"]["anodet-train"]
    assert job["spec"]["suspend"] is True
    train_pod = job["spec"]["template"]["spec"]
    (train,) = train_pod["containers"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == train["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert train_pod["nodeSelector"] == pod["nodeSelector"] and train_pod["tolerations"] == pod["tolerations"]
    base_train = unpatched["Job"]["anodet-train"]["spec"]["template"]["spec"]["containers"][0]
    for key in ("cpu", "memory"):
        assert train["resources"]["limits"][key] == base_train["resources"]["limits"][key]
    assert train["securityContext"] == base_train["securityContext"] and train["envFrom"] == base_train["envFrom"]
    train_args = _parse_anodet(_k8s_anodet_argvs(job)["anodet-train"])
    assert train_args.func.__name__ == "cmd_train" and train_args.device == "cuda"
    assert _parse_anodet(_k8s_anodet_argvs(unpatched["Job"]["anodet-train"])["anodet-train"]).device is None
    assert base["Job"]["bootstrap-storage"] == unpatched["Job"]["bootstrap-storage"]  # the bucket Job needs no GPU
    # the flow process asks for what the GPU workers offer; the value parses as Settings reads it
    config = base["ConfigMap"]["anodet-config"]["data"]
    assert set(bodies["ConfigMap"][0]["data"]) <= _settings_env_names()
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k, v in config.items():
        monkeypatch.setenv(k, str(v))
    settings = Settings.from_env()
    assert settings.inference_resources == {"GPU": 1.0}
    assert settings.dask_address == f"tcp://{next(iter(_operator_services(cluster)))}:8786"


def test_json_patch_helper_fails_like_kustomize():
    """The helper the overlay test relies on refuses what kustomize refuses (a missing parent) and escapes ``~1``."""
    doc = {"a": {"b": [1]}}
    _json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 2}, {"op": "add", "path": "/a/x~1y", "value": 3}])
    assert doc == {"a": {"b": [1, 2], "x/y": 3}}
    with pytest.raises(KeyError):
        _json_patch(doc, [{"op": "add", "path": "/a/missing/c", "value": 1}])


def test_dask_runs_on_the_operator(monkeypatch):
    """The base's Dask cluster is the operator's DaskCluster, autoscaled, and the flow process points at its Service."""
    import dask.config
    import distributed
    from distributed.http.scheduler import api

    from anodet_core.config import Settings

    kinds = _by_kind()
    listed = {d["kind"] for r in _kustomization(K8S)["resources"]
              for d in yaml.safe_load_all((K8S / r).read_text()) if d}
    assert {"DaskCluster", "DaskAutoscaler"} <= listed, "the kustomization lists no DaskCluster/DaskAutoscaler"
    cluster = _dask_cluster()
    name = cluster["metadata"]["name"]
    # the operator's name rule (dask_kubernetes/constants.py VALID_CLUSTER_NAME): <name>-scheduler is a DNS label
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(f"{name}-scheduler") <= 63, name
    assert {"scheduler", "worker"} <= set(cluster["spec"]) and cluster["spec"].get("idleTimeout", 0) == 0
    assert {"spec", "service"} <= set(cluster["spec"]["scheduler"]) and "spec" in cluster["spec"]["worker"]
    # no plain Dask Deployment, StatefulSet or Service beside it
    for kind in ("Deployment", "StatefulSet", "Service"):
        plain = [n for n in kinds.get(kind, {}) if "dask" in n]
        assert not plain, f"plain {kind}s left beside the DaskCluster: {plain}"
    for kind in ("Deployment", "StatefulSet", "Job"):
        for d in kinds.get(kind, {}).values():
            for c in d["spec"]["template"]["spec"]["containers"]:
                line = [*c.get("command", []), *c.get("args", [])]
                assert not ({"scheduler", "worker"} & set(line) and "dask" in line), f"{kind} runs Dask: {line}"
    # the autoscaler: this cluster, 0 workers between nights, a ceiling while a night runs
    autoscalers = list(kinds["DaskAutoscaler"].values())
    assert len(autoscalers) == 1 and autoscalers[0]["apiVersion"] == DASK_API
    spec = autoscalers[0]["spec"]
    assert spec["cluster"] == name
    assert isinstance(spec["minimum"], int) and isinstance(spec["maximum"], int)
    assert spec["minimum"] == 0 < spec["maximum"], "workers (and their GPU nodes) must be freed between nights"
    assert cluster["spec"]["worker"]["replicas"] == spec["minimum"]  # re-applying does not start idle workers
    # the scheduler Service the operator creates, the ports it looks up by name, and the flow process's address
    pods = _operator_pods(cluster)
    scheduler = pods["dask-scheduler"]["spec"]["containers"][0]
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    assert _selects({"matchLabels": service["selector"]}, pods["dask-scheduler"]["metadata"]["labels"])
    assert not _selects({"matchLabels": service["selector"]}, pods["dask-worker"]["metadata"]["labels"])
    container_ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    by_name = {p["name"]: p for p in service["ports"]}
    assert len(by_name) == len(service["ports"])
    assert {n: (p["port"], container_ports[p["targetPort"]]) for n, p in by_name.items()} == {
        "tcp-comm": (8786, 8786), "http-dashboard": (8787, 8787)}
    assert _flag(scheduler["command"], "--port") == "8786"
    config = kinds["ConfigMap"]["anodet-config"]["data"]
    assert config["ANODET_DASK_ADDRESS"] == f"tcp://{name}-scheduler:8786"
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k, v in config.items():
        monkeypatch.setenv(k, str(v))
    assert urlparse(Settings.from_env().dask_address).hostname in _operator_services(cluster)
    # the scheduler serves Dask's HTTP API (which the operator asks first) besides the default routes (/health)
    routes = dask.config.get("distributed.scheduler.http.routes",
                             config=_dask_config_from_env({e["name"]: e["value"] for e in scheduler["env"]}))
    defaults = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    assert set(defaults["distributed"]["scheduler"]["http"]["routes"]) <= set(routes)
    assert "distributed.http.scheduler.api" in routes
    assert {"/api/v1/adaptive_target", "/api/v1/retire_workers"} <= {r[0] for r in api.routes}
    # workers: the scheduler address and the name come from the operator (DASK_SCHEDULER_ADDRESS, DASK_WORKER_NAME);
    # the name must be the worker Deployment's, which the operator deletes when the scheduler retires that worker
    worker = pods["dask-worker"]["spec"]["containers"][0]
    assert worker["command"][:4] == ["tini", "--", "dask", "worker"]
    assert _flag(worker["command"], "--name") == "$(DASK_WORKER_NAME)"
    assert _flag(worker["command"], "--nworkers") == "1"  # else dask suffixes the name (-0, -1, ...)
    assert not any(a.startswith(("tcp://", "tls://")) for a in worker["command"])
    assert not {"DASK_SCHEDULER_ADDRESS", "DASK_WORKER_NAME"} & {e["name"] for e in worker.get("env", [])}
    assert dask.config.get("scheduler-address", config=_dask_config_from_env(
        {"DASK_SCHEDULER_ADDRESS": f"tcp://{name}-scheduler.anodet.svc.cluster.local:8786"}))  # what dask worker reads


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("folder", [K8S, OVERLAY], ids=["base", "gpu"])
def test_kustomize_builds(folder):
    """With kubectl: what kustomize really makes of the base and the overlay (test_gpu_overlay_... does it without)."""
    r = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    cluster = _dask_cluster(docs)
    pods = _operator_pods(cluster)
    templates = [d["spec"]["template"] for d in docs if "template" in d.get("spec", {})] + list(pods.values())
    images = [c["image"] for t in templates for c in t["spec"]["containers"]]
    assert images and all("@sha256:" in i for i in images), images  # kustomize's images: reaches the DaskCluster
    assert not [d["metadata"]["name"] for d in docs if d["kind"] in {"Deployment", "Service"} and "dask" in d["metadata"]["name"]]
    autoscaler = next(d for d in docs if d["kind"] == "DaskAutoscaler")
    assert autoscaler["spec"]["cluster"] == cluster["metadata"]["name"] and autoscaler["spec"]["minimum"] == 0
    c = pods["dask-worker"]["spec"]["containers"]
    assert len(c) == 1
    on_gpu = folder == OVERLAY
    assert ("nvidia.com/gpu" in c[0]["resources"]["limits"]) is on_gpu
    assert (c[0]["command"][-2:] == ["--resources", "GPU=1"]) is on_gpu
    assert any(t["key"] == "nvidia.com/gpu" for t in pods["dask-worker"]["spec"].get("tolerations", [])) is on_gpu
    assert "tolerations" not in pods["dask-scheduler"]["spec"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"anodet"}
    # kustomize's labels: reach the DaskCluster's metadata, which the operator copies onto its pods
    assert pods["dask-worker"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "anodet"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "anodet-config")["data"]
    assert config["ANODET_DASK_ADDRESS"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    assert (config.get("ANODET_INFERENCE_RESOURCES") == "GPU=1") is on_gpu
    train = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "anodet-train")
    assert train["spec"]["suspend"] is True
    assert ("nvidia.com/gpu" in train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]) is on_gpu


def test_schedules_are_set_in_both_and_agree(monkeypatch):
    """compose and k8s serve the same schedules, written out (no host-dependent default such as the local zone)."""
    from anodet_core.config import Settings
    from flows.deployments import schedules

    names = {"ANODET_DEPOTS", "ANODET_NIGHTLY_CRON", "ANODET_RETRAIN_CRON", "ANODET_TIMEZONE"}
    compose = _service_env(_compose()["services"]["anodet-serve"])
    config = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "anodet-config")["data"]
    assert names <= set(compose) and names <= set(config)
    assert {k: compose[k] for k in names} == {k: str(config[k]) for k in names}
    for k in [k for k in os.environ if k.startswith("ANODET_")]:
        monkeypatch.delenv(k)
    for k in names:
        monkeypatch.setenv(k, compose[k])
    planned = schedules(Settings.from_env())  # the depots are listed: the store is not read
    assert planned and all(s.timezone == compose["ANODET_TIMEZONE"] for s in planned)
