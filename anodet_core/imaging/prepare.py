"""From two encoded captures to one aligned model input: decode reduced, register, warp his into cur, resize.

Training, evaluation and the nightly run all go through :func:`prepare_pair`, so the model is trained on
exactly what it sees in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .io import MAX_PIXELS, DecodedImage, ImageError, decode, decode_image, resize
from .registration import Registration, register

# The paper's AnoDFDNet input side: the default size only. A model's own is its registered input size
# (``anodet_core.models.instance_info(model).input_size``, ``Predictor.info.input_size``), which callers pass.
MODEL_SIZE = 256
# A history has no manifest row of its own here: it may have up to this many times cur's pixels (a reference
# taken at twice the linear resolution of the same view), and never more than MAX_PIXELS.
HISTORY_PIXEL_FACTOR = 4
# Where the warped history does not cover cur, cur fills in; across this many pixels (of the decoded cur) the
# history fades into that fill, so a lighting difference between the two is a smooth ramp, not an edge.
FEATHER_FRACTION = 1 / 16


@dataclass
class PreparedPair:
    """One aligned pair at the model's input size, with its registration and preparation figures."""

    cur: np.ndarray  # size x size x 3 uint8, cur frame
    his: np.ndarray  # history warped into the cur frame, same shape
    registration: Registration  # expressed in native cur pixels
    valid_frac: float  # share of cur covered by the warped history
    native_size: tuple[int, int]  # cur (width, height), upright (anodet_core.imaging.io: native size)
    t_decode_ms: float  # CPU time of the preparing thread (wall time would count the model's use of the cores)
    t_register_ms: float  # CPU time, idem
    gray: bool = False  # one of the two has no colour: both were compared in grayscale (replicated to RGB)
    # pixels of the decoded cur that the warped history covers; None when it covers all of them. Elsewhere cur
    # fills in (:func:`fill_uncovered`): no paired model can see a change there, and evaluation says so
    covered: np.ndarray | None = None
    # the history's weight (history_weight) at the model's input size, float32; None when it covers every pixel
    history_weight: np.ndarray | None = None

    def covered_at(self, size: tuple[int, int]) -> np.ndarray | None:
        """:attr:`covered` resampled (nearest) to ``size`` = (width, height), e.g. the native size; None as it."""
        if self.covered is None:
            return None
        img = Image.fromarray(self.covered.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        return np.asarray(img) > 127


def _t(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def warp_pil(his: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``his`` resampled into cur's grid (bilinear) and the mask of pixels it covers.

    Same result as :func:`anodet_core.imaging.registration.warp_to_cur` (``matrix`` maps cur pixel centres to his),
    with Pillow's C transform, much faster on the hot path. Pillow puts pixel centres at +0.5, hence the shifts.
    """
    p = _t(0.5, 0.5) @ np.asarray(matrix, np.float64) @ _t(-0.5, -0.5)
    p = p / p[2, 2]
    size = (int(out_hw[1]), int(out_hw[0]))
    if np.allclose(p[2, :2], 0.0):
        kind, coeffs = Image.Transform.AFFINE, tuple(p[:2].ravel())
    else:
        kind, coeffs = Image.Transform.PERSPECTIVE, tuple(p.ravel()[:8])
    warped = np.asarray(Image.fromarray(his).transform(size, kind, coeffs, resample=Image.Resampling.BILINEAR))
    corners = p @ np.array([[0, size[0], 0, size[0]], [0, 0, size[1], size[1]], [1, 1, 1, 1]], np.float64)
    cx, cy = corners[0] / corners[2], corners[1] / corners[2]
    if corners[2].min() > 0 and cx.min() >= 0 and cy.min() >= 0 and cx.max() <= his.shape[1] and cy.max() <= his.shape[0]:
        return warped, np.ones(out_hw, bool)  # the whole frame maps inside his (the usual case): no mask to draw
    ones = Image.new("L", (his.shape[1], his.shape[0]), 255)
    valid = np.asarray(ones.transform(size, kind, coeffs, resample=Image.Resampling.NEAREST)) > 0
    return warped, valid


def history_weight(valid: np.ndarray) -> np.ndarray:
    """The weight of the warped history in each pixel of the prepared his (float64 in [0, 1]).

    0 where it does not cover cur, ramping linearly from 0 on its first covered pixel to 1 a band of
    ``FEATHER_FRACTION`` of cur inside (:func:`fill_uncovered`): how much evidence the pair holds at each pixel.
    """
    band = max(2.0, FEATHER_FRACTION * max(valid.shape[:2]))
    inside = ndimage.distance_transform_edt(valid)  # 1 on the first covered pixel, 0 outside
    return np.clip((inside - 1.0) / band, 0.0, 1.0)


def fill_uncovered(cur: np.ndarray, warped: np.ndarray, valid: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """``warped`` with cur in the pixels it does not cover, faded in over a band of ``FEATHER_FRACTION`` of cur.

    Outside the history there is no evidence of a change, so the network must see none: filled with cur, the
    difference is zero there. A hard fill leaves an edge along the border (the lighting of two nights differs,
    and bilinear samples at the border mix in the black outside), which a change detector flags as a scratch;
    the weight of the history ramps linearly from 0 on its first covered pixel to 1 a band's width inside
    (``alpha``: :func:`history_weight` of ``valid``, when the caller has it already).
    """
    alpha = history_weight(valid) if alpha is None else alpha
    near = alpha < 1.0
    a = alpha[near][:, None]
    out = np.array(warped)  # Pillow's buffer is read-only
    out[near] = np.rint(a * warped[near] + (1.0 - a) * cur[near]).astype(np.uint8)
    return out


def prepare_image(data: bytes, size: int, *, expect_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image -> (RGB uint8 (size, size, 3), native (width, height)), for single-image models.

    Reduced JPEG decode (:func:`anodet_core.imaging.io.decode` with ``min_size``, refused unless its native size
    is ``expect_size`` when given) then bilinear resize: training folders, the retraining flow and the night all
    prepare images this way.  Raises ``ImageError``.
    """
    arr, native = decode(data, min_size=(size, size), mode="RGB", expect_size=expect_size)
    return resize(arr, (size, size)), native


def _decode_as(role: str, data: bytes, size: int, expect_size: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    """:func:`decode_image` reduced for ``size``, its ImageError naming the image (``role``: capture or history)."""
    try:
        return decode_image(data, min_size=(size, size), expect_size=expect_size, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"{role} image: {exc}") from exc


def _gray_rgb(arr: np.ndarray) -> np.ndarray:
    """An RGB image's gray level (Pillow's ITU-R 601-2 luma, as an ``L`` source decodes) replicated to RGB."""
    return np.asarray(Image.fromarray(arr).convert("L").convert("RGB"))


@dataclass
class AlignedPair:
    """cur and its history registered into cur's frame, at the reduced decode of :func:`align_pair` (not squared)."""

    cur: np.ndarray  # H x W x 3 uint8, decoded cur
    his: np.ndarray  # history warped into that frame, uncovered pixels filled from cur (fill_uncovered)
    valid: np.ndarray  # H x W bool: pixels the warped history covers
    alpha: np.ndarray | None  # the history's weight there (history_weight); None when it covers every pixel
    registration: Registration  # in the decoded cur's pixels
    native_size: tuple[int, int]  # cur (width, height), upright
    gray: bool
    t_decode_ms: float
    t_register_ms: float


def align_pair(
    cur_bytes: bytes,
    his_bytes: bytes,
    *,
    size: int = MODEL_SIZE,
    registration: str = "auto",
    transform: str = "similarity",
    expect_size: tuple[int, int] | None = None,
) -> AlignedPair:
    """Decode both images reduced for ``size`` and register his into cur's frame: the part of :func:`prepare_pair`
    before the model's square resize, which the night report reuses to show the history as the model saw it."""
    t0 = time.thread_time()
    cur_img = _decode_as("capture", cur_bytes, size, expect_size, MAX_PIXELS)
    his_img = _decode_as("history", his_bytes, size, None, HISTORY_PIXEL_FACTOR * cur_img.native[0] * cur_img.native[1])
    cur, his, native = cur_img.pixels, his_img.pixels, cur_img.native
    gray = cur_img.gray != his_img.gray
    if gray:  # the gray one is its own gray level already
        cur, his = (cur, _gray_rgb(his)) if cur_img.gray else (_gray_rgb(cur), his)
    if his.shape[:2] != cur.shape[:2]:  # e.g. a reference taken at another resolution of the same view
        his = resize(his, (cur.shape[1], cur.shape[0]))
    t1 = time.thread_time()
    if registration == "none":
        # already aligned input (e.g. a paired dataset): skip registration, say so in the figures
        reg = Registration(np.eye(3), "identity", True, 0, float("nan"), float("nan"), float("nan"))
        warped, valid = his, np.ones(cur.shape[:2], bool)
    else:
        reg = register(cur, his, model=transform, method=registration)
        warped, valid = warp_pil(his, reg.matrix, cur.shape[:2])
    alpha = None
    if not valid.all():
        alpha = history_weight(valid)
        warped = fill_uncovered(cur, warped, valid, alpha)
    t2 = time.thread_time()
    return AlignedPair(cur, warped, valid, alpha, reg, native, gray, (t1 - t0) * 1e3, (t2 - t1) * 1e3)


def prepare_pair(
    cur_bytes: bytes,
    his_bytes: bytes,
    *,
    size: int = MODEL_SIZE,
    registration: str = "auto",
    transform: str = "similarity",
    expect_size: tuple[int, int] | None = None,
) -> PreparedPair:
    """Decode both images at reduced scale, align his to cur and return model-ready uint8 arrays of ``size``.

    cur must have the native size ``expect_size`` when given (its manifest's), his at most
    :data:`HISTORY_PIXEL_FACTOR` times cur's pixels; an :class:`~anodet_core.imaging.io.ImageError` says which
    image is refused and why. When one of the two has no colour (a gray camera, a gray reference), both are
    compared in grayscale: against colour, every hue would be a change. Pixels of cur that the warped history
    does not cover are filled with cur itself, so the network sees no difference there instead of a black
    border it would flag, and the history fades into that fill (:func:`fill_uncovered`).
    """
    a = align_pair(cur_bytes, his_bytes, size=size, registration=registration, transform=transform, expect_size=expect_size)
    cur, warped, valid, native = a.cur, a.his, a.valid, a.native_size
    weight = None
    if a.alpha is not None:
        weight = np.clip(np.asarray(Image.fromarray(a.alpha.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)), 0.0, 1.0)
    reg = a.registration
    factor = native[0] / cur.shape[1]
    return PreparedPair(
        cur=resize(cur, (size, size)),
        his=resize(warped, (size, size)),
        registration=reg.scaled(factor),
        valid_frac=float(valid.mean()),
        native_size=native,
        covered=None if valid.all() else valid,
        history_weight=weight,
        t_decode_ms=a.t_decode_ms,
        t_register_ms=a.t_register_ms,
        gray=a.gray,
    )
