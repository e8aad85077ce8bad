"""Registration of a history ("his") capture onto the current ("cur") capture.

The robot photographs the same undercarriage region every night; consecutive
captures differ by a small viewpoint change (translation up to a few percent of
the image side, rotation of a couple of degrees, scale of a few percent), by
illumination/gamma, by sensor noise and -- the reason we compare them at all --
by local content changes (anomalies).  :func:`register` estimates the geometric
transform between the two captures so that :func:`warp_to_cur` can resample
``his`` into the pixel grid of ``cur``.

Conventions
-----------
* Points are ``(x, y)`` = ``(column, row)``, pixel centres at integer
  coordinates.
* ``Registration.matrix`` is a 3x3 homogeneous matrix mapping **cur** pixel
  coordinates to **his** pixel coordinates, expressed in the pixel units of the
  arrays that were passed to :func:`register` (use :meth:`Registration.scaled`
  to express it for larger, e.g. native resolution, images).
* Estimation always runs on grayscale copies area-downscaled so that the longer
  side is ``work_size``; the result is converted back exactly (half-pixel
  convention of the area resampler).

Estimators
----------
``"phase"``
    Fourier-Mellin: rotation and scale from the phase correlation of the
    log-polar resampled, high-passed FFT magnitudes (which are translation
    invariant), translation from a phase correlation of the de-rotated images,
    then a refinement: the coarsely aligned images are cut into a grid of
    patches, each patch pair is phase correlated (batched FFT) and the
    requested model is fitted robustly (iteratively re-weighted, outlier
    patches -- e.g. the ones containing an anomaly -- rejected) to the patch
    correspondences.
``"features"``
    ORB key points + descriptor matching (cross check + ratio test) + RANSAC
    with the requested model, then the same patch refinement.  Falls back to
    ``"phase"`` and finally to identity.  Much slower than ``"phase"``.
``"auto"`` (default)
    ``"phase"``, accepted when the transform is plausible (|rotation| <= 10 deg,
    scale in [0.85, 1.15], translation of the image centre <= 25 % of the image
    side), enough patches agree and the NCC after alignment is plausible and
    not worse than before; otherwise ``"features"`` under the same checks;
    otherwise identity with ``ok=False``.

A registration that could not be estimated is never silent: it is the
identity with ``ok=False`` and ``method="identity"`` and the caller is
expected to flag the pair.

Modules
-------
``_api`` :func:`register` and the acceptance checks; ``_types`` the
:class:`Registration` record; ``_warp`` :func:`warp_to_cur`; ``_phase`` and
``_features`` the two estimators; ``_fourier_mellin``, ``_phase_correlation``,
``_refine`` (patch refinement) and ``_fit`` (model fitting) their parts;
``_geometry`` matrix helpers and plausibility bounds; ``_image`` input
validation, grayscale and area downscaling.
"""

from ._api import METHODS, MIN_NCC_AFTER, register
from ._fit import MODELS
from ._geometry import MAX_ANISOTROPY, MAX_PERSPECTIVE, MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT_FRACTION, MIN_SCALE
from ._types import Registration
from ._warp import warp_to_cur

__all__ = [
    "MAX_ANISOTROPY",
    "MAX_PERSPECTIVE",
    "MAX_ROTATION_DEG",
    "MAX_SCALE",
    "MAX_SHIFT_FRACTION",
    "METHODS",
    "MIN_NCC_AFTER",
    "MIN_SCALE",
    "MODELS",
    "Registration",
    "register",
    "warp_to_cur",
]
