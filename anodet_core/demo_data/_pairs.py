"""Paired-folder datasets (``cur.jpg``, ``his.jpg``, ``mask.png`` per pair) for training and folder prediction."""

from __future__ import annotations

import posixpath

import numpy as np

from ..imaging.io import encode_png
from ._encode import encode_jpeg
from ._scene import RegionScene
from ._seeding import _plan_anomalies, _rng


def write_pair_folders(
    out_dir: str, n: int, *, seed: int = 0, width: int = 640, height: int = 400, anomaly_rate: float = 0.5
) -> list[str]:
    """Paired-folder dataset: ``out_dir/<pair_id>/cur.jpg, his.jpg, mask.png`` (mask white = anomaly, in the cur
    frame, all black for a normal pair). Each pair is its own region; cur and his get independent nuisances.
    ``out_dir`` may be any fsspec URL. Returns the pair ids (``pair00000``, ...)."""
    import fsspec

    if n < 0:
        raise ValueError("n must be >= 0")
    fs, base = fsspec.core.url_to_fs(out_dir)
    plan = _plan_anomalies(seed, n, anomaly_rate, "pairs")
    ids = []
    for i in range(n):
        pid = f"pair{i:05d}"
        scene = RegionScene(seed, ("pair", i), width, height)
        his, _, _ = scene.render(_rng(seed, "pair-his", i))
        want, subtle = plan.get(i, (None, False))
        cur, mask, _ = scene.render(_rng(seed, "pair-cur", i), anomaly=want, anomaly_rng=_rng(seed, "pair-anomaly", i), subtle=subtle)
        if mask is None:
            mask = np.zeros(cur.shape[:2], np.uint8)
        folder = posixpath.join(base, pid)
        fs.makedirs(folder, exist_ok=True)
        for name, data in (("cur.jpg", encode_jpeg(cur)), ("his.jpg", encode_jpeg(his)), ("mask.png", encode_png(mask))):
            with fs.open(posixpath.join(folder, name), "wb") as fh:
                fh.write(data)
        ids.append(pid)
    return ids
