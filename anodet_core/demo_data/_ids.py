"""Identifiers of a demo depot: train ids, region ids and capture ids."""

from __future__ import annotations

from ..store.names import check_name, check_night


def train_ids(n: int) -> list[str]:
    """The ids of the first ``n`` trains: ``T001``, ``T002``, ..."""
    return [f"T{i + 1:03d}" for i in range(n)]


def region_ids(n: int) -> list[str]:
    """The ids of ``n`` regions per car, zero-padded to a common width of at least two digits: ``R01``, ``R02``, ..."""
    width = max(2, len(str(n)))
    return [f"R{j + 1:0{width}d}" for j in range(n)]


def capture_id(depot: str, night: str, train_id: str, car: int, region_id: str) -> str:
    """Path-safe, unique per (depot, night, train, car, region): ``demo-20261116-T001-c1-R01``."""
    return check_name(f"{depot}-{check_night(night).replace('-', '')}-{train_id}-c{int(car)}-{region_id}", "capture_id")
