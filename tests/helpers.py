"""Shared builders for small synthetic depots in tests (bright squares as anomalies)."""

import io

import numpy as np
from PIL import Image

from anodet_core.imaging import encode_png
from anodet_core.layout import Store


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
