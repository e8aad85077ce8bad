"""Result records: the public :class:`Registration` and the estimators' internal ``_Estimate``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._geometry import _apply, _decompose


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    matrix:
        3x3 float64; maps cur pixel coordinates ``(x, y, 1)`` to his pixel
        coordinates, in the pixel units of the arrays passed to ``register``.
    method:
        ``"features"``, ``"phase"`` or ``"identity"`` -- the estimator whose
        result was used.
    ok:
        ``False`` when every estimator failed and the identity was used.
    inliers:
        RANSAC inliers (``0`` for phase/identity).
    residual_px:
        RMS residual of the inlier correspondences used for the final fit
        (RANSAC matches for "features", refinement patches for "phase"), in
        pixels of the arrays passed; ``nan`` for identity.
    ncc_before / ncc_after:
        normalised cross-correlation of the (work size, grayscale) images over
        their overlap before alignment / over the valid mask after alignment.
    """

    matrix: np.ndarray = field(repr=False)
    method: str
    ok: bool
    inliers: int
    residual_px: float
    ncc_before: float
    ncc_after: float

    def __post_init__(self) -> None:
        # a private read-only float64 copy: the record is immutable, the caller's array is not
        m = np.array(self.matrix, dtype=np.float64, copy=True)
        if m.shape != (3, 3):
            raise ValueError(f"matrix must be 3x3, got shape {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    def scaled(self, factor: float) -> Registration:
        """Same transform for images ``factor`` times larger (both cur and his).

        The matrix is conjugated by ``S = diag(factor, factor, 1)``:
        ``S @ matrix @ inv(S)``; ``residual_px`` is multiplied by ``factor``.
        """
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor must be a positive finite number, got {factor}")
        s = np.diag([factor, factor, 1.0])
        s_inv = np.diag([1.0 / factor, 1.0 / factor, 1.0])
        return Registration(
            matrix=s @ self.matrix @ s_inv,
            method=self.method,
            ok=self.ok,
            inliers=self.inliers,
            residual_px=self.residual_px * factor,
            ncc_before=self.ncc_before,
            ncc_after=self.ncc_after,
        )

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` cur points ``(x, y)`` to his coordinates."""
        return _apply(self.matrix, np.asarray(xy, dtype=np.float64))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the linear part (cur -> his), in degrees, in ``(x, y)`` pixel coordinates."""
        return _decompose(self.matrix)[0]

    @property
    def scale(self) -> float:
        """Isotropic scale ``sqrt(det)`` of the linear part (cur -> his); ``nan`` for a reflection or degenerate matrix."""
        return _decompose(self.matrix)[1]


@dataclass
class _Estimate:
    """An estimator's result at work resolution, before :func:`register` accepts or rejects it."""

    matrix: np.ndarray
    inliers: int = 0
    residual: float = float("nan")
    support: float = 0.0  # fraction of usable refinement patches that agree
    warped: tuple[np.ndarray, np.ndarray] | None = None  # (his warped, with matrix)
