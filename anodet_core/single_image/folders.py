"""Image and mask folders: every image of a folder (sorted by name) resized to the model input."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..imaging.io import ImageError, read_mask
from ..imaging.prepare import prepare_image

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_images", "load_masks"]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_images(folder: str) -> list[str]:
    """Image file names (jpg/png/bmp/tif, any case) directly in ``folder``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist or is not a folder")
    return sorted(
        f for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def load_images(folder: str, size: int) -> tuple[np.ndarray, list[str]]:
    """Every image of ``folder`` (sorted by name) as RGB, resized to ``size`` x ``size``.

    Returns (uint8 array (N, size, size, 3), file names).  An empty folder or an undecodable file is a
    ``ValueError`` naming it.
    """
    names = list_images(folder)
    if not names:
        raise ValueError(f"no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in {folder!r}")
    out = np.empty((len(names), size, size, 3), np.uint8)
    for i, name in enumerate(names):
        with open(os.path.join(folder, name), "rb") as fh:
            data = fh.read()
        try:
            out[i], _ = prepare_image(data, size)
        except ImageError as exc:
            raise ValueError(f"{os.path.join(folder, name)}: {exc}") from exc
    return out, names


def load_masks(mask_dir: str, names: Sequence[str], size: int) -> np.ndarray:
    """Masks (white = anomaly) for the images ``names``, matched by file stem: ``<mask_dir>/<stem>.*``.

    Returns bool (N, size, size) (nearest-neighbour resize).  A missing mask is a ``ValueError`` listing the
    stems, so pixel metrics are never computed on silently incomplete labels.
    """
    by_stem: dict[str, str] = {}
    for f in list_images(mask_dir):
        by_stem.setdefault(os.path.splitext(f)[0], f)
    missing = [n for n in names if os.path.splitext(n)[0] not in by_stem]
    if missing:
        raise ValueError(f"no mask in {mask_dir!r} for {len(missing)} image(s): {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (masks are matched by file stem)")
    out = np.empty((len(names), size, size), bool)
    for i, n in enumerate(names):
        with open(os.path.join(mask_dir, by_stem[os.path.splitext(n)[0]]), "rb") as fh:
            out[i] = read_mask(fh.read(), (size, size))
    return out
