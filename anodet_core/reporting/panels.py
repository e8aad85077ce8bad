"""The pictures of a finding card: cur, the registered history, the anomaly map over cur, the outlined findings.

Everything is drawn in the frame of cur decoded at reduced scale (:func:`anodet_core.imaging.prepare.align_pair`,
the registration the night itself ran), with the stored map and the finding boxes (native cur px) scaled into it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..imaging.io import resize
from ..imaging.prepare import align_pair

# decoded side the panels are drawn from: a reduced JPEG decode keeps at least this many px on the short side
VIEW_SIDE = 512
# a crop shows the box with this much context on each side (times the box's size), at least MIN_CROP decoded px
CROP_CONTEXT = 1.0
MIN_CROP = 96
PANEL_PX = 384  # side of a crop panel as embedded (the page shows it at up to this size)
FRAME_PX = 768  # width of the whole-frame outline panel
BOX_COLOUR = (255, 214, 0)
EDGE_COLOUR = (255, 40, 40)


@dataclass
class CaptureViews:
    """One capture, ready to draw: cur, its registered history and the stored map, in one decoded frame."""

    cur: np.ndarray  # H x W x 3 uint8
    his: np.ndarray  # history registered into cur's frame (uncovered pixels: cur), same shape
    score: np.ndarray  # H x W float32 in [0, 1], the stored map resized into the frame
    native_size: tuple[int, int]  # cur (width, height)

    @property
    def scale(self) -> float:
        """Decoded px per native px."""
        return self.cur.shape[1] / self.native_size[0]


def capture_views(cur_bytes: bytes, his_bytes: bytes, native_map: np.ndarray, *, registration: str = "auto") -> CaptureViews:
    """Register his into cur's frame as the night did and bring the native-size map (float [0, 1]) into it."""
    a = align_pair(cur_bytes, his_bytes, size=VIEW_SIDE, registration=registration)
    h, w = a.cur.shape[:2]
    score = resize(np.clip(native_map, 0.0, 1.0).astype(np.float32), (w, h))
    return CaptureViews(a.cur, a.his, np.asarray(score, np.float32), a.native_size)


def crop_window(box: Sequence[int], views: CaptureViews) -> tuple[int, int, int, int]:
    """A square window (decoded px, half-open) around a native-px box (x0, y0, x1, y1), clipped to the frame."""
    s = views.scale
    x0, y0, x1, y1 = (v * s for v in box)
    side = max(MIN_CROP, (1 + 2 * CROP_CONTEXT) * max(x1 - x0, y1 - y0))
    h, w = views.cur.shape[:2]
    side = min(side, w, h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return left, top, left + int(side), top + int(side)


def heat(score: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as RGB through matplotlib's ``inferno`` (dark = unchanged, yellow = certain)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(score, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(img: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """The heat map over a dimmed image: opaque where the map reaches the threshold, fading out below it."""
    alpha = np.clip(score / max(threshold, 1e-6), 0.0, 1.0)[..., None] * 0.75
    base = img.astype(np.float32) * 0.6
    return (base * (1 - alpha) + heat(score).astype(np.float32) * alpha).astype(np.uint8)


def outline(img: np.ndarray, score: np.ndarray, threshold: float, boxes: Sequence[Sequence[float]],
            highlight: int | None = None, width: int = 2) -> np.ndarray:
    """``img`` with the map's edges at the threshold in red and the finding boxes (in ``img``'s px) in yellow; the
    box ``highlight`` (an index) drawn thicker."""
    from skimage.segmentation import find_boundaries

    out = img.copy()
    edge = find_boundaries(score >= threshold, mode="thick")
    out[edge] = EDGE_COLOUR
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOUR, width=width * (2 if i == highlight else 1))
    return np.asarray(pil)


def fit(img: np.ndarray, width: int) -> np.ndarray:
    """``img`` resized to ``width`` px wide (aspect kept); upscaled crops stay sharp (nearest) so pixels are visible."""
    h, w = img.shape[:2]
    height = max(1, round(h * width / w))
    resample = Image.Resampling.NEAREST if width > w else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(img).resize((width, height), resample))


def jpeg_data_uri(img: np.ndarray, quality: int = 85) -> str:
    """An RGB image as a ``data:`` URI, for a page that holds its own pictures."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def png_data_uri(data: bytes) -> str:
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def finding_panels(views: CaptureViews, boxes: Sequence[Sequence[int]], index: int, threshold: float) -> dict[str, str]:
    """The four pictures of finding ``index`` of a capture (``boxes`` all its boxes, native px) as data URIs:
    ``cur``, ``his`` (registered), ``map`` (heat over cur), crops around the box, and ``frame`` (the whole capture
    with every finding outlined, this one thicker)."""
    x0, y0, x1, y1 = crop_window(boxes[index], views)
    crop = (slice(y0, y1), slice(x0, x1))
    # the whole frame is outlined at the size it is shown, so its edges stay visible lines
    small = fit(views.cur, FRAME_PX)
    f = views.scale * small.shape[1] / views.cur.shape[1]
    score = np.asarray(resize(views.score, (small.shape[1], small.shape[0])))
    frame = outline(small, score, threshold, [[v * f for v in b] for b in boxes], highlight=index)
    return {
        "cur": jpeg_data_uri(fit(views.cur[crop], PANEL_PX)),
        "his": jpeg_data_uri(fit(views.his[crop], PANEL_PX)),
        "map": jpeg_data_uri(fit(overlay(views.cur[crop], views.score[crop], threshold), PANEL_PX)),
        "frame": jpeg_data_uri(frame),
    }
