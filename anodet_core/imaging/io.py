"""Image decoding and resizing shared by training, inference and the CLI.

Every image the product reads goes through :func:`decode_image`, the one normative conversion to 8 bits: it
checks the header before anything is decoded (pixel limits, and the size the manifest declares), applies the
EXIF orientation and brings every supported mode to 8-bit RGB (or L). A *native size* is the full-resolution
size of the upright image, after its EXIF orientation: the size a capture's manifest row declares, its map is
stored at and its findings' boxes are in.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Global cap, for every image any code of this process opens: Pillow refuses above twice this, and its warning
# between once and twice is an error here (refused, not decoded). decode_image checks the cap itself as well,
# so that its refusal (and message) holds where the warning filter was reset (pytest's warning capture does).
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# the modes decode_image accepts: without colour (their RGB is the gray level replicated), and with colour
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr"})
_TURNED = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image by 90 degrees: width and height swap
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\b0x[0-9a-fA-F]{8,}\b")


class ImageError(ValueError):
    """An input image is missing, corrupt or unusable; the message says what is wrong (stable across runs)."""


def stable_message(exc: BaseException) -> str:
    """``"<exception class>: <its message>"`` without memory addresses (reprs such as ``<... at 0x7f...>``), so
    that a report's ``error`` reads the same in every run."""
    text = _ADDRESS.sub("<object>", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def sha256(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded by :func:`decode_image`."""

    pixels: np.ndarray  # H x W x C uint8, upright (C = 3 for mode "RGB", 1 for "L"); reduced with min_size
    native: tuple[int, int]  # full-resolution (width, height) of the upright image (see the module docstring)
    gray: bool  # the source has no colour (GRAY_MODES): its RGB pixels are its gray level replicated


def decode_image(data: bytes, *, min_size: tuple[int, int] | None = None, mode: str = "RGB",
                 expect_size: tuple[int, int] | None = None, max_pixels: int | None = None) -> DecodedImage:
    """Decode an image to 8-bit ``mode`` ("RGB" or "L"), upright; :class:`ImageError` says why it cannot be.

    The header is checked before anything is decoded: more pixels than :data:`MAX_PIXELS` or ``max_pixels``,
    or a native size other than ``expect_size`` (a manifest's width and height; None: not known), is refused,
    so a file far larger than it should be is never decoded. With ``min_size=(w, h)`` a JPEG is decoded with
    DCT scaling (``Image.draft``) to the smallest power-of-two reduction still at least that large: much cheaper
    than a full decode of a large capture, and the model sees 256x256 anyway.

    Modes: 16-bit gray (``I;16*``, and ``I`` as the PNG and TIFF decoders give 16-bit samples) is scaled from its
    full range, round(v * 255 / 65535), not clipped; ``1``, ``L`` and ``LA`` are gray; ``RGBA``, ``RGBX``, ``P``
    and ``PA`` (palette transparency becomes alpha) have their alpha dropped, not composited: a capture's colour
    channels are the camera's pixels, and alpha says nothing about the scene; ``CMYK`` and ``YCbCr`` are
    converted by Pillow. Other modes (``F``, ...) are refused.
    """
    if not data:
        raise ImageError("zero-byte file")
    try:
        return _decode(data, min_size, mode, expect_size, MAX_PIXELS if max_pixels is None else min(max_pixels, MAX_PIXELS))
    except (ImageError, MemoryError):
        raise
    except UnidentifiedImageError as exc:  # its message names the BytesIO object, address included
        raise ImageError("not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message holds the header's pixel count
        raise ImageError(_too_large(int(found.group(1)) if found else None, MAX_PIXELS)) from exc
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, struct.error...: the bytes' fault
        if "truncated" in str(exc).lower():  # "image file is truncated (...)", "Truncated File Read"
            raise ImageError("truncated image") from exc
        raise ImageError(f"corrupt image data ({stable_message(exc)})") from exc


def _too_large(pixels: int | None, limit: int) -> str:
    return f"image {f'of {pixels} px ' if pixels is not None else ''}exceeds the limit of {limit} px"


def _decode(data: bytes, min_size: tuple[int, int] | None, mode: str, expect_size: tuple[int, int] | None,
            limit: int) -> DecodedImage:
    img: Image.Image = Image.open(io.BytesIO(data))  # lazy: the header only
    w, h = img.size
    if w * h > MAX_PIXELS:  # first, so the message does not depend on the warning filter (see MAX_PIXELS)
        raise ImageError(_too_large(w * h, MAX_PIXELS))
    expect = None if expect_size is None else (int(expect_size[0]), int(expect_size[1]))
    if expect is not None and expect not in ((w, h), (h, w)):  # not even turned: refused before reading EXIF
        raise ImageError(f"image header declares {w}x{h} px but the manifest declares {expect[0]}x{expect[1]}")
    if w * h > limit:
        raise ImageError(_too_large(w * h, limit))
    source = img.mode
    if source not in GRAY_MODES | COLOUR_MODES:
        raise ImageError(f"unsupported image mode {source}")
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)  # a JPEG's from its header (a PNG decodes here)
    native = (h, w) if orientation in _TURNED else (w, h)
    if expect is not None and native != expect:
        upright = f" upright (EXIF orientation {orientation})" if orientation in _TURNED else ""
        raise ImageError(f"image header declares {native[0]}x{native[1]} px{upright} "
                         f"but the manifest declares {expect[0]}x{expect[1]}")
    if min_size is not None and img.format == "JPEG":
        img.draft(mode, (max(1, min_size[0]), max(1, min_size[1])))
    img.load()
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    arr = np.asarray(_eight_bit(img, mode))
    return DecodedImage(arr[..., None] if arr.ndim == 2 else arr, native, source in GRAY_MODES)


def _eight_bit(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in 8-bit ``mode``: the one conversion (see :func:`decode_image` for each source mode)."""
    if img.mode.startswith("I"):
        # scaled, because Pillow's convert clips 16-bit samples at 255 (a normal scene saved as 16-bit PNG turns white)
        v = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        img = Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # the palette's transparency goes to alpha (dropped below), and Pillow does not warn
    return img if img.mode == mode else img.convert(mode)


def decode(data: bytes, *, min_size: tuple[int, int] | None = None, mode: str = "RGB",
           expect_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels H x W x C uint8, native (width, height)) of :func:`decode_image`; raises :class:`ImageError`."""
    img = decode_image(data, min_size=min_size, mode=mode, expect_size=expect_size)
    return img.pixels, img.native


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
