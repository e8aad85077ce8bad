"""What a demo depot holds (:class:`DemoSpec`) and what was written (:class:`DemoSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DemoSpec:
    """What :func:`generate_depot` writes. Lengths in the nuisance and anomaly models scale with the diagonal."""

    depot: str = "demo"
    first_night: str = "2026-11-16"  # YYYY-MM-DD
    nights: int = 4
    trains: int = 2
    cars: int = 2
    regions: int = 5  # regions per car
    width: int = 1920
    height: int = 1200
    anomaly_rate: float = 1 / 3
    seed: int = 0
    jpeg_quality: int = 90
    viewpoint: bool = True  # False: no viewpoint change between nights (identity warp), for tests and demos


@dataclass
class DemoSummary:
    """What :func:`generate_depot` wrote: the depot, its nights and the number of captures, anomalies and references."""

    depot: str
    nights: list[str]
    n_captures: int
    n_anomalous: int
    n_references: int
    counts_by_type: dict[str, int] = field(default_factory=dict)  # anomaly type -> number of captures


def _check_spec(spec: DemoSpec) -> None:
    """Raise ValueError for a spec that cannot be generated."""
    for name in ("nights", "trains", "cars", "regions"):
        if getattr(spec, name) < 1:
            raise ValueError(f"DemoSpec.{name} must be >= 1")
    if spec.width < 64 or spec.height < 64:
        raise ValueError("DemoSpec.width and height must be >= 64")
    if not 0.0 <= spec.anomaly_rate <= 1.0:
        raise ValueError("DemoSpec.anomaly_rate must be in [0, 1]")
    if not 1 <= spec.jpeg_quality <= 100:
        raise ValueError("DemoSpec.jpeg_quality must be in [1, 100]")
