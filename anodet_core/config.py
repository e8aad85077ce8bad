"""Runtime settings: environment variables ``ANODET_*`` with defaults that run on a laptop.

CLI flags override these; everything else reads a :class:`Settings` instead of ``os.environ``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .config_schedules import Cron, Depots, Timezone
from .text import printable

__all__ = ["SINGLE_IMAGE_ARCHS", "InvalidSetting", "Settings", "available_cores", "local_timezone", "resolve_device"]

ENV_PREFIX = "ANODET_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
# storage option names holding a credential, besides names ending in "key" (key, account_key, SSECustomerKey)
_SECRET_WORDS = ("secret", "token", "passw", "credential")

# The registered single-image architectures, spelled out so that reading the settings imports no model code
# (tests check them against the model registry, anodet_core.models.single_image_models()).
SingleImageArch = Literal["anovit", "csaflow", "padim", "patchcore"]
SINGLE_IMAGE_ARCHS: tuple[str, ...] = get_args(SingleImageArch)


class InvalidSetting(ValueError):
    """A setting's value does not parse or is not one of its choices; the message names ``ANODET_<FIELD>``."""


# ------------------------------------------------------------------ parsing: environment text as it always was


def _parse_bool(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError(f"not a boolean: use one of {sorted(_TRUE | _FALSE)}")
    return word in _TRUE


def _parse_int(value: Any) -> Any:
    # Python's int(): "8.5", "-1.0" and "" are errors (pydantic's lax mode would take "-1.0")
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError("not an integer") from None


def _parse_float(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError("not a number") from None


def _parse_optional_int(value: Any) -> Any:
    # an empty (or blank) variable means "not set": the model card's value applies
    return None if isinstance(value, str) and not value.strip() else _parse_int(value)


def _parse_optional_float(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else _parse_float(value)


def _parse_prefixes(value: Any) -> Any:
    # comma-separated (URLs are not JSON-decoded: NoDecode); blanks between commas are dropped
    if not isinstance(value, str):
        return value
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _check_prefixes(value: tuple[str, ...]) -> tuple[str, ...]:
    # URLs only: the store reads a URL as it is, while an absolute path is always taken as a path in the store
    for prefix in value:
        if "://" not in prefix or ".." in prefix.split("/") or printable(prefix) != prefix:
            raise ValueError(f"prefix {prefix!r}: use URL prefixes (s3://bucket/folder/, file:///path/) without '..'")
    return value


def _check_device(value: str) -> str:
    if not _DEVICE_RE.fullmatch(value):
        raise ValueError("use auto, cpu, cuda or cuda:N")
    return value


def _parse_storage_options(value: Any) -> Any:
    # a JSON object (NoDecode: bad text is this setting's error, not a SettingsError); blank means none
    if not isinstance(value, str):
        return value
    if not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError('not JSON: use a JSON object, e.g. {"endpoint_url": "https://s3.example.com"}') from None
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")
    return parsed


def _secret_keys(value: Any, where: str = "") -> list[str]:
    """Dotted paths of the keys in ``value`` (at any depth) that name a credential: key, secret, token, password..."""
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_keys(v, f"{where}{i}.")]
    if not isinstance(value, dict):
        return []
    found = []
    for k, v in value.items():
        name = str(k).lower()
        if name.endswith("key") or name == "aws_access_key_id" or any(w in name for w in _SECRET_WORDS):
            found.append(f"{where}{k}")
        found += _secret_keys(v, f"{where}{k}.")
    return found


def _check_storage_options(value: dict[str, Any]) -> dict[str, Any]:
    # settings travel as flow-run parameters (Prefect's database) and to every worker: no credentials in them
    secret = _secret_keys(value)
    if secret:
        raise ValueError(f"credentials do not belong in the store's options ({', '.join(secret)}): give them as "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or the pod's identity (IRSA)")
    return value


# field types that read environment text as they always have (Python's int()/float(), the boolean words above)
_Bool = Annotated[bool, BeforeValidator(_parse_bool)]
_Int = Annotated[int, BeforeValidator(_parse_int)]
_OptionalInt = Annotated[int | None, BeforeValidator(_parse_optional_int)]
_OptionalFloat = Annotated[float | None, BeforeValidator(_parse_optional_float)]
_Device = Annotated[str, AfterValidator(_check_device)]
_Prefixes = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_parse_prefixes), AfterValidator(_check_prefixes)]
_StorageOptions = Annotated[dict[str, Any], NoDecode, BeforeValidator(_parse_storage_options),
                            AfterValidator(_check_storage_options)]


def _parse_resources(value: Any) -> Any:
    # `dask worker --resources` syntax: NAME=AMOUNT pairs separated by commas or blanks ("GPU=1", "GPU=1,MEM=8e9")
    if not isinstance(value, str):
        return value
    resources = {}
    for pair in value.replace(",", " ").split():
        name, sep, amount = pair.partition("=")
        if not sep or not name or printable(name) != name:
            raise ValueError(f"{pair!r}: use NAME=AMOUNT pairs, as `dask worker --resources` takes them (GPU=1)")
        resources[name] = _parse_float(amount)
    return resources


def _check_resources(value: dict[str, float]) -> dict[str, float]:
    if any(not amount > 0 for amount in value.values()):  # not > 0 also catches NaN
        raise ValueError("each resource amount must be a number > 0")
    return value


_Resources = Annotated[dict[str, float], NoDecode, BeforeValidator(_parse_resources), AfterValidator(_check_resources)]


class Settings(BaseSettings):
    """All knobs of a run: a keyword argument, else ``ANODET_<FIELD>`` (upper case), else the field's default.

    Frozen (copies come from :meth:`with_`) and picklable (Dask ships it to the workers; unpickling reads no
    environment). A bad value raises :class:`InvalidSetting` naming its variable (or keyword argument); an
    unknown keyword argument raises ``TypeError``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_file=None)

    store: str = Field("./anodet-data", description="any fsspec URL: ./folder, file:///..., s3://bucket/prefix")
    dask_address: str = Field("", description="empty: start a LocalCluster for the flow")
    dask_workers: _Int = Field(1, description="LocalCluster worker processes")
    dask_threads: _Int = Field(1, description="threads per worker (torch gets the cores, see torch_threads)")
    torch_threads: _Int = Field(0, description="0: all cores of the machine divided among the workers")
    device: _Device = Field("auto", description="auto | cpu | cuda | cuda:N")
    batch_size: _Int = Field(8, description="pairs per forward pass")
    task_pairs: _Int = Field(64, description="pairs per Prefect task (one task scores them batch_size at a time)")
    threshold: _OptionalFloat = Field(
        None, description="map threshold for findings and decisions; None (empty variable): the model card's (0.5 by default)")
    min_finding_area: _OptionalInt = Field(
        None, description="native px, smaller connected regions are ignored as noise; None (empty variable): the card's, else 64")
    model: str = Field("anodfdnet", description="model name in the store's registry (its production version is used)")
    fast: _Bool = Field(True, description="bf16 autocast (when the hardware supports it) + channels_last")
    # anodet_core.scoring.backends.BACKENDS (tests check the two agree)
    backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="auto (CPU: the fastest of torch and the version's exports, measured) | torch | openvino | "
                            "onnxruntime")
    # anodet_core.imaging.registration.METHODS (tests check the two agree)
    registration: Literal["auto", "phase", "features"] = Field("auto", description="auto | phase | features")
    prep_processes: _Int = Field(
        -1, description="helper processes preparing pairs ahead of the model: -1 the worker's cores, 0 none")
    map_dtype: Literal["uint8", "float16"] = Field("uint8", description="uint8 (score*255) | float16")
    single_image: Literal[SingleImageArch, ""] = Field(
        "csaflow", description='single-image arch scoring no-history captures (model "<arch>-<region_id>"); "" disables')
    second_opinion: _Bool = Field(
        False, description="also score captures WITH history by their region's single-image model (second_*)")
    allowed_uri_prefixes: _Prefixes = Field(
        (), description="comma-separated URL prefixes a manifest uri may point under outside the store "
                        "(s3://robot-uploads/, file:///mnt/captures/); empty: every uri must be relative to the store")
    inference_resources: _Resources = Field(
        default_factory=dict, description="Dask worker resources a score-batch task needs (GPU=1: only workers started "
                                          "with --resources GPU=1 run them); empty: any worker")
    training_resources: _Resources = Field(
        default_factory=dict, description="Dask worker resources a training task of the retraining flow needs (GPU=1: "
                                          "only GPU workers train); empty: any worker, never the serving process")
    storage_options: _StorageOptions = Field(
        default_factory=dict, description='fsspec options of the store, a JSON object ({"endpoint_url": ...}); no credentials')
    # schedules of `anodet serve` (flows/deployments.py)
    depots: Depots = Field(
        (), description='comma-separated depots, each with its own nightly cron after "@" if it has one: '
                        '"north,south@30 1 * * *"; empty: the depots found in the store, else "demo"')
    nightly_cron: Cron = Field("0 2 * * *", description="cron of the nightly run of depots without their own")
    retrain_cron: Cron = Field("0 4 * * 0", description="cron of each depot's retraining (weekly)")
    timezone: Timezone = Field(
        "", description="IANA time zone of the crons (and of a scheduled run's night); empty: this machine's")

    def __init__(self, **values: Any) -> None:
        """Validate ``values`` over the environment over the defaults (see the class docstring for the errors)."""
        unknown = sorted(set(values) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"unknown settings {unknown}: use {sorted(type(self).model_fields)}")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidSetting(_explain(exc, given=set(values))) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments over ``ANODET_*`` variables over the defaults; no ``.env`` file, no secrets folder."""
        return init_settings, env_settings

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``ANODET_*`` variables, then explicit ``overrides`` (None values are ignored)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field -> the ``ANODET_*`` variable that sets it, for every field the environment sets."""
        return {name: env_name(name) for name in cls.model_fields}

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (what applies when neither a variable nor an argument sets it)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    def with_(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied; None values are ignored (keep the current value)."""
        # every field is passed, so the environment of the moment changes nothing
        return type(self)(**{**dict(self), **{k: v for k, v in changes.items() if v is not None}})


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``ANODET_<FIELD>``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _explain(exc: ValidationError, given: set[str]) -> str:
    """One line per bad value, naming the keyword argument that gave it, else its ``ANODET_*`` variable."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = field if field in given else env_name(field)
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        shown = "" if field == "storage_options" else f"={err['input']!r}"  # the options may hold a credential
        parts.append(f"{name}{shown}: {msg}")
    return "; ".join(parts)


def resolve_device(name: str = "auto") -> str:
    """``auto`` picks CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return name


def local_timezone() -> str:
    """The host's IANA time zone name, UTC when none is configured (``ANODET_TIMEZONE`` overrides it where used)."""
    try:
        import tzlocal

        return tzlocal.get_localzone_name() or "UTC"
    except Exception:  # no zone configured on the host: schedules in UTC rather than failing to serve
        return "UTC"


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 quota (containers see the host's count)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
