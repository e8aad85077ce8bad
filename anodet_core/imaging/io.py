"""Image decoding and resizing shared by training, inference and the CLI."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 200_000_000  # captures are large but bounded; refuse absurd files


class ImageError(ValueError):
    """An input image is missing, corrupt or unusable."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, *, min_size: tuple[int, int] | None = None, mode: str = "RGB") -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image; returns (pixels HxWxC uint8, native (width, height)).

    With ``min_size=(w, h)`` a JPEG is decoded with DCT scaling (``Image.draft``) to the smallest power-of-two
    reduction still at least that large: much cheaper than a full decode of a large capture, and the model
    sees 256x256 anyway. Raises :class:`ImageError` when the bytes are not a decodable image.
    """
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        native = img.size
        if min_size is not None and img.format == "JPEG":
            img.draft(mode, (max(1, min_size[0]), max(1, min_size[1])))
        img = img.convert(mode)
        arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, native


def resize(arr: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize an HxW[xC] uint8 image to (width, height) with Pillow (fast, C)."""
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    squeeze = arr.ndim == 3 and arr.shape[2] == 1
    img = Image.fromarray(arr[..., 0] if squeeze else arr)
    out = np.asarray(img.resize(size, resample=resample))
    return out[..., None] if squeeze else out


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an image array (HxW or HxWxC; dtype and channels as Pillow's ``Image.fromarray`` accepts)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def read_mask(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a label mask (white = anomaly) to bool HxW, optionally resized (nearest) to (width, height)."""
    arr, _ = decode(data, mode="L")
    arr = arr[..., 0]
    if size is not None:
        arr = resize(arr, size, Image.Resampling.NEAREST)
    return arr > 127
