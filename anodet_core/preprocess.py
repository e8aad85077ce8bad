"""From two encoded captures to one aligned model input: decode reduced, register, warp his into cur, resize.

Training, evaluation and the nightly run all go through :func:`prepare_pair`, so the model is trained on
exactly what it sees in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .imaging import decode, resize
from .registration import Registration, register, warp_to_cur

MODEL_SIZE = 256  # AnoDFDNet input side


@dataclass
class PreparedPair:
    cur: np.ndarray  # MODEL_SIZE x MODEL_SIZE x 3 uint8, cur frame
    his: np.ndarray  # history warped into the cur frame, same shape
    registration: Registration  # expressed in native cur pixels
    valid_frac: float  # share of cur covered by the warped history
    native_size: tuple[int, int]  # cur (width, height)
    t_decode_ms: float
    t_register_ms: float


def prepare_pair(
    cur_bytes: bytes,
    his_bytes: bytes,
    *,
    size: int = MODEL_SIZE,
    registration: str = "auto",
    transform: str = "similarity",
) -> PreparedPair:
    """Decode both images at reduced scale, align his to cur and return model-ready uint8 arrays.

    Pixels of cur that the warped history does not cover are filled with cur itself, so the network sees no
    difference there instead of a black border it would flag.
    """
    t0 = time.perf_counter()
    cur, native = decode(cur_bytes, min_size=(size, size))
    his, _ = decode(his_bytes, min_size=(size, size))
    if his.shape[:2] != cur.shape[:2]:  # e.g. a reference taken at another resolution of the same view
        his = resize(his, (cur.shape[1], cur.shape[0]))
    t1 = time.perf_counter()
    if registration == "none":
        # already aligned input (e.g. a paired dataset): skip registration, say so in the figures
        reg = Registration(np.eye(3), "identity", True, 0, float("nan"), float("nan"), float("nan"))
        warped, valid = his, np.ones(cur.shape[:2], bool)
    else:
        reg = register(cur, his, model=transform, method=registration)
        warped, valid = warp_to_cur(his, reg, cur.shape[:2])
    if not valid.all():
        warped = np.where(valid[..., None], warped, cur)
    t2 = time.perf_counter()
    factor = native[0] / cur.shape[1]
    return PreparedPair(
        cur=resize(cur, (size, size)),
        his=resize(warped, (size, size)),
        registration=reg.scaled(factor),
        valid_frac=float(valid.mean()),
        native_size=native,
        t_decode_ms=(t1 - t0) * 1e3,
        t_register_ms=(t2 - t1) * 1e3,
    )
