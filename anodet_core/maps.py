"""Anomaly maps of one depot-night in one Zarr v3 group (``maps/<depot>/<night>.zarr``).

Arrays of the group:
    maps         (n, H, W) uint8 (score * 255, rounded) or float16; one chunk per capture, zstd-compressed.
                 H, W are the largest capture size of the night; smaller captures sit top-left, zero padded
                 (their size is in `heights`/`widths`).
    capture_ids  (n,) strings, row i of `maps` belongs to capture_ids[i]
    heights, widths (n,) int32 native capture size
    written      (n,) uint8, 1 once the row holds a map (0: not scored: no history or error)
Attributes: depot, night, model_name, model_version, threshold, dtype, scale (255 for uint8), run_id.

Rows are written by different Dask workers at the same time; each row is its own chunk, so writes never
touch the same object.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from .layout import Store


def _zarr_store(store: Store, rel: str, read_only: bool) -> Any:
    if store.is_local:
        return LocalStore(store.path(rel), read_only=read_only)
    return FsspecStore.from_url(store.url(rel), storage_options=store.storage_options or {}, read_only=read_only)


def create_night_maps(
    store: Store,
    depot: str,
    night: str,
    capture_ids: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    *,
    dtype: str = "uint8",
    attrs: dict[str, Any] | None = None,
) -> str:
    """Create (or replace) the night's group with empty rows; returns its URL. ``sizes`` are (width, height)."""
    if dtype not in ("uint8", "float16"):
        raise ValueError(f"map dtype must be uint8 or float16, not {dtype!r}")
    n = len(capture_ids)
    if n != len(sizes):
        raise ValueError("capture_ids and sizes differ in length")
    rel = store.maps_rel(depot, night)
    h = max((s[1] for s in sizes), default=1)
    w = max((s[0] for s in sizes), default=1)
    g = zarr.open_group(_zarr_store(store, rel, read_only=False), mode="w", zarr_format=3)
    g.create_array("maps", shape=(n, h, w), chunks=(1, h, w), dtype=dtype, compressors=ZstdCodec(level=3), fill_value=0)
    if n:
        g.create_array("capture_ids", shape=(n,), chunks=(n,), dtype=str)[:] = np.asarray(capture_ids, dtype=str)
    else:
        g.create_array("capture_ids", shape=(0,), chunks=(1,), dtype=str)
    for name, values in (("widths", [s[0] for s in sizes]), ("heights", [s[1] for s in sizes])):
        g.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype="int32")[:] = np.asarray(values, np.int32)
    g.create_array("written", shape=(n,), chunks=(max(n, 1),), dtype="uint8", fill_value=0)
    g.attrs.update({"depot": depot, "night": night, "dtype": dtype, "scale": 255 if dtype == "uint8" else 1, **(attrs or {})})
    return store.url(rel)


def quantize(score: np.ndarray, dtype: str) -> np.ndarray:
    """Float map in [0, 1] to the stored dtype (uint8 keeps 1/255 resolution: plenty for a 0.5 threshold)."""
    if dtype == "uint8":
        return np.clip(np.rint(score * 255.0), 0, 255).astype(np.uint8)
    return score.astype(np.float16)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Stored map back to float32 scores in [0, 1]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) * np.float32(1 / 255)
    return stored.astype(np.float32)


def write_map(g: zarr.Group, index: int, stored: np.ndarray) -> None:
    """Write one capture's map (H x W, already :func:`quantize`-d, native size) into row ``index`` of an open group."""
    arr = g["maps"]
    h, w = stored.shape
    if stored.dtype != arr.dtype:
        raise ValueError(f"map dtype {stored.dtype} does not match the night's {arr.dtype}")
    if h > arr.shape[1] or w > arr.shape[2]:
        raise ValueError(f"map {w}x{h} larger than the night's array {arr.shape[2]}x{arr.shape[1]}")
    if stored.shape == arr.shape[1:]:
        row = stored
    else:
        row = np.zeros(arr.shape[1:], dtype=arr.dtype)
        row[:h, :w] = stored
    arr[index] = row
    g["written"][index] = 1


def read_map(store: Store, depot: str, night: str, capture_id: str) -> np.ndarray:
    """A capture's map as float32 in [0, 1] at its native size."""
    g = open_night_maps(store, depot, night)
    ids = list(g["capture_ids"][:])
    if capture_id not in ids:
        raise KeyError(f"capture {capture_id!r} has no map in {depot}/{night}")
    i = ids.index(capture_id)
    if not g["written"][i]:
        raise KeyError(f"capture {capture_id!r} was not scored (no map written)")
    h, w = int(g["heights"][i]), int(g["widths"][i])
    return dequantize(np.asarray(g["maps"][i, :h, :w]))


def open_night_maps(store: Store, depot: str, night: str, *, writable: bool = False) -> zarr.Group:
    """Open an existing night group (read-only unless ``writable``)."""
    rel = store.maps_rel(depot, night)
    return zarr.open_group(_zarr_store(store, rel, read_only=not writable), mode="r+" if writable else "r")
