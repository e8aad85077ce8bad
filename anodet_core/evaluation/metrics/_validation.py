"""Input conversion and validation shared by the metrics: arrays or tensors in, checked NumPy arrays out.

torch is never imported here: a tensor is recognised only when the caller has already imported torch.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

# Elements processed at once by PixelMetrics.update() and confusion_counts(), to bound the size of
# temporaries when a batch holds many full-resolution maps.
CHUNK = 1 << 22


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert an array-like or torch tensor to a NumPy array (no copy if possible)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array") from exc
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got dtype object")
    return arr


def check_scores_array(s: np.ndarray, name: str = "scores") -> np.ndarray:
    """Validate a score map: numeric, finite, within [0, 1]; returns a float array."""
    if s.dtype == np.bool_:
        s = s.astype(np.float32)
    elif not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {s.dtype}")
    elif not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.size:
        lo, hi = s.min(), s.max()
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"{name}: contains NaN")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: values must lie in [0, 1], got range [{float(lo)}, {float(hi)}]"
            )
    return s


def mask_to_bool(m: np.ndarray, name: str = "masks") -> np.ndarray:
    """Ground-truth mask to bool: True where anomalous (bool, or numeric > 0.5)."""
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.floating):
        if m.size and np.isnan(m).any():
            raise ValueError(f"{name}: contains NaN")
        return m > 0.5
    if np.issubdtype(m.dtype, np.integer):
        return m > 0
    raise ValueError(f"{name}: expected a bool or numeric array, got dtype {m.dtype}")


def labels_1d(labels: Any, name: str = "labels") -> np.ndarray:
    """Flattened bool labels (see :func:`mask_to_bool`)."""
    lab = to_numpy(labels, name).reshape(-1)
    return mask_to_bool(lab, name)


def finite_1d(scores: Any, name: str = "scores") -> np.ndarray:
    """Flattened float64 scores, any finite reals (rank-based metrics need no [0, 1] range)."""
    s = to_numpy(scores, name).reshape(-1)
    if s.dtype == np.bool_:
        s = s.astype(np.float64)
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name}: expected numeric values, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return s


def check_threshold(threshold: float) -> float:
    """The threshold as a float in [0, 1]; ``ValueError`` otherwise (NaN included)."""
    t = float(threshold)
    if not (0.0 <= t <= 1.0):  # also rejects NaN
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


def score_mask_pair(scores: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated score maps and bool masks of the same shape, both flattened."""
    s = to_numpy(scores, "scores")
    m = to_numpy(masks, "masks")
    if s.shape != m.shape:
        raise ValueError(f"shape mismatch: scores {s.shape} vs masks {m.shape}")
    s = check_scores_array(s, "scores")
    m = mask_to_bool(m, "masks")
    return s.reshape(-1), m.reshape(-1)
