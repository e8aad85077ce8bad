"""Encoding of the demo's captures (JPEG); masks are PNG through :func:`anodet_core.imaging.io.encode_png`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image at ``quality`` (1-100), as the robot's camera writes its captures."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
