"""Shared builders for small synthetic depots in tests (bright squares as anomalies)."""

import datetime as dt
import io
import os

import numpy as np
import torch
from PIL import Image

from anodet_core.imaging.io import encode_png, sha256
from anodet_core.store.layout import Store


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def paste_square(store: Store, depot: str, night: str, cid: str, img: np.ndarray, rng: np.random.Generator) -> str:
    """Paint a bright 50x50 square into ``img`` (in place), write its mask to the store, return the mask's path."""
    y, x = rng.integers(20, 180, 2)
    img[y : y + 50, x : x + 50] = 250
    m = np.zeros(img.shape[:2], np.uint8)
    m[y : y + 50, x : x + 50] = 255
    mask_uri = store.mask_rel(depot, night, cid)
    store.write_bytes(mask_uri, encode_png(m))
    return mask_uri


def add_capture(store: Store, depot: str, night: str, cid: str, img: np.ndarray, anomalous: bool,
                rng: np.random.Generator, *, train_id: str, region_id: str, minute: int) -> tuple[dict, dict]:
    """Write one capture (a bright square pasted when ``anomalous``, with its mask) and return its manifest row
    and label row; ``minute`` orders the night's captures (01:MM UTC)."""
    mask_uri = paste_square(store, depot, night, cid, img, rng) if anomalous else None
    data = jpeg(img)
    uri = store.capture_rel(depot, night, cid)
    store.write_bytes(uri, data)
    d = dt.date.fromisoformat(night)
    row = dict(capture_id=cid, depot=depot, night=night, train_id=train_id, car=1, region_id=region_id,
               captured_at=dt.datetime(d.year, d.month, d.day, 1, minute, tzinfo=dt.UTC), uri=uri,
               sha256=sha256(data), width=img.shape[1], height=img.shape[0])
    label = dict(capture_id=cid, anomalous=anomalous, anomaly_type="foreign_body" if anomalous else None,
                 mask_uri=mask_uri)
    return row, label


def die_on(x: int, fatal: int) -> int:
    """For helper-process tests: ``10 * x``, except that ``x == fatal`` kills the calling process."""
    if x == fatal:
        os._exit(1)
    return 10 * x


def die_once(x: int, marker: str) -> int:
    """For helper-process tests: kills the calling process the first time (leaving ``marker``), then ``10 * x``."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return 10 * x


def save_lite_production(store: Store, threshold: float = 0.5, seed: int = 0):
    """A seeded random-init lite AnoDFDNet (one Transformer layer) saved as the store's production ``anodfdnet``.

    An untrained model scores about 0.5 everywhere: a threshold of 0.9 makes every scored capture normal (so the
    next night takes these captures as histories), 0.5 gives a mix. Returns the saved card.
    """
    import torch

    from anodet_core.models import create_model
    from anodet_core.registry import model_store
    from anodet_core.registry.model_store import ModelCard

    torch.manual_seed(seed)
    model = create_model("anodfdnet", preset="lite", depth=1)
    card = model_store.save_version(store, model, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite",
                                                            config={"depth": 1}, threshold=threshold))
    model_store.set_alias(store, "anodfdnet", card.version)
    return card


class Lookup(torch.nn.Module):
    """A "model" returning hand-made maps: pair i carries i in his's first pixel (input in [-1, 1])."""

    def __init__(self, maps: np.ndarray):
        super().__init__()
        self.maps = torch.from_numpy(maps.astype(np.float32))

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        idx = torch.round((his[:, 0, 0, 0] + 1) * 127.5).long()
        return self.maps[idx][:, None]
