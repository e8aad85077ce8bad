"""Image faults and image modes of one capture, through the night's batch (``process_batch``).

Every case is a night of four regions: three good captures (c0 with a white square, anomalous; c1 and c2
normal) and one more, ``bad``, that carries the fault or the mode under test. A fault must give ``bad`` its
status and a stable message while c0-c2 are scored as in a night without it; a capture in another image mode
must be decided like its 8-bit colour original (its "twin", one of c0/c1, whose history it shares). The model is
a deterministic difference of cur and his, so decisions follow the pixels. Cases are marked for the fault
catalogue (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from anodet_core.config import Settings
from anodet_core.imaging import prepare
from anodet_core.imaging.io import MAX_PIXELS, ImageError, decode_image, sha256
from anodet_core.night import batch
from anodet_core.night.plan import plan_night
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store
from anodet_core.store.schemas import row_dict

from helpers import jpeg

DEPOT, NIGHT = "faults", "2026-07-01"
W, H = 320, 240
MIN_AREA = 40  # native px
GOOD = {"c0": "anomalous", "c1": "normal", "c2": "normal"}  # decisions of the good captures
SQUARE = (90, 60, 40)  # c0's white square: x, y, side (native px)


class DiffMap(torch.nn.Module):
    """A deterministic "model": 1 where cur and his differ by more than ~45 grey levels (channel mean), 0 below
    ~25, linear in between."""

    def forward(self, cur: torch.Tensor, his: torch.Tensor) -> torch.Tensor:
        d = (cur - his).abs().mean(1, keepdim=True)  # inputs in [-1, 1]
        return ((d - 0.2) * 4).clamp(0, 1)


@functools.cache
def _scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """region -> (history pixels, cur pixels): smooth colour scenes, cur = his + a little noise (c0: + square)."""
    rng = np.random.default_rng(3)
    out = {}
    for i, cid in enumerate([*GOOD, "bad"]):
        small = rng.integers(40, 200, (12, 16, 3), dtype=np.uint8)
        his = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
        cur = np.clip(his.astype(int) + rng.integers(-3, 4, his.shape), 0, 255).astype(np.uint8)
        if cid == "c0":
            x, y, s = SQUARE
            cur[y : y + s, x : x + s] = 250
        out[f"R{i}"] = (his, cur)
    return out


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _night(store: Store, monkeypatch, cur: bytes | None, his: bytes | None = None, *, declared: tuple[int, int] = (W, H),
           manifest_bytes: bytes | None = None, before_scoring: Callable[[Store, dict], None] | None = None
           ) -> tuple[dict[str, dict], dict[str, list], dict]:
    """Write the night (``bad``'s file is ``cur``, not written when None; its history ``his``, default its own
    scene; its manifest sha256 that of ``manifest_bytes``, default ``cur``), plan it, run ``before_scoring(store,
    bad's job)``, score it in one ``process_batch`` of sub-batches of 2; (capture rows, findings, bad's job)."""
    rows = []
    for i, (cid, (scene_his, scene_cur)) in enumerate(zip([*GOOD, "bad"], _scenes().values())):
        region = f"R{i}"
        uri = store.capture_rel(DEPOT, NIGHT, cid)
        if cid == "bad":
            store.write_bytes(store.reference_rel("T1", 1, region), jpeg(scene_his) if his is None else his)
            data = cur
            if data is not None:
                store.write_bytes(uri, data)
            size = declared
        else:
            store.write_bytes(store.reference_rel("T1", 1, region), jpeg(scene_his))
            data = jpeg(scene_cur)
            store.write_bytes(uri, data)
            size = (W, H)
        digest = sha256(manifest_bytes if cid == "bad" and manifest_bytes is not None else data or b"")
        rows.append(dict(capture_id=cid, depot=DEPOT, night=NIGHT, train_id="T1", car=1, region_id=region,
                         captured_at=dt.datetime(2026, 7, 1, 1, i, tzinfo=dt.UTC), uri=uri, sha256=digest,
                         width=size[0], height=size[1]))
    store.write_manifest(DEPOT, NIGHT, rows)
    card = model_store.save_version(store, DiffMap(), ModelCard(name="diffmap", arch="diffmap", threshold=0.5,
                                                                min_finding_area=MIN_AREA))
    model_store.set_alias(store, "diffmap", card.version)
    monkeypatch.setattr(batch, "load", lambda st, ref, device="cpu": (DiffMap(), model_store.resolve_card(st, ref)))
    monkeypatch.setattr(batch, "_MODELS", {})
    plan = plan_night(store, DEPOT, NIGHT, "diffmap")
    job = next(j for j in plan.jobs if j.capture["capture_id"] == "bad")
    if before_scoring is not None:
        before_scoring(store, job)
    settings = Settings(store=store.root, model="diffmap", batch_size=2, prep_processes=0, fast=False, single_image="",
                        threshold=plan.threshold, min_finding_area=plan.min_finding_area)
    res = batch.process_batch(store, DEPOT, NIGHT, plan.jobs, plan.model_ref, settings, "run")
    assert sorted(r.capture_id for r in res.captures) == sorted([*GOOD, "bad"])  # one row per capture, none lost
    findings: dict[str, list] = {cid: [] for cid in [*GOOD, "bad"]}
    for f in sorted(res.findings, key=lambda f: f.finding_id):
        findings[f.capture_id].append(f)
    return {r.capture_id: row_dict(r) for r in res.captures}, findings, job.capture | {"history_uri": job.history_uri}


def _others_scored(rows: dict[str, dict], findings: dict[str, list]) -> None:
    """The good captures of the batch are scored and decided as in a night without the bad one."""
    for cid, decision in GOOD.items():
        row = rows[cid]
        assert (row["status"], row["decision"], row["error"]) == ("ok", decision, None), (cid, row["status"], row["error"])
        assert row["score_max"] is not None and row["map_index"] is not None
    (top,) = findings["c0"]
    x, y, s = SQUARE
    assert top.x0 <= x + s // 2 < top.x1 and top.y0 <= y + s // 2 < top.y1
    assert findings["c1"] == findings["c2"] == []


def _refused(rows: dict[str, dict], findings: dict[str, list], status: str, message: str) -> None:
    """``bad`` is reported with ``status`` and exactly ``message``, not scored, and the rest is intact."""
    bad = rows["bad"]
    assert (bad["status"], bad["error"]) == (status, message)
    assert not re.search(r"\b0x[0-9a-fA-F]+", bad["error"]) and "Traceback" not in bad["error"]  # no memory address
    assert bad["decision"] is None and bad["score_max"] is None and findings["bad"] == []
    _others_scored(rows, findings)


def _twin(rows: dict[str, dict], findings: dict[str, list], twin: str) -> None:
    """``bad`` is decided like its 8-bit colour original ``twin``: same status and decision, scores close, the
    same finding (box within a few native px)."""
    bad, orig = rows["bad"], rows[twin]
    assert (bad["status"], bad["decision"], bad["error"]) == (orig["status"], orig["decision"], None)
    assert bad["capture_score"] == pytest.approx(orig["capture_score"], abs=0.05)
    assert bad["score_mean"] == pytest.approx(orig["score_mean"], abs=0.01)
    assert bad["anomalous_area_frac"] == pytest.approx(orig["anomalous_area_frac"], abs=0.01)
    assert len(findings["bad"]) == len(findings[twin])
    for a, b in zip(findings["bad"], findings[twin]):
        assert max(abs(a.x0 - b.x0), abs(a.y0 - b.y0), abs(a.x1 - b.x1), abs(a.y1 - b.y1)) <= 4, (a, b)
    _others_scored(rows, findings)


def _twin_night(store: Store, monkeypatch, twin: str, cur: bytes, his: bytes | None = None, **kw):
    """A night whose ``bad`` capture is ``cur`` (a version of ``twin``'s cur) against ``twin``'s history (or ``his``)."""
    scene_his, _ = _scenes()[f"R{list(GOOD).index(twin)}"]
    return _night(store, monkeypatch, cur, jpeg(scene_his) if his is None else his, **kw)


def _twin_cur(twin: str) -> np.ndarray:
    return _scenes()[f"R{list(GOOD).index(twin)}"][1]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


# ------------------------------------------------------------------------------------------ files that are not images

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: tens of kB that would decode to side**2 bytes."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.mark.fault("decompression_bomb")
@pytest.mark.parametrize("side", [25_000, 16_000])  # above Pillow's error limit (2 x cap); between cap and 2 x cap
@pytest.mark.parametrize("pillow_warning", ["error", "default"])  # as the product sets it; as pytest may reset it
def test_a_decompression_bomb_is_refused_before_decoding(store, monkeypatch, side, pillow_warning):
    import warnings

    data = _bomb_png(side)
    assert len(data) < 100_000 and side * side > MAX_PIXELS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter(pillow_warning, Image.DecompressionBombWarning)
        rows, findings, _ = _night(store, monkeypatch, data)
    _refused(rows, findings, "invalid_image", f"capture image: image of {side * side} px exceeds the limit of {MAX_PIXELS} px")
    if pillow_warning == "error":
        assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_without_a_declared_size_only_the_global_cap_applies():
    big = jpeg(np.asarray(Image.fromarray(_twin_cur("c1")).resize((2 * W, 2 * H))))
    assert decode_image(big, min_size=(64, 64)).native == (2 * W, 2 * H)  # e.g. a training folder: no manifest
    with pytest.raises(ImageError, match=f"^image of {25_000 ** 2} px exceeds the limit of {MAX_PIXELS} px$"):
        decode_image(_bomb_png(25_000))


def _patched_sof(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) declares ``width`` x ``height``; the scan data stays the original's."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


@pytest.mark.fault("patched_header")
@pytest.mark.parametrize("size", [(30_000, 30_000), (4_000, 3_000)])
def test_a_jpeg_whose_header_declares_another_size_is_refused(store, monkeypatch, size):
    data = _patched_sof(jpeg(_twin_cur("c1")), *size)
    assert Image.open(io.BytesIO(jpeg(_twin_cur("c1")))).size == (W, H)
    rows, findings, _ = _night(store, monkeypatch, data)
    pixels = size[0] * size[1]
    message = (f"image of {pixels} px exceeds the limit of {MAX_PIXELS} px" if pixels > MAX_PIXELS
               else f"image header declares {size[0]}x{size[1]} px but the manifest declares {W}x{H}")
    _refused(rows, findings, "invalid_image", f"capture image: {message}")


@pytest.mark.fault("larger_than_declared")
def test_a_file_larger_than_its_manifest_declares_is_refused(store, monkeypatch):
    big = np.asarray(Image.fromarray(_twin_cur("c1")).resize((2 * W, 2 * H)))
    rows, findings, _ = _night(store, monkeypatch, jpeg(big))
    _refused(rows, findings, "invalid_image", f"capture image: image header declares {2 * W}x{2 * H} px but the manifest "
                                             f"declares {W}x{H}")


@pytest.mark.fault("oversized_history")
def test_a_history_far_larger_than_its_capture_is_refused(store, monkeypatch):
    his = np.asarray(Image.fromarray(_scenes()["R3"][0]).resize((4 * W, 4 * H)))  # 16 x cur's pixels, over the 4 x limit
    rows, findings, _ = _night(store, monkeypatch, jpeg(_scenes()["R3"][1]), jpeg(his))
    limit = prepare.HISTORY_PIXEL_FACTOR * W * H
    _refused(rows, findings, "invalid_image", f"history image: image of {16 * W * H} px exceeds the limit of {limit} px")


@pytest.mark.fault("zero_byte")
def test_a_zero_byte_capture_is_refused(store, monkeypatch):
    rows, findings, _ = _night(store, monkeypatch, b"")
    _refused(rows, findings, "invalid_image", "capture image: zero-byte file")


@pytest.mark.fault("not_an_image")
def test_bytes_that_are_no_image_are_refused_without_an_address(store, monkeypatch):
    rows, findings, _ = _night(store, monkeypatch, b"%PDF-1.7 this is not an image\n" * 40)
    _refused(rows, findings, "invalid_image", "capture image: not a recognised image format")


@pytest.mark.fault("truncated")
@pytest.mark.parametrize("keep", [0.5, 0.02])  # the scan data cut; the headers cut
def test_a_truncated_jpeg_is_refused(store, monkeypatch, keep):
    data = jpeg(_scenes()["R3"][1])
    rows, findings, _ = _night(store, monkeypatch, data[: int(len(data) * keep)])  # the manifest has the cut file's sha256
    _refused(rows, findings, "invalid_image", "capture image: truncated image")


# ------------------------------------------------------------------------------------------ the store

@pytest.mark.fault("missing_capture")
def test_a_missing_capture_file_is_reported_missing(store, monkeypatch):
    rows, findings, cap = _night(store, monkeypatch, None, manifest_bytes=b"what the robot wrote")
    _refused(rows, findings, "missing", f"capture file not found: {cap['uri']}")


@pytest.mark.fault("missing_history")
def test_a_history_file_gone_before_scoring_is_reported_missing(store, monkeypatch):
    def remove_history(st: Store, job) -> None:
        st.fs.rm(st.path(job.history_uri))

    rows, findings, cap = _night(store, monkeypatch, jpeg(_scenes()["R3"][1]), before_scoring=remove_history)
    assert cap["history_uri"]
    _refused(rows, findings, "missing", f"history file not found: {cap['history_uri']}")
    assert rows["bad"]["history_uri"] == cap["history_uri"]


@pytest.mark.fault("io_error")
def test_a_capture_that_cannot_be_read_is_an_io_error(store, monkeypatch):
    def directory_instead(st: Store, job) -> None:  # reading it raises IsADirectoryError, an OSError
        st.fs.rm(st.path(job.capture["uri"]))
        st.fs.makedirs(st.path(job.capture["uri"]), exist_ok=True)

    rows, findings, cap = _night(store, monkeypatch, jpeg(_scenes()["R3"][1]), before_scoring=directory_instead)
    bad = rows["bad"]
    assert bad["status"] == "io_error"
    assert bad["error"].startswith(f"cannot read capture file {cap['uri']}: IsADirectoryError: ")
    _refused(rows, findings, "io_error", bad["error"])


@pytest.mark.fault("checksum_mismatch")
def test_a_capture_changed_after_its_manifest_is_a_checksum_mismatch(store, monkeypatch):
    data = jpeg(_scenes()["R3"][1])
    rows, findings, cap = _night(store, monkeypatch, data, manifest_bytes=data + b"\0")
    _refused(rows, findings, "checksum_mismatch",
             f"sha256 mismatch for {cap['uri']}: the file changed after the manifest was written")


@pytest.mark.fault("preparation_error")
@pytest.mark.parametrize("exc", [ValueError("cannot estimate a transform"), RuntimeError("solver diverged")])
def test_a_failure_while_registering_costs_only_its_capture(store, monkeypatch, exc):
    real = prepare.register

    def register(cur: np.ndarray, his: np.ndarray, **kw):
        if cur.std() < 1:  # the bad capture is uniform gray
            raise exc
        return real(cur, his, **kw)

    monkeypatch.setattr(prepare, "register", register)
    rows, findings, _ = _night(store, monkeypatch, jpeg(np.full((H, W, 3), 128, np.uint8)))
    _refused(rows, findings, "error", f"preparation failed: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------ image modes

@pytest.mark.fault("mode_16bit")
@pytest.mark.parametrize("twin", ["c0", "c1"])
def test_a_16_bit_png_is_scaled_not_clipped(store, monkeypatch, twin):
    gray16 = np.asarray(Image.fromarray(_twin_cur(twin)).convert("L")).astype(np.uint16) * 257
    data = _encode(Image.fromarray(gray16), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rows, findings, _ = _twin_night(store, monkeypatch, twin, data)
    _twin(rows, findings, twin)


@pytest.mark.fault("mode_gray")
@pytest.mark.parametrize("twin", ["c0", "c1"])
@pytest.mark.parametrize("gray", ["cur", "his"])
def test_gray_against_colour_is_compared_in_gray(store, monkeypatch, twin, gray):
    scene_his, scene_cur = _scenes()[f"R{list(GOOD).index(twin)}"]
    if gray == "cur":
        rows, findings, _ = _twin_night(store, monkeypatch, twin, jpeg(np.asarray(Image.fromarray(scene_cur).convert("L"))))
    else:
        rows, findings, _ = _twin_night(store, monkeypatch, twin, jpeg(scene_cur),
                                        jpeg(np.asarray(Image.fromarray(scene_his).convert("L"))))
    _twin(rows, findings, twin)


@pytest.mark.fault("mode_alpha_palette")
@pytest.mark.parametrize("twin", ["c0", "c1"])
@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_rgba_and_palette_pngs_are_scored_like_rgb(store, monkeypatch, twin, mode):
    img = Image.fromarray(_twin_cur(twin))
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1))  # transparent to opaque: dropped, not composited
        data = _encode(Image.fromarray(np.dstack([_twin_cur(twin), alpha])), "PNG")
    else:
        data = _encode(img.quantize(256), "PNG", transparency=0)  # palette index 0 transparent
    assert Image.open(io.BytesIO(data)).mode == mode
    rows, findings, _ = _twin_night(store, monkeypatch, twin, data)
    _twin(rows, findings, twin)


@pytest.mark.fault("exif_orientation")
@pytest.mark.parametrize("twin", ["c0", "c1"])
def test_an_exif_rotated_jpeg_is_scored_upright(store, monkeypatch, twin):
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view": stored turned the other way
    data = _encode(Image.fromarray(np.ascontiguousarray(np.rot90(_twin_cur(twin)))), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (H, W)
    rows, findings, _ = _twin_night(store, monkeypatch, twin, data)  # the manifest declares the upright size
    _twin(rows, findings, twin)


@pytest.mark.fault("exif_orientation")
def test_an_exif_rotated_jpeg_declared_at_its_stored_size_is_refused(store, monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(np.ascontiguousarray(np.rot90(_twin_cur("c1")))), "JPEG", exif=exif.tobytes())
    rows, findings, _ = _twin_night(store, monkeypatch, "c1", data, declared=(H, W))
    _refused(rows, findings, "invalid_image", f"capture image: image header declares {W}x{H} px upright (EXIF orientation 6) "
                                             f"but the manifest declares {H}x{W}")
