"""Seeded randomness of the demo: generators keyed by what they draw for, the anomaly plan and capture times."""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np

from ._constants import ANOMALY_TYPES


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (stable across runs and platforms)."""
    s = int(seed)
    words = [s & 0xFFFFFFFF, (s >> 32) & 0xFFFFFFFF, 0 if s >= 0 else 1]
    words += [zlib.crc32(repr(k).encode()) for k in keys]
    return np.random.default_rng(words)


def _plan_anomalies(seed: int, n: int, rate: float, what: str) -> dict[int, tuple[str, bool]]:
    """index -> (anomaly type, subtle) for exactly round(rate * n) of n items, types balanced to +-1."""
    rate = min(max(float(rate), 0.0), 1.0)
    k = int(round(rate * n))
    rng = _rng(seed, "plan", what)
    chosen = rng.permutation(n)[:k]
    offset = int(rng.integers(len(ANOMALY_TYPES)))
    types = [ANOMALY_TYPES[(i + offset) % len(ANOMALY_TYPES)] for i in range(k)]
    rng.shuffle(types)
    subtle = rng.random(k) < 0.25
    return {int(i): (t, bool(s)) for i, t, s in zip(chosen, types, subtle)}


def _capture_times(seed: int, night: str, keys: list[tuple[str, int, str]]) -> list[dt.datetime]:
    """01:00 UTC on the night's date, then 6-10 s per capture, trains in sequence with 5-15 min between them."""
    rng = _rng(seed, "clock", night)
    start = dt.datetime.combine(dt.date.fromisoformat(night), dt.time(1, 0), tzinfo=dt.UTC)
    t = float(rng.uniform(0, 120))
    out, prev_train = [], None
    for train, _, _ in keys:
        if prev_train is not None:
            t += rng.uniform(300, 900) if train != prev_train else rng.uniform(6, 10)
        prev_train = train
        out.append(start + dt.timedelta(microseconds=int(round(t * 1e6))))
    return out
