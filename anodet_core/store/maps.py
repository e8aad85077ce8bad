"""Anomaly maps of one depot-night in one Zarr v3 group per run (``maps/<depot>/<night>/<generation>.zarr``).

Each run of a night writes a new group, which readers see once the night is published
(:mod:`anodet_core.store.publish`); nights from before generations have ``maps/<depot>/<night>.zarr``.

Arrays of the group:
    maps         (n, H, W) uint8 (score * 255, rounded) or float16; one chunk per capture, zstd-compressed.
                 H, W are the largest capture size of the night; smaller captures sit top-left, zero padded
                 (their size is in `heights`/`widths`).
    capture_ids  (n,) strings, row i of `maps` belongs to capture_ids[i]
    heights, widths (n,) int32 native capture size
    written      (n,) uint8, 1 once the row holds a map (0: not scored: no history or error); one chunk per
                 element, so workers never rewrite each other's flags
Attributes: depot, night, model_name, model_version, threshold, min_finding_area, no_history_score (the night's operating point),
dtype, scale (255 for uint8), run_id.

Rows are written by different Dask workers at the same time; each row is its own chunk, so writes never
touch the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from . import s3
from .layout import Store


def _zarr_store(store: Store, rel: str, read_only: bool) -> Any:
    if store.is_local:
        return LocalStore(store.path(rel), read_only=read_only)
    url = store.url(rel)
    zstore = FsspecStore.from_url(url, storage_options=s3.fs_options(url, store.storage_options), read_only=read_only)
    s3.configure(zstore.fs)  # the same single retry layer as the store's own filesystem
    return zstore


def create_night_maps(
    store: Store,
    depot: str,
    night: str,
    capture_ids: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    *,
    dtype: str = "uint8",
    attrs: dict[str, Any] | None = None,
    generation: str | None = None,
) -> str:
    """Create (or replace) the group of one generation of the night with empty rows; returns its URL.

    ``sizes`` are (width, height). Without ``generation`` the legacy group ``maps/<depot>/<night>.zarr``.
    """
    if dtype not in ("uint8", "float16"):
        raise ValueError(f"map dtype must be uint8 or float16, not {dtype!r}")
    n = len(capture_ids)
    if n != len(sizes):
        raise ValueError("capture_ids and sizes differ in length")
    rel = store.maps_rel(depot, night, generation)
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
    g.create_array("written", shape=(n,), chunks=(1,), dtype="uint8", fill_value=0)
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


class MapWriter:
    """Writes whole rows of a night's ``maps`` array as single zstd chunks straight to the store.

    Going through zarr costs far more per row than compressing it (its async machinery). A row is exactly one
    chunk, so the writer encodes it with the array's own codecs (bytes, then zstd at the array's level) and puts
    it under the array's chunk key (default encoding, "/" separator) — byte-for-byte what zarr writes, and read
    back by zarr (tests check it). Arrays with any other layout fall back to zarr.
    """

    def __init__(self, store: Store, depot: str, night: str, rel: str | None = None):
        import numcodecs

        from .publish import latest_maps_rel

        self.rel = rel or latest_maps_rel(store, depot, night)  # the group this run created (store-relative)
        self.group = open_night_maps(store, depot, night, writable=True, rel=self.rel)
        arr: Any = self.group["maps"]  # zarr types members Array | Group, metadata JSON; the layout fixes them
        meta = arr.metadata.to_dict()
        codecs = meta.get("codecs", [])
        names = [c.get("name") for c in codecs]
        key_enc = meta.get("chunk_key_encoding", {})
        self.fast = (
            names == ["bytes", "zstd"]
            and not codecs[1].get("configuration", {}).get("checksum", False)
            and key_enc.get("name") == "default"
            and key_enc.get("configuration", {}).get("separator", "/") == "/"
            and tuple(arr.chunks) == (1, *arr.shape[1:])
            and arr.dtype == np.uint8  # no byte order to take care of
        )
        if self.fast:
            self._zstd = numcodecs.Zstd(level=int(codecs[1].get("configuration", {}).get("level", 3)))
            self._fs = store.fs
            self._local = store.is_local  # local folders need the chunk's parent folders; object stores do not
            self._base = store.path(self.rel)
        self.shape = arr.shape
        self.dtype = arr.dtype
        flags: Any = self.group["written"]
        fmeta = flags.metadata.to_dict()
        self._flags = flags
        self._fast_flags = self.fast and [c.get("name") for c in fmeta.get("codecs", [])] == ["bytes", "zstd"] and tuple(flags.chunks) == (1,)

    def write(self, index: int, stored: np.ndarray) -> None:
        """Write one capture's map (:func:`quantize`-d, native size, zero padded) into row ``index`` and flag it written.

        IndexError for a row outside the array; ValueError for a map of another dtype or larger than the array.
        """
        if not self.fast:
            write_map(self.group, index, stored)
            return
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"map row {index} outside 0..{self.shape[0] - 1}")
        row = _pad_row(stored, self.shape[1:], self.dtype)
        folder = f"{self._base}/maps/c/{index}/0"
        if self._local:
            self._fs.makedirs(folder, exist_ok=True)
        self._fs.pipe_file(f"{folder}/0", bytes(self._zstd.encode(np.ascontiguousarray(row))))
        self._flag(index)

    def _flag(self, index: int) -> None:
        """Set ``written[index]``: its own one-element chunk, written the same direct way when the layout allows."""
        if not self._fast_flags:
            self._flags[index] = 1
            return
        if self._local:
            self._fs.makedirs(f"{self._base}/written/c", exist_ok=True)
        self._fs.pipe_file(f"{self._base}/written/c/{index}", bytes(self._zstd.encode(np.ones(1, np.uint8))))


def _pad_row(stored: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    h, w = stored.shape
    if stored.dtype != dtype:
        raise ValueError(f"map dtype {stored.dtype} does not match the night's {dtype}")
    if h > shape[0] or w > shape[1]:
        raise ValueError(f"map {w}x{h} larger than the night's array {shape[1]}x{shape[0]}")
    if stored.shape == tuple(shape):
        return stored
    row = np.zeros(shape, dtype=dtype)
    row[:h, :w] = stored
    return row


def write_map(g: zarr.Group, index: int, stored: np.ndarray) -> None:
    """Write one capture's map (H x W, already :func:`quantize`-d, native size) into row ``index`` of an open group.

    ValueError for a map of another dtype than the array's or larger than it.
    """
    arr: Any = g["maps"]  # zarr types members Array | Group; the layout fixes them
    arr[index] = _pad_row(stored, arr.shape[1:], arr.dtype)
    written: Any = g["written"]
    written[index] = 1


def read_map(store: Store, depot: str, night: str, capture_id: str) -> np.ndarray:
    """A capture's map as float32 in [0, 1] at its native size; KeyError when the capture has no map or was not scored."""
    g: Any = open_night_maps(store, depot, night)  # members typed Array | Group by zarr; the layout fixes them
    ids = list(g["capture_ids"][:])
    if capture_id not in ids:
        raise KeyError(f"capture {capture_id!r} has no map in {depot}/{night}")
    i = ids.index(capture_id)
    if not g["written"][i]:
        raise KeyError(f"capture {capture_id!r} was not scored (no map written)")
    h, w = int(g["heights"][i]), int(g["widths"][i])
    return dequantize(np.asarray(g["maps"][i, :h, :w]))


def open_night_maps(store: Store, depot: str, night: str, *, writable: bool = False, rel: str | None = None) -> zarr.Group:
    """Open an existing night group (read-only unless ``writable``); zarr raises when the group does not exist.

    Without ``rel`` (a store-relative group) the published one (:func:`anodet_core.store.publish.committed_maps_rel`).
    """
    from .publish import committed_maps_rel

    rel = rel or committed_maps_rel(store, depot, night)
    return zarr.open_group(_zarr_store(store, rel, read_only=not writable), mode="r+" if writable else "r")
