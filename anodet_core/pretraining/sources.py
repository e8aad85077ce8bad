"""Real photographs available offline, named so a split can be made by source photograph.

From the registries only: scikit-image's bundled photographs, matplotlib's sample photographs, and any
image under ``/usr/share/backgrounds`` (Debian's ``mate-backgrounds`` and ``ukui-wallpapers``, which
``make pretrain-data`` installs). Other folders can be given (``--photo-dirs``), e.g. ``/usr/share/wallpapers``
of ``plasma-workspace-wallpapers``: of a KDE wallpaper package, which holds one picture at many sizes, only the
largest is taken. Debian's ``opencv-doc`` samples and the ``elpv-dataset`` package are kept
for independent evaluation and are refused here even if a folder holding them is passed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Photo", "SKIMAGE_PHOTOS", "DEFAULT_DIRS", "load_photos", "split_photos"]

SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "cell", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
)
DEFAULT_DIRS = ("/usr/share/backgrounds",)
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_KDE_IMAGE = re.compile(r"^(?P<package>.+)/contents/images/(?P<w>\d+)x(?P<h>\d+)\.\w+$")
_MATPLOTLIB = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
_FORBIDDEN = ("opencv", "elpv")  # reserved for independent evaluation
_MAX_SIDE = 1280


@dataclass
class Photo:
    """One source photograph: a stable name and its RGB pixels (long side at most 1280)."""

    name: str
    pixels: np.ndarray

    def digest(self) -> str:
        """First 16 hex digits of the SHA-256 of the pixel bytes: identifies the content, whatever the name."""
        return hashlib.sha256(self.pixels.tobytes()).hexdigest()[:16]

    @property
    def group(self) -> str:
        """Versions of one picture (sizes, colourways) share a group, and a group stays on one side of a split."""
        g = re.sub(r"_\d+x\d+(?=\.)", "", self.name)
        g = re.sub(r"/contents/images/\d+x\d+\.\w+$", "", g)
        return re.sub(r"-(Cold|Warm|Dark|Light|Radioactive)(?=[-.])", "", g)

    @property
    def is_photograph(self) -> bool:
        """A camera photograph (not a drawn wallpaper): only these may form the held-out test split."""
        return self.name.startswith(("skimage:", "matplotlib:", "file:mate/nature/"))


def _fit(a: np.ndarray) -> np.ndarray:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    h, w = a.shape[:2]
    s = _MAX_SIDE / max(h, w)
    if s < 1:
        a = np.asarray(Image.fromarray(a).resize((int(w * s), int(h * s)), Image.Resampling.LANCZOS))
    return a


def _image_paths(d: str) -> list[str]:
    """Image files under ``d``, sorted; of a KDE wallpaper package (``<name>/contents/images/<w>x<h>.<ext>``, one
    picture at many sizes, beside dark variants and a screenshot) only the largest size."""
    best: dict[str, tuple[int, str]] = {}
    paths = []
    for path in glob.glob(os.path.join(d, "**", "*"), recursive=True):
        rel = os.path.relpath(path, d)
        if not path.lower().endswith(_EXTENSIONS) or any(f in path.lower() for f in _FORBIDDEN):
            continue
        if "/contents/" in rel:  # a KDE package: its images/ folder only
            if m := _KDE_IMAGE.match(rel):
                best[m["package"]] = max(best.get(m["package"], (0, "")), (int(m["w"]) * int(m["h"]), path))
            continue
        paths.append(path)
    return sorted(paths + [p for _, p in best.values()])


def load_photos(dirs: tuple[str, ...] | list[str] | None = None, *, skimage: bool = True, matplotlib: bool = True,
                min_side: int = 256) -> list[Photo]:
    """Every usable photograph, sorted by name (``skimage:``, ``matplotlib:`` or ``file:`` + path)."""
    photos: list[Photo] = []
    if skimage:
        import skimage.data as data

        for n in SKIMAGE_PHOTOS:
            photos.append(Photo(f"skimage:{n}", _fit(np.asarray(getattr(data, n)()))))
    if matplotlib:
        import matplotlib as mpl

        root = os.path.join(mpl.get_data_path(), "sample_data")
        for n in _MATPLOTLIB:
            path = os.path.join(root, n)
            if os.path.isfile(path):
                photos.append(Photo(f"matplotlib:{n}", _fit(np.asarray(Image.open(path).convert("RGB")))))
    for d in DEFAULT_DIRS if dirs is None else dirs:
        if any(f in d.lower() for f in _FORBIDDEN):
            raise ValueError(f"{d} is reserved for independent evaluation and may not be used for training")
        for path in _image_paths(d):
            try:
                with Image.open(path) as im:
                    photos.append(Photo(f"file:{os.path.relpath(path, d)}", _fit(np.asarray(im.convert("RGB")))))
            except OSError:
                continue
    photos = [p for p in photos if min(p.pixels.shape[:2]) >= min_side]
    return sorted(photos, key=lambda p: p.name)


def split_photos(photos: list[Photo], test_frac: float = 0.3) -> tuple[list[Photo], list[Photo]]:
    """(train, test) by source photograph: the hash of a photograph's group decides, so adding one moves no
    other; only camera photographs can be held out (drawn wallpapers always train)."""
    def held_out(p: Photo) -> bool:
        return p.is_photograph and int(hashlib.sha256(p.group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_frac

    test = [p for p in photos if held_out(p)]
    train = [p for p in photos if not held_out(p)]
    if not test or not train:
        raise ValueError(f"need photographs on both sides of the split, got {len(train)} train / {len(test)} test")
    return train, test
