"""Runtime settings: environment variables ``ANODET_*`` with defaults that run on a laptop.

CLI flags override these; everything else reads a :class:`Settings` instead of ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    """All knobs of a run. ``ANODET_<FIELD>`` (upper case) sets a field from the environment."""

    store: str = "./anodet-data"  # any fsspec URL: ./folder, file:///..., s3://bucket/prefix
    dask_address: str = ""  # empty: start a LocalCluster for the flow
    dask_workers: int = 1  # LocalCluster worker processes
    dask_threads: int = 1  # threads per worker (torch gets the cores, see torch_threads)
    torch_threads: int = 0  # 0: all cores of the machine divided among the workers
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8  # pairs per forward pass
    task_pairs: int = 64  # pairs per Prefect task (one task scores them batch_size at a time)
    threshold: float | None = None  # map threshold for findings and decisions; None: the model card's (0.5 by default)
    min_finding_area: int | None = None  # native px, smaller connected regions are ignored as noise; None: the card's, else 64
    model: str = "anodfdnet"  # model name in the store's registry (its production version is used)
    fast: bool = True  # bf16 autocast (when the hardware supports it) + channels_last
    registration: str = "auto"  # auto | phase | features
    prep_processes: int = -1  # helper processes preparing pairs ahead of the model: -1 the worker's cores, 0 none
    map_dtype: str = "uint8"  # uint8 (score*255) | float16
    single_image: str = "csaflow"  # single-image arch scoring no-history captures (model "<arch>-<region_id>"); "" disables
    second_opinion: bool = False  # also score captures WITH history by their region's single-image model (second_*)
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``ANODET_*`` variables, then explicit ``overrides`` (None values are ignored)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "storage_options":
                continue
            raw = os.environ.get(f"ANODET_{f.name.upper()}")
            if raw is None:
                continue
            default = getattr(cls(), f.name)
            if f.name == "threshold":
                values[f.name] = float(raw) if raw.strip() else None
            elif f.name == "min_finding_area":
                values[f.name] = int(raw) if raw.strip() else None
            elif isinstance(default, bool):
                word = raw.strip().lower()
                if word not in _TRUE | _FALSE:
                    raise ValueError(f"ANODET_{f.name.upper()}={raw!r} is not a boolean: use one of {sorted(_TRUE | _FALSE)}")
                values[f.name] = word in _TRUE
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied; None values are ignored (keep the current value)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


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
