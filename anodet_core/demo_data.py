"""Seeded generator of realistic demo depots (captures, manifests, references, labels) and paired-folder datasets.

Nothing here is a real photograph of a train, but every image is built from real photographic texture and
drawn, shaded parts, then degraded by the nuisances a robot camera meets between nights, so that a
change-detection network trained or demonstrated on it has to cope with the same difficulties as on site.

What is drawn
-------------
Each region ``(train, car, region)`` has one *canonical scene*, a deterministic function of
``(seed, train, car, region)``, rendered once per call in a frame ``margin`` px larger than the capture on every
side (``margin ~ 5.5 %`` of the capture diagonal, enough for the largest viewpoint change):

* background: two or three real photographic textures bundled with scikit-image and loaded offline
  (``brick``, ``gravel``, ``grass``, ``moon`` as the main one; ``camera``, ``coffee``, ``rocket``, ``chelsea``,
  ``astronaut``, ``immunohistochemistry`` as secondary ones), cropped, rotated, mirror-tiled and rescaled, mixed
  with region-specific weights at a low contrast, then tinted to a dark greyish-brown undercarriage palette with
  body panels of different tones separated by grooved seams, and low-frequency grime, rust and dust patches
  (fractal noise);
* parts, rendered analytically (signed distance functions, height fields and a Lambert + Blinn-Phong shading
  with a per-region light direction, textured albedo, soft drop shadows): structural beams (some with
  lightening holes), cover plates with rivets, painted labels and bolts, pipes (cylindrical shading, flanges,
  bolted clamps), brackets (L, T, U, I shapes) with bolts, cables (cubic Bézier curves entering from outside
  the frame, some ending in a gland), hex bolts, nuts on studs and dome-head bolts with washers. Part colours
  are dirtied toward the background and share its grime field; their albedo carries a fine real texture.

Each capture of a night is the canonical scene, plus an optional anomaly, seen through the nuisance model.

Nuisance model (per capture, seeded by ``(seed, night, train, car, region)``; ranges at 1920 x 1200, lengths
scale with the image diagonal)
----------------------------------------------------------------------------------------------------------
* viewpoint: translation uniform in +-40 px per axis, rotation +-2 deg, scale 0.97-1.03, about the image
  centre; applied with ``PIL.Image.transform(AFFINE, BILINEAR)`` from the canonical frame (the mask goes
  through the same transform with NEAREST, so it is exact in the cur frame). ``DemoSpec(viewpoint=False)``
  turns it off (identity crop);
* illumination: gain 0.72-1.3, per-channel white balance +-5 %, gamma 0.8-1.25, a linear gradient of up to
  +-20 % across the half diagonal in a random direction, the camera's vignetting (10-30 % in the corners, a
  property of the region's camera, +-5 % between captures), a soft lamp hot spot of up to +30 %, and uneven
  light (fractal noise, up to ~+-6 %);
* optics: defocus blur (a box blur of radius 0.3-0.9 px, in 40 % of captures);
* sensor: signal-dependent luma noise (read noise 0.8-2.6 levels, shot term 0.02-0.14 x level) plus
  low-frequency chroma noise (blotches of ~8 px, 0.3-1.2 levels at a mid-grey of 60);
* JPEG at ``DemoSpec.jpeg_quality`` (90).

The pinned reference of a region uses a neutral viewpoint (identity), neutral light (only the camera's
vignetting) and low noise, and no blur.

Anomalies (in ``anomaly_rate`` of the captures, exactly ``round(rate * n)``, types balanced to +-1, a quarter
of them *subtle*; seeded by ``(seed, night, train, car, region)``)
---------------------------------------------------------------------------------------------------------
* ``foreign_body``: a shaded, textured object of 40-250 px (log-uniform) with a drop shadow: a stone, a rag, a
  (translucent) plastic bottle, a piece of wire, a loose bolt or a piece of paper; subtle ones are blended
  40-60 % toward the local background colour. Mask: object alpha > 0.5 (not its cast shadow).
* ``missing_component``: the scene is re-rendered without one removable part group (a bolt, a bracket or clamp
  with its bolts, a small plate with its bolts, a cable); a missing bolt leaves a hole or a broken stud and a
  cleaner ring of paint. Mask: the visible footprint of the removed parts (alpha > 0.5, not hidden by parts
  drawn above). Subtle ones remove a single bolt (when one is in view).
* ``scratch``: one to four thin (1-3 px) jittered polylines of 60-400 px, bright (bare metal) or dark, fading
  along their length; subtle ones at 25-40 % strength. Mask: the drawn lines dilated by 2-4 px.
* ``oil_leak``: a dark, glossy, soft-edged irregular stain of radius 45-220 px with optional drips (fractal
  noise thresholded in an elliptic envelope, blurred edge, specular highlights from its thickness); subtle
  ones darken by only 22-38 %. Mask: stain alpha > 0.5.

Anomalies are drawn in the canonical frame at a point chosen in the cur frame (so they are in view), before
the nuisances: they are warped, lit and noised like the rest of the scene. Masks are 8-bit PNG (0/255) at the
capture's native size.

Speed (2-core dev machine, one core, CPU time; a concurrent training job inflated the upper figures): one
1920 x 1200 capture (anomaly + warp + photometry + JPEG encode, scene cached) takes 0.14-0.20 s (median; the
affine warp ~45 ms and the photometry ~60 ms dominate); building a region's canonical scene 0.6-1.5 s, once per
region per call, so the default spec (80 captures + 20 references) takes ~35 s in all.

Everything is seeded: the same spec gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import posixpath
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage as ndi

from .imaging import sha256
from .layout import Store, check_name, check_night

ANOMALY_TYPES = ("foreign_body", "missing_component", "scratch", "oil_leak")
FOREIGN_KINDS = ("stone", "rag", "bottle", "wire", "bolt", "paper")

_REF_DIAG = math.hypot(1920, 1200)
_F32 = np.float32

_PRIMARY_TEXTURES = ("brick", "gravel", "grass", "moon")
_PRIMARY_WEIGHTS = (0.2, 0.35, 0.2, 0.25)  # brick's mortar lines read as a wall: use it less
_SECONDARY_TEXTURES = ("camera", "coffee", "rocket", "chelsea", "astronaut", "immunohistochemistry")

# dark, dirty undercarriage colours (RGB, before shading and grime)
_PAINTS = {
    "steel": (105, 105, 101),
    "dark_grey": (64, 65, 66),
    "black": (40, 40, 41),
    "rust": (92, 70, 54),
    "green": (60, 68, 57),
    "primer": (88, 54, 44),
    "blue_grey": (70, 78, 86),
    "yellow": (132, 116, 60),
}
_PAINT_WEIGHTS = {"steel": 3, "dark_grey": 4, "black": 4, "rust": 2, "green": 1, "primer": 1, "blue_grey": 1.5, "yellow": 0.5}
_BOLT_COLORS = {"zinc": (146, 146, 138), "steel": (112, 112, 108), "black": (46, 46, 46), "rusty": (102, 80, 62)}
_CABLE_COLORS = {"black": (34, 34, 35), "orange": (150, 86, 42), "grey": (92, 92, 90), "blue": (38, 52, 80)}


# --------------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class DemoSpec:
    """What :func:`generate_depot` writes. Lengths in the nuisance and anomaly models scale with the diagonal."""

    depot: str = "demo"
    first_night: str = "2026-11-16"  # YYYY-MM-DD
    nights: int = 4
    trains: int = 2
    cars: int = 2
    regions: int = 5  # regions per car
    width: int = 1920
    height: int = 1200
    anomaly_rate: float = 1 / 3
    seed: int = 0
    jpeg_quality: int = 90
    viewpoint: bool = True  # False: no viewpoint change between nights (identity warp), for tests and demos


@dataclass
class DemoSummary:
    depot: str
    nights: list[str]
    n_captures: int
    n_anomalous: int
    n_references: int
    counts_by_type: dict[str, int] = field(default_factory=dict)


def train_ids(n: int) -> list[str]:
    return [f"T{i + 1:03d}" for i in range(n)]


def region_ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"R{j + 1:0{width}d}" for j in range(n)]


def capture_id(depot: str, night: str, train_id: str, car: int, region_id: str) -> str:
    """Path-safe, unique per (depot, night, train, car, region): ``demo-20261116-T001-c1-R01``."""
    return check_name(f"{depot}-{check_night(night).replace('-', '')}-{train_id}-c{int(car)}-{region_id}", "capture_id")


_PARALLEL_MEGAPIXELS = 100.0  # ~40 full-resolution captures: ~40 s of rendering on one core


def generate_depot(store: Store, spec: DemoSpec = DemoSpec(), *, workers: int = 0) -> DemoSummary:
    """Write references, captures, manifests, labels and masks of a demo depot into ``store``.

    Regions are rendered in ``workers`` processes (1: in this process; 0: one per core this process may use
    when the depot is large enough to repay starting them, ~2 s each); every image depends only on the seed and
    its keys, so the depot is the same for any ``workers``.
    """
    _check_spec(spec)
    depot = check_name(spec.depot, "depot")
    first = dt.date.fromisoformat(check_night(spec.first_night))
    nights = [(first + dt.timedelta(days=i)).isoformat() for i in range(spec.nights)]
    keys = [(t, c, r) for t in train_ids(spec.trains) for c in range(1, spec.cars + 1) for r in region_ids(spec.regions)]
    plan = _plan_anomalies(spec.seed, len(nights) * len(keys), spec.anomaly_rate, "depot")
    times = {night: _capture_times(spec.seed, night, keys) for night in nights}
    jobs = [
        _RegionJob(store, spec, depot, key, nights,
                   [plan.get(ni * len(keys) + ki, (None, False)) for ni in range(len(nights))],
                   [times[night][ki] for night in nights])
        for ki, key in enumerate(keys)
    ]
    if workers <= 0:
        from .config import available_cores

        megapixels = spec.width * spec.height * (len(nights) + 1) * len(keys) / 1e6
        workers = available_cores() if megapixels >= _PARALLEL_MEGAPIXELS else 1
    workers = min(workers, len(jobs))
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may hold threads (Dask, Prefect) that fork would copy mid-state
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            regions = list(pool.map(_generate_region, jobs))
    else:
        regions = [_generate_region(job) for job in jobs]

    manifests: dict[str, list[dict]] = {n: [] for n in nights}
    labels: dict[str, list[dict]] = {n: [] for n in nights}
    counts = {t: 0 for t in ANOMALY_TYPES}
    for rows, region_labels in regions:
        for night, row, label in zip(nights, rows, region_labels):
            manifests[night].append(row)
            labels[night].append(label)
            if label["anomaly_type"] is not None:
                counts[label["anomaly_type"]] += 1
    for night in nights:
        rows = sorted(manifests[night], key=lambda r: r["captured_at"])
        order = {r["capture_id"]: i for i, r in enumerate(rows)}
        store.write_manifest(depot, night, rows)
        store.write_labels(depot, night, sorted(labels[night], key=lambda r: order[r["capture_id"]]))

    return DemoSummary(
        depot=depot,
        nights=nights,
        n_captures=len(nights) * len(keys),
        n_anomalous=sum(counts.values()),
        n_references=len(keys),
        counts_by_type=counts,
    )


@dataclass
class _RegionJob:
    """One region of a demo depot over all nights, as a (picklable) unit of work for :func:`_generate_region`."""

    store: Store
    spec: DemoSpec
    depot: str
    key: tuple[str, int, str]  # (train_id, car, region_id)
    nights: list[str]
    wanted: list[tuple[str | None, bool]]  # per night: (anomaly type to paste or None, subtle)
    times: list[dt.datetime]  # per night: captured_at


def _generate_region(job: _RegionJob) -> tuple[list[dict], list[dict]]:
    """One region of a demo depot over all nights: writes its reference, captures and masks; returns its
    manifest rows and label rows, one per night."""
    store, spec, depot, nights, wanted, times = job.store, job.spec, job.depot, job.nights, job.wanted, job.times
    train, car, region = job.key
    scene = RegionScene(spec.seed, (train, car, region), spec.width, spec.height)  # cached for all nights
    ref, _, _ = scene.render(_rng(spec.seed, "reference", train, car, region), neutral=True)
    store.write_bytes(Store.reference_rel(train, car, region), encode_jpeg(ref, spec.jpeg_quality))
    rows, labels = [], []
    for night, (want, subtle), captured_at in zip(nights, wanted, times):
        cid = capture_id(depot, night, train, car, region)
        img, mask, atype = scene.render(
            _rng(spec.seed, "nuisance", night, train, car, region),
            anomaly=want,
            anomaly_rng=_rng(spec.seed, "anomaly", night, train, car, region),
            subtle=subtle,
            viewpoint=spec.viewpoint,
        )
        data = encode_jpeg(img, spec.jpeg_quality)
        rel = Store.capture_rel(depot, night, cid)
        store.write_bytes(rel, data)
        rows.append(
            dict(
                capture_id=cid, depot=depot, night=night, train_id=train, car=car, region_id=region,
                captured_at=captured_at, uri=rel, sha256=sha256(data),
                width=img.shape[1], height=img.shape[0],
            )
        )
        mask_uri = None
        if atype is not None:
            mask_uri = Store.mask_rel(depot, night, cid)
            store.write_bytes(mask_uri, encode_png(mask))  # type: ignore[arg-type]  # render() draws a mask with an anomaly
        labels.append(dict(capture_id=cid, anomalous=atype is not None, anomaly_type=atype, mask_uri=mask_uri))
    return rows, labels


def write_pair_folders(
    out_dir: str, n: int, *, seed: int = 0, width: int = 640, height: int = 400, anomaly_rate: float = 0.5
) -> list[str]:
    """Paired-folder dataset: ``out_dir/<pair_id>/cur.jpg, his.jpg, mask.png`` (mask white = anomaly, in the cur
    frame, all black for a normal pair). Each pair is its own region; cur and his get independent nuisances.
    ``out_dir`` may be any fsspec URL. Returns the pair ids (``pair00000``, ...)."""
    import fsspec

    if n < 0:
        raise ValueError("n must be >= 0")
    fs, base = fsspec.core.url_to_fs(out_dir)
    plan = _plan_anomalies(seed, n, anomaly_rate, "pairs")
    ids = []
    for i in range(n):
        pid = f"pair{i:05d}"
        scene = RegionScene(seed, ("pair", i), width, height)
        his, _, _ = scene.render(_rng(seed, "pair-his", i))
        want, subtle = plan.get(i, (None, False))
        cur, mask, _ = scene.render(_rng(seed, "pair-cur", i), anomaly=want, anomaly_rng=_rng(seed, "pair-anomaly", i), subtle=subtle)
        if mask is None:
            mask = np.zeros(cur.shape[:2], np.uint8)
        folder = posixpath.join(base, pid)
        fs.makedirs(folder, exist_ok=True)
        for name, data in (("cur.jpg", encode_jpeg(cur)), ("his.jpg", encode_jpeg(his)), ("mask.png", encode_png(mask))):
            with fs.open(posixpath.join(folder, name), "wb") as fh:
                fh.write(data)
        ids.append(pid)
    return ids


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- planning


def _check_spec(spec: DemoSpec) -> None:
    for name in ("nights", "trains", "cars", "regions"):
        if getattr(spec, name) < 1:
            raise ValueError(f"DemoSpec.{name} must be >= 1")
    if spec.width < 64 or spec.height < 64:
        raise ValueError("DemoSpec.width and height must be >= 64")
    if not 0.0 <= spec.anomaly_rate <= 1.0:
        raise ValueError("DemoSpec.anomaly_rate must be in [0, 1]")
    if not 1 <= spec.jpeg_quality <= 100:
        raise ValueError("DemoSpec.jpeg_quality must be in [1, 100]")


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (stable across runs and platforms)."""
    s = int(seed)
    words = [s & 0xFFFFFFFF, (s >> 32) & 0xFFFFFFFF, 0 if s >= 0 else 1]
    words += [zlib.crc32(repr(k).encode()) for k in keys]
    return np.random.default_rng(words)


def _plan_anomalies(seed: int, n: int, rate: float, what: str) -> dict[int, tuple[str, bool]]:
    """index -> (anomaly type, subtle) for exactly round(rate * n) of n items, types balanced to +-1."""
    rate = min(max(float(rate), 0.0), 1.0)
    k = int(round(rate * n))
    rng = _rng(seed, "plan", what)
    chosen = rng.permutation(n)[:k]
    offset = int(rng.integers(len(ANOMALY_TYPES)))
    types = [ANOMALY_TYPES[(i + offset) % len(ANOMALY_TYPES)] for i in range(k)]
    rng.shuffle(types)
    subtle = rng.random(k) < 0.25
    return {int(i): (t, bool(s)) for i, t, s in zip(chosen, types, subtle)}


def _capture_times(seed: int, night: str, keys: list[tuple[str, int, str]]) -> list[dt.datetime]:
    """01:00 UTC on the night's date, then 6-10 s per capture, trains in sequence with 5-15 min between them."""
    rng = _rng(seed, "clock", night)
    start = dt.datetime.combine(dt.date.fromisoformat(night), dt.time(1, 0), tzinfo=dt.UTC)
    t = float(rng.uniform(0, 120))
    out, prev_train = [], None
    for train, _, _ in keys:
        if prev_train is not None:
            t += rng.uniform(300, 900) if train != prev_train else rng.uniform(6, 10)
        prev_train = train
        out.append(start + dt.timedelta(microseconds=int(round(t * 1e6))))
    return out


# --------------------------------------------------------------------------------------------- textures, noise


@lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in _PRIMARY_TEXTURES + _SECONDARY_TEXTURES:
        a = np.asarray(getattr(data, name)())
        if a.ndim == 3:
            a = a[..., :3].astype(_F32) @ np.array([0.299, 0.587, 0.114], _F32)
        a = a.astype(_F32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
        out[name] = np.ascontiguousarray(a)
    return out


def _resize_f(a: np.ndarray, w: int, h: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=_F32)).resize((int(w), int(h)), resample))


def _tex_field(rng: np.random.Generator, name: str, w: int, h: int, scale: float) -> np.ndarray:
    """A (h, w) zero-mean unit-std crop of a real texture, rotated, mirror-tiled and rescaled by ``scale``."""
    src = _textures()[name]
    src = np.rot90(src, int(rng.integers(4)))
    if rng.random() < 0.5:
        src = src[:, ::-1]
    # render a tile of at most ~1024 source px and mirror-tile it (large fields at small scales stay cheap)
    tw, th = min(w, max(8, int(1024 * scale))), min(h, max(8, int(1024 * scale)))
    sw, sh = max(4, int(math.ceil(tw / scale))), max(4, int(math.ceil(th / scale)))
    ox, oy = int(rng.integers(src.shape[1])), int(rng.integers(src.shape[0]))
    big = np.pad(src, ((0, max(0, oy + sh - src.shape[0])), (0, max(0, ox + sw - src.shape[1]))), mode="symmetric")
    a = _resize_f(big[oy : oy + sh, ox : ox + sw], tw, th)
    if (tw, th) != (w, h):
        a = np.pad(a, ((0, h - th), (0, w - tw)), mode="symmetric")
    return (a - a.mean()) / (a.std() + 1e-6)


def _fbm(rng: np.random.Generator, w: int, h: int, cell: float, octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Smooth fractal noise, roughly unit std, features of about ``cell`` px and finer octaves."""
    out = np.zeros((h, w), _F32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(2.0, cell / 2**o)
        g = rng.standard_normal((int(h / c) + 3, int(w / c) + 3)).astype(_F32)
        out += amp * _resize_f(g, w, h, Image.Resampling.BICUBIC)
        total += amp * amp
        amp *= persistence
    return out / math.sqrt(total) * 1.6


def _seams(rng: np.random.Generator, n: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D luminance profile with 0-2 grooved panel seams across an axis of length n; seam positions with 0 and n."""
    prof = np.ones(n, _F32)
    cuts = np.sort(rng.uniform(0.1, 0.9, int(rng.integers(0, 3)))) * n
    x = np.arange(n, dtype=_F32) + 0.5
    for c in cuts:
        w = rng.uniform(1.5, 4) * k + 0.5
        d = (x - c) / w
        prof *= 1 - rng.uniform(0.35, 0.6) * np.exp(-d * d) + 0.15 * np.exp(-((d - 1.5) ** 2))  # dark groove, lit lip
    return prof, np.concatenate([[0.0], cuts, [float(n)]])


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------- geometry helpers


def _sd_box(u, v, hw, hh, rc=0.0):
    """Signed distance to a rounded box of half sizes (hw, hh) centred at the origin."""
    rc = min(rc, hw, hh)
    qx = np.abs(u) - (hw - rc)
    qy = np.abs(v) - (hh - rc)
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc


def _sd_hex(u, v, apothem):
    """Signed distance to a regular hexagon (flat top and bottom) of the given inner radius."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(u), np.abs(v)
    d = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - d * kx, py - d * ky
    px = px - np.clip(px, -kz * apothem, kz * apothem)
    py = py - apothem
    return np.hypot(px, py) * np.sign(py)


def _seg_dist(xs, ys, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    L2 = dx * dx + dy * dy
    if L2 < 1e-9:
        return np.hypot(xs - ax, ys - ay)
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / L2, 0, 1)
    return np.hypot(xs - ax - t * dx, ys - ay - t * dy)


def _polyline_dist(pts: np.ndarray, x0: int, y0: int, w: int, h: int, reach: float) -> np.ndarray:
    """Distance from pixel centres of the box (x0, y0, w, h) to a polyline, computed per segment in its bbox."""
    d = np.full((h, w), np.inf, _F32)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        sx0 = max(int(math.floor(min(ax, bx) - reach)) - x0, 0)
        sy0 = max(int(math.floor(min(ay, by) - reach)) - y0, 0)
        sx1 = min(int(math.ceil(max(ax, bx) + reach)) - x0 + 1, w)
        sy1 = min(int(math.ceil(max(ay, by) + reach)) - y0 + 1, h)
        if sx0 >= sx1 or sy0 >= sy1:
            continue
        xs = np.arange(x0 + sx0, x0 + sx1, dtype=_F32)[None, :] + 0.5
        ys = np.arange(y0 + sy0, y0 + sy1, dtype=_F32)[:, None] + 0.5
        np.minimum(d[sy0:sy1, sx0:sx1], _seg_dist(xs, ys, ax, ay, bx, by), out=d[sy0:sy1, sx0:sx1])
    return d


def _edge_point(rng: np.random.Generator, W: int, H: int, out: float) -> tuple[float, float]:
    """A point just outside a random edge of a W x H frame."""
    side = int(rng.integers(4))
    if side < 2:
        return float(rng.uniform(0, W)), (-out if side == 0 else H + out)
    return (-out if side == 2 else W + out), float(rng.uniform(0, H))


def _bezier(p: np.ndarray, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def _clip_boxes(x0, y0, h, w, win):
    """Intersect a patch at (x0, y0) of size (h, w) with a window (wx0, wy0, wx1, wy1): slices or None."""
    ax0, ay0 = max(x0, win[0]), max(y0, win[1])
    ax1, ay1 = min(x0 + w, win[2]), min(y0 + h, win[3])
    if ax0 >= ax1 or ay0 >= ay1:
        return None
    return (
        (slice(ay0 - win[1], ay1 - win[1]), slice(ax0 - win[0], ax1 - win[0])),
        (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0)),
    )


def _blur_alpha(alpha: np.ndarray, sigma: float, pad: int) -> np.ndarray:
    a = np.pad(np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8), pad)
    if sigma >= 0.3:
        a = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma)))
    return a.astype(_F32) / 255


def _draw_polyline_alpha(pts_local: np.ndarray, w: int, h: int, width_px: float, ss: int = 2) -> np.ndarray:
    img = Image.new("L", (w * ss, h * ss), 0)
    ImageDraw.Draw(img).line([tuple(p) for p in (pts_local * ss).tolist()], fill=255, width=max(1, int(round(width_px * ss))), joint="curve")
    return np.asarray(img.resize((w, h), Image.Resampling.BOX)).astype(_F32) / 255


def _rotate_f(a: np.ndarray, deg: float) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=_F32)).rotate(deg, Image.Resampling.BILINEAR, expand=True))


# --------------------------------------------------------------------------------------------- scene


@dataclass
class _Part:
    kind: str
    x0: int
    y0: int
    rgb: np.ndarray  # (h, w, 3) float32, shaded colour
    alpha: np.ndarray  # (h, w) float32 coverage
    shadow: np.ndarray | None = None  # (hs, ws) float32 darkening in [0, 1)
    sx0: int = 0
    sy0: int = 0
    hole: tuple[float, float, float, float] | None = None  # bolts: (cx, cy, head radius, footprint radius)


class RegionScene:
    """The canonical scene of one region (background + shaded parts) and the renderer of its captures."""

    def __init__(self, seed: int, key: tuple, width: int, height: int) -> None:
        self.W, self.H = int(width), int(height)
        diag = math.hypot(self.W, self.H)
        self.k = diag / _REF_DIAG  # length scale relative to 1920 x 1200
        self.m = int(math.ceil(0.055 * diag)) + 2  # margin of the canonical frame
        self.Wc, self.Hc = self.W + 2 * self.m, self.H + 2 * self.m
        rng = _rng(seed, "scene", *key)
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(48, 72))
        self.light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], _F32)
        half = self.light + np.array([0, 0, 1], _F32)
        self.half = half / np.linalg.norm(half)
        self.amb = float(rng.uniform(0.3, 0.42))
        self.vignetting = float(rng.uniform(0.1, 0.3))  # of the camera: varies by +-0.05 between captures
        self.bg, self.grime = self._background(rng)
        self._gpts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.parts: list[_Part] = []
        self.groups: list[tuple[str, list[int]]] = []  # removable groups: (kind, part indices)
        self._layout(rng)
        canvas = self.bg.copy()
        for p in self.parts:
            _composite(canvas, (0, 0, self.Wc, self.Hc), p)
        self.scene = _to_u8(canvas)

    # ------------------------------------------------------------------ background
    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        Wc, Hc, k = self.Wc, self.Hc, self.k
        prim = str(rng.choice(_PRIMARY_TEXTURES, p=_PRIMARY_WEIGHTS))
        others = [n for n in _PRIMARY_TEXTURES + _SECONDARY_TEXTURES if n != prim]
        acc = _tex_field(rng, prim, Wc, Hc, rng.uniform(0.9, 2.2) * k)
        for name in rng.choice(others, size=int(rng.integers(1, 3)), replace=False):
            acc += rng.uniform(0.25, 0.6) * _tex_field(rng, str(name), Wc, Hc, rng.uniform(0.8, 3.0) * k)
        acc *= rng.uniform(0.12, 0.26) / (acc.std() + 1e-6)  # log-luminance contrast of the texture
        # low-frequency fields at 1/4 resolution: grime, rust and dust
        lw, lh = max(8, Wc // 4), max(8, Hc // 4)
        grime = np.exp(rng.uniform(0.12, 0.25) * _resize_f(_fbm(rng, lw, lh, 95 * k, octaves=4), Wc, Hc)).astype(_F32)
        rust = _resize_f(_smoothstep(0.7, 1.7, _fbm(rng, lw, lh, 65 * k, octaves=3)) * rng.uniform(0.2, 0.55), Wc, Hc)
        dust = _resize_f(_smoothstep(0.8, 1.8, _fbm(rng, lw, lh, 50 * k, octaves=3)) * rng.uniform(0.15, 0.45), Wc, Hc)
        # large body panels: a tone per panel and grooved seams between them
        gx, tx = _seams(rng, Wc, k)
        gy, ty = _seams(rng, Hc, k)
        tone = rng.uniform(0.82, 1.18, (len(ty) - 1, len(tx) - 1)).astype(_F32)
        lum = np.exp(acc)
        lum *= grime
        lum *= tone[np.searchsorted(ty[1:-1], np.arange(Hc), side="right")][:, np.searchsorted(tx[1:-1], np.arange(Wc), side="right")]
        lum *= gy[:, None] * gx[None, :]
        lum *= rng.uniform(40, 72)
        tint = np.array([1.0, rng.uniform(0.9, 0.97), rng.uniform(0.8, 0.9)], _F32) * rng.uniform(0.95, 1.05)
        rust_c, dust_c = np.array([1.2, 0.92, 0.72], _F32), np.array([1.35, 1.3, 1.2], _F32)
        w_rust = rust * (1 - dust)
        w_base = (1 - rust) * (1 - dust)
        rgb = np.empty((Hc, Wc, 3), _F32)
        for c in range(3):  # lum * (tint, rust, dust mix), channel by channel
            rgb[..., c] = lum * (tint[c] * w_base + rust_c[c] * w_rust + dust_c[c] * dust)
        self.bg_mean = rgb[::13, ::13].reshape(-1, 3).mean(0)
        # two shared albedo textures for the parts (fine-grained real textures)
        self.ptex = [_tex_field(rng, str(rng.choice(("gravel", "moon", "grass"))), Wc, Hc, rng.uniform(0.3, 0.7) * k) for _ in range(2)]
        return rgb.astype(_F32), grime

    # ------------------------------------------------------------------ parts
    def _box(self, xa: float, ya: float, xb: float, yb: float):
        """Integer patch box covering [xa, xb] x [ya, yb], clipped to the canvas, with pixel-centre coordinates."""
        x0, y0 = max(int(math.floor(xa)), 0), max(int(math.floor(ya)), 0)
        x1, y1 = min(int(math.ceil(xb)) + 1, self.Wc), min(int(math.ceil(yb)) + 1, self.Hc)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1, dtype=_F32)[None, :] + 0.5
        ys = np.arange(y0, y1, dtype=_F32)[:, None] + 0.5
        return x0, y0, x1 - x0, y1 - y0, xs, ys

    def _albedo(self, rng, color, x0, y0, w, h, amp=None) -> np.ndarray:
        """Paint colour, dirtied toward the background, modulated by a shared real texture and the grime field."""
        amp = rng.uniform(0.04, 0.12) if amp is None else amp
        tex = self.ptex[int(rng.integers(2))][y0 : y0 + h, x0 : x0 + w]
        col = np.asarray(color, _F32) * rng.uniform(0.88, 1.12)
        col = col + (self.bg_mean - col) * rng.uniform(0.1, 0.35)
        mod = (1 + (amp if rng.random() < 0.5 else -amp) * tex) * self.grime[y0 : y0 + h, x0 : x0 + w]
        return col * np.maximum(mod, 0.2)[..., None]

    def _shade(self, height, albedo, spec=0.2, shin=20.0):
        return shade(height, albedo, self.light, self.half, self.amb, spec, shin)

    def _add(self, kind, x0, y0, rgb, alpha, obj_h, strength=0.45, hole=None) -> int:
        """Store a rendered part (patches cropped to where they have an effect) with its soft shadow."""
        sh, sx0, sy0 = _shadow(alpha, x0, y0, obj_h, self.light, strength)
        t = _tight(sh, 1e-3)
        if t is None:
            sh = None
        else:
            sh, sx0, sy0 = sh[t[0] : t[1], t[2] : t[3]], sx0 + t[2], sy0 + t[0]
        t = _tight(alpha, 0.0)
        if t is not None:
            rgb, alpha, x0, y0 = rgb[t[0] : t[1], t[2] : t[3]], alpha[t[0] : t[1], t[2] : t[3]], x0 + t[2], y0 + t[0]
        self.parts.append(_Part(kind, x0, y0, np.ascontiguousarray(rgb, _F32), np.ascontiguousarray(alpha, _F32), sh, sx0, sy0, hole))
        return len(self.parts) - 1

    def _bolt(self, rng, cx, cy, r, color=None) -> int | None:
        r = max(r, 2.5)
        washer = rng.random() < 0.8
        rw = r * rng.uniform(1.2, 1.45) if washer else r
        b = self._box(cx - rw - 2, cy - rw - 2, cx + rw + 2, cy + rw + 2)
        if b is None:
            return None
        x0, y0, w, h, xs, ys = b
        u, v = xs - cx, ys - cy
        rho = np.hypot(u, v)
        tw = 0.12 * r
        height = np.zeros((h, w), _F32)
        alpha = np.zeros((h, w), _F32)
        if washer:
            sdw = rho - rw
            alpha = np.clip(0.5 - sdw, 0, 1)
            height = tw * np.clip(-sdw / (0.12 * r + 1), 0, 1) ** 0.5
        style = rng.choice(["hex", "nut", "dome"], p=[0.55, 0.3, 0.15])
        if style == "dome":
            sdh = rho - r
            hh = tw + 0.5 * r * np.sqrt(np.clip(1 - (rho / r) ** 2, 0, 1))
        else:
            a = rng.uniform(0, math.pi / 3)
            ru, rv = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
            sdh = _sd_hex(ru, rv, r * 0.866)
            hh = tw + 0.55 * r * np.clip(-sdh / (0.2 * r + 0.5), 0, 1) ** 0.7
            if style == "nut":
                rs = 0.45 * r
                stud = np.clip(1 - (rho / rs) ** 2, 0, 1)
                hh = hh + 0.3 * r * np.sqrt(stud) + 0.03 * r * np.sin(rho / (0.1 * r) * 2 * math.pi) * (stud > 0)
        ah = np.clip(0.5 - sdh, 0, 1)
        height = height * (1 - ah) + hh * ah
        alpha = np.maximum(alpha, ah)
        col = color or _BOLT_COLORS[str(rng.choice(list(_BOLT_COLORS), p=[0.4, 0.25, 0.15, 0.2]))]
        alb = self._albedo(rng, col, x0, y0, w, h, amp=0.06)
        alb *= (1 - 0.12 * (1 - ah))[..., None]  # washer a little darker than the head
        rgb = self._shade(height, alb, spec=rng.uniform(0.25, 0.5), shin=25)
        return self._add("bolt", x0, y0, rgb, alpha, 0.55 * r, hole=(cx, cy, r, rw))

    def _flat_part(self, rng, kind, cx, cy, sd_fn, extent, color, thick, bevel, spec=0.15, rivets=(), label=None, obj_h=None):
        """Bevelled flat part from a signed distance function of local (u, v); returns the part index."""
        b = self._box(cx - extent, cy - extent, cx + extent, cy + extent)
        if b is None:
            return None
        x0, y0, w, h, xs, ys = b
        sd = sd_fn(xs - cx, ys - cy)
        alpha = np.clip(0.5 - sd, 0, 1)
        if alpha.max() < 0.5:
            return None
        height = thick * np.clip(-sd / bevel, 0, 1) ** 0.6
        for (rx, ry, rr) in rivets:
            sx0, sy0 = max(int(rx - rr) - x0 - 1, 0), max(int(ry - rr) - y0 - 1, 0)
            sx1, sy1 = min(int(rx + rr) - x0 + 2, w), min(int(ry + rr) - y0 + 2, h)
            if sx0 < sx1 and sy0 < sy1:
                rho = np.hypot(xs[:, sx0:sx1] - rx, ys[sy0:sy1] - ry)
                height[sy0:sy1, sx0:sx1] += 0.7 * rr * np.sqrt(np.clip(1 - (rho / rr) ** 2, 0, 1))
        alb = self._albedo(rng, color, x0, y0, w, h)
        if label is not None:
            lab = label(xs - cx, ys - cy)
            alb = alb * (1 - lab[0][..., None]) + lab[0][..., None] * lab[1] * self.grime[y0 : y0 + h, x0 : x0 + w, None]
        rgb = self._shade(height, alb, spec=spec, shin=rng.uniform(10, 30))
        return self._add(kind, x0, y0, rgb, alpha, obj_h if obj_h is not None else thick * 1.3)

    def _tube(self, rng, kind, pts, r, color, spec=0.3, shin=30.0):
        pts = np.asarray(pts, _F32)
        b = self._box(pts[:, 0].min() - r - 2, pts[:, 1].min() - r - 2, pts[:, 0].max() + r + 2, pts[:, 1].max() + r + 2)
        if b is None:
            return None
        x0, y0, w, h, _, _ = b
        d = _polyline_dist(pts, x0, y0, w, h, r + 2)
        alpha = np.clip(r + 0.5 - d, 0, 1)
        if alpha.max() < 0.5:
            return None
        height = np.sqrt(np.clip(r * r - np.minimum(d, r) ** 2, 0, None))
        alb = self._albedo(rng, color, x0, y0, w, h)
        rgb = self._shade(height, alb, spec=spec, shin=shin)
        return self._add(kind, x0, y0, rgb, alpha, 0.8 * r)

    def _paint(self, rng, choices=None):
        names = list(choices or _PAINTS)
        w = np.array([_PAINT_WEIGHTS[n] for n in names])
        return _PAINTS[str(rng.choice(names, p=w / w.sum()))]

    def _layout(self, rng: np.random.Generator) -> None:
        Wc, Hc, k = self.Wc, self.Hc, self.k
        bolts_later: list[tuple[float, float, float, int | None]] = []  # (cx, cy, r, group) drawn last
        groups: list[tuple[str, list[int]]] = []

        def new_group(kind):
            groups.append((kind, []))
            return len(groups) - 1

        # structural beams, running across the frame
        for _ in range(int(rng.integers(0, 3))):
            horiz = rng.random() < 0.6
            t = rng.uniform(150, 420) * k / 2
            c = rng.uniform(0.1, 0.9) * (Hc if horiz else Wc)
            L = (Wc if horiz else Hc) / 2 + 40 * k
            cx, cy = (Wc / 2, c) if horiz else (c, Hc / 2)
            hw, hh = (L, t) if horiz else (t, L)
            holes: Any = None  # a beam's (radius, step, offset); a plate's list of (u, v, radius) below
            if rng.random() < 0.4:  # a periodic row of lightening holes along the beam
                hr = rng.uniform(0.3, 0.6) * t
                holes = (hr, rng.uniform(3.0, 5.0) * hr, rng.uniform(0, 1))

            def sd_beam(u, v, hw=hw, hh=hh, holes=holes, horiz=horiz):
                sd = _sd_box(u, v, hw, hh, 0)
                if holes is not None:
                    hr, step, off = holes
                    along, across = (u, v) if horiz else (v, u)
                    along = np.mod(along + off * step, step) - step / 2
                    sd = np.maximum(sd, -(np.hypot(along, across) - hr))
                return sd

            col = self.bg.reshape(-1, 3)[:: 97].mean(0) * rng.uniform(0.65, 1.5)
            self._flat_part(rng, "beam", cx, cy, sd_beam, max(hw, hh), col, rng.uniform(8, 16) * k, rng.uniform(6, 14) * k,
                            obj_h=rng.uniform(10, 25) * k)
            if rng.random() < 0.5:  # a row of bolts along one edge
                r = rng.uniform(12, 22) * k
                e = rng.choice([-1, 1]) * (t - 2.2 * r)
                step = rng.uniform(5, 9) * r
                for s in np.arange(-L + rng.uniform(0, step), L, step):
                    bx, by = (cx + s, cy + e) if horiz else (cx + e, cy + s)
                    bolts_later.append((bx, by, r, new_group("bolt")))

        # cover plates with rivets, labels, bolts and holes
        for _ in range(int(rng.integers(1, 4))):
            hw, hh = rng.uniform(90, 300) * k, rng.uniform(70, 220) * k
            cx, cy = rng.uniform(0.1, 0.9) * Wc, rng.uniform(0.1, 0.9) * Hc
            ang = math.radians(rng.normal(0, 4) if rng.random() < 0.75 else rng.uniform(0, 180))
            ca, sa = math.cos(ang), math.sin(ang)
            rc = rng.uniform(0.02, 0.15) * min(hw, hh)
            holes = []
            if rng.random() < 0.25:
                hr = rng.uniform(0.15, 0.3) * min(hw, hh)
                holes = [(rng.uniform(-0.5, 0.5) * hw, rng.uniform(-0.4, 0.4) * hh, hr)]

            def to_canvas(lu, lv, cx=cx, cy=cy, ca=ca, sa=sa):
                return cx + lu * ca - lv * sa, cy + lu * sa + lv * ca

            def sd_plate(u, v, hw=hw, hh=hh, rc=rc, holes=holes, ca=ca, sa=sa):
                lu, lv = u * ca + v * sa, -u * sa + v * ca
                sd = _sd_box(lu, lv, hw, hh, rc)
                for hu, hv, hr in holes:
                    sd = np.maximum(sd, -(np.hypot(lu - hu, lv - hv) - hr))
                return sd

            rivets = []
            if rng.random() < 0.45:
                rr = rng.uniform(5, 9) * k
                ins = 2.3 * rr
                step = rng.uniform(5, 9) * rr
                for s in np.arange(-hw + ins, hw - ins + 1e-3, step):
                    rivets += [(*to_canvas(s, -hh + ins), rr), (*to_canvas(s, hh - ins), rr)]
                for s in np.arange(-hh + ins + step, hh - ins - 1e-3, step):
                    rivets += [(*to_canvas(-hw + ins, s), rr), (*to_canvas(hw - ins, s), rr)]
            label = None
            if rng.random() < 0.3:
                lw, lh = rng.uniform(0.25, 0.45) * hw, rng.uniform(0.15, 0.3) * hh
                lu0, lv0 = rng.uniform(-0.3, 0.3) * hw, rng.uniform(-0.4, 0.4) * hh
                lcol = np.array([(175, 165, 120), (170, 170, 160), (160, 140, 60)][int(rng.integers(3))], _F32)
                bars = [(rng.uniform(-0.7, 0.3) * lw, (i - 1) * lh * 0.45, rng.uniform(0.2, 0.6) * lw) for i in range(3)]

                def label(u, v, lw=lw, lh=lh, lu0=lu0, lv0=lv0, lcol=lcol, bars=bars, ca=ca, sa=sa):
                    lu, lv = u * ca + v * sa - lu0, -u * sa + v * ca - lv0
                    a = np.clip(0.5 - _sd_box(lu, lv, lw, lh, 2 * k), 0, 1) * 0.9
                    col = np.broadcast_to(lcol, a.shape + (3,)).copy()
                    for bu, bv, bl in bars:
                        t = np.clip(0.5 - _sd_box(lu - bu - bl, lv - bv, bl, max(lh * 0.1, 1.0)), 0, 1)
                        col *= (1 - 0.8 * t)[..., None]
                    return a, col

            color = self._paint(rng)
            small = hw * hh < (170 * k) ** 2
            g = new_group("plate") if small and rng.random() < 0.7 else None
            idx = self._flat_part(rng, "plate", cx, cy, sd_plate, math.hypot(hw, hh) + 2, color, rng.uniform(4, 9) * k,
                                  rng.uniform(3, 8) * k, spec=rng.uniform(0.08, 0.3), rivets=rivets, label=label)
            if idx is None:
                if g is not None:
                    groups.pop()
                continue
            if g is not None:
                groups[g][1].append(idx)
            if rng.random() < 0.5:  # bolts at the corners or along a side
                r = rng.uniform(11, 20) * k
                ins = rng.uniform(1.8, 2.6) * r
                if rng.random() < 0.5:
                    spots = [(-hw + ins, -hh + ins), (hw - ins, -hh + ins), (-hw + ins, hh - ins), (hw - ins, hh - ins)]
                else:
                    n = int(rng.integers(2, 6))
                    side = rng.choice([-1, 1]) * (hh - ins)
                    spots = [(s, side) for s in np.linspace(-hw + ins, hw - ins, n)]
                for su, sv in spots:
                    bolts_later.append((*to_canvas(su, sv), r, g if g is not None else new_group("bolt")))

        # pipes with flanges and bolted clamps
        clamps = []
        for _ in range(int(rng.integers(0, 3))):
            r = rng.uniform(16, 42) * k
            horiz = rng.random() < 0.7
            A, B = (Wc, Hc) if horiz else (Hc, Wc)
            c0 = rng.uniform(0.12, 0.88) * B
            xs_ = np.sort(rng.uniform(0.15, 0.85, int(rng.integers(0, 3)))) * A
            pts: Any = [(-3 * r, c0)]  # knots, then their array (a cable's curve below)
            c = c0
            for x in xs_:
                dc = rng.uniform(-0.25, 0.25) * B
                pts += [(x - abs(dc) * 0.5, c), (x + abs(dc) * 0.5, c + dc)]
                c = c + dc
            pts.append((A + 3 * r, c))
            pts = np.array(pts if horiz else [(y, x) for x, y in pts], _F32)
            col = self._paint(rng, ["steel", "black", "green", "rust", "dark_grey", "blue_grey"])
            idx = self._tube(rng, "pipe", pts, r, col, spec=rng.uniform(0.15, 0.5), shin=rng.uniform(15, 40))
            if idx is None:
                continue
            seg = int(rng.integers(len(pts) - 1))
            (ax, ay), (bx, by) = pts[seg], pts[seg + 1]
            L = math.hypot(bx - ax, by - ay)
            if L > 6 * r:
                ux, uy = (bx - ax) / L, (by - ay) / L
                for j in range(int(rng.integers(1, 3))):
                    t = rng.uniform(2 * r, L - 2 * r)
                    clamps.append((ax + ux * t, ay + uy * t, ux, uy, r, j == 0 and rng.random() < 0.4))

        for px, py, ux, uy, r, is_flange in clamps:
            ang = math.atan2(uy, ux)
            ca, sa = math.cos(ang), math.sin(ang)
            if is_flange:
                R, bw = r * rng.uniform(1.25, 1.45), r * rng.uniform(0.25, 0.4)

                def sd_fl(u, v, R=R, bw=bw, ca=ca, sa=sa):
                    return _sd_box(u * ca + v * sa, -u * sa + v * ca, bw, R, 0.15 * bw)

                self._flat_part(rng, "flange", px, py, sd_fl, R + bw + 2, self._paint(rng), R, 0.5 * R)
                continue
            tab = r * rng.uniform(0.6, 1.0)
            bw = r * rng.uniform(0.45, 0.8)
            R = r * 1.12 + tab

            def sd_cl(u, v, R=R, bw=bw, ca=ca, sa=sa):
                return _sd_box(u * ca + v * sa, -u * sa + v * ca, bw, R, 0.3 * bw)

            g = new_group("clamp")
            idx = self._flat_part(rng, "clamp", px, py, sd_cl, R + bw + 2, self._paint(rng, ["steel", "black", "dark_grey"]),
                                  r * 0.9, 0.45 * r, spec=0.3)
            if idx is None:
                groups.pop()
                continue
            groups[g][1].append(idx)
            br = min(0.42 * tab, 0.8 * bw)
            for s in (-1, 1):
                bolts_later.append((px - sa * s * (R - tab / 2), py + ca * s * (R - tab / 2), br, g))

        # brackets with bolts
        for _ in range(int(rng.integers(1, 5))):
            a, b2 = rng.uniform(70, 190) * k, rng.uniform(60, 170) * k
            wd = rng.uniform(22, 50) * k
            shape = str(rng.choice(["L", "T", "U", "I"]))
            if shape == "L":
                boxes = [(a / 2, 0, a / 2 + wd / 2, wd / 2), (0, b2 / 2, wd / 2, b2 / 2 + wd / 2)]
                spots = [(a - wd * 0.4, 0), (0, b2 - wd * 0.4)]
            elif shape == "T":
                boxes = [(0, 0, a / 2, wd / 2), (0, b2 / 2, wd / 2, b2 / 2)]
                spots = [(-a / 2 + wd * 0.6, 0), (a / 2 - wd * 0.6, 0)]
            elif shape == "U":
                boxes = [(0, 0, a / 2, wd / 2), (-a / 2 + wd / 2, b2 / 2, wd / 2, b2 / 2), (a / 2 - wd / 2, b2 / 2, wd / 2, b2 / 2)]
                spots = [(-a / 2 + wd / 2, b2 - wd * 0.4), (a / 2 - wd / 2, b2 - wd * 0.4)]
            else:
                boxes = [(0, 0, a / 2 + wd / 2, wd / 2)]
                spots = [(-a / 2, 0), (a / 2, 0)]
            ang = rng.uniform(0, 2 * math.pi)
            ca, sa = math.cos(ang), math.sin(ang)
            cx, cy = rng.uniform(0.08, 0.92) * Wc, rng.uniform(0.08, 0.92) * Hc
            rc = rng.uniform(0.1, 0.5) * wd

            def sd_br(u, v, boxes=boxes, ca=ca, sa=sa, rc=rc):
                lu, lv = u * ca + v * sa, -u * sa + v * ca
                sd = None
                for bx, by, hw, hh in boxes:
                    s = _sd_box(lu - bx, lv - by, hw, hh, rc)
                    sd = s if sd is None else np.minimum(sd, s)
                return sd

            g = new_group("bracket")
            idx = self._flat_part(rng, "bracket", cx, cy, sd_br, a + b2 + wd, self._paint(rng), rng.uniform(6, 12) * k,
                                  rng.uniform(3, 6) * k, spec=rng.uniform(0.1, 0.35))
            if idx is None:
                groups.pop()
                continue
            groups[g][1].append(idx)
            br = wd * rng.uniform(0.28, 0.38)
            for su, sv in spots:
                bolts_later.append((cx + su * ca - sv * sa, cy + su * sa + sv * ca, br, g))

        # cables (cubic Bezier curves)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(4, 11) * k
            p = np.array([(rng.uniform(-0.1, 1.1) * Wc, rng.uniform(-0.1, 1.1) * Hc) for _ in range(4)], _F32)
            p[0] = _edge_point(rng, Wc, Hc, 30 * k)  # cables come from outside the frame
            gland = rng.random() < 0.3  # ... and either leave it or end in a cable gland
            if not gland:
                p[3] = _edge_point(rng, Wc, Hc, 30 * k)
            pts = _bezier(p, 48)
            col = _CABLE_COLORS[str(rng.choice(list(_CABLE_COLORS), p=[0.5, 0.2, 0.2, 0.1]))]
            g = new_group("cable")
            idx = self._tube(rng, "cable", pts, r, col, spec=rng.uniform(0.1, 0.35), shin=20)
            if idx is None:
                groups.pop()
                continue
            groups[g][1].append(idx)
            if gland:
                bolts_later.append((float(p[3][0]), float(p[3][1]), r * rng.uniform(1.8, 2.4), g))
            if rng.random() < 0.35:  # a second cable alongside
                nrm = np.gradient(pts, axis=0)[:, ::-1] * np.array([1, -1], _F32)
                nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-6
                idx2 = self._tube(rng, "cable", pts + nrm * 2.1 * r, r, col, spec=0.2, shin=20)
                if idx2 is not None:
                    groups[g][1].append(idx2)

        # loose rows of bolts anywhere, then all bolts on top
        for _ in range(int(rng.integers(0, 3))):
            r = rng.uniform(12, 26) * k
            cx, cy, ang = rng.uniform(0.1, 0.9) * Wc, rng.uniform(0.1, 0.9) * Hc, rng.uniform(0, math.pi)
            step = rng.uniform(3.5, 7) * r
            n = int(rng.integers(1, 5))
            for i in range(n):
                s = (i - (n - 1) / 2) * step
                bolts_later.append((cx + s * math.cos(ang), cy + s * math.sin(ang), r, new_group("bolt")))
        for bx, by, r, g in bolts_later:
            idx = self._bolt(rng, bx, by, r)
            if idx is not None and g is not None:
                groups[g][1].append(idx)
        self.groups = [(kind, idxs) for kind, idxs in groups if idxs]

    # ------------------------------------------------------------------ rendering
    def viewpoint(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """(tx, ty, rotation rad, scale): always draws the same numbers from ``rng``."""
        tx, ty = rng.uniform(-40, 40, 2) * self.k
        rot = math.radians(rng.uniform(-2, 2))
        s = rng.uniform(0.97, 1.03)
        return float(tx), float(ty), rot, float(s)

    def affine(self, tx: float, ty: float, rot: float, s: float) -> tuple[float, ...]:
        """PIL AFFINE data mapping a cur pixel to the canonical frame: p_c = c_c + t + s R(rot) (p - c)."""
        a, b = s * math.cos(rot), -s * math.sin(rot)
        d, e = s * math.sin(rot), s * math.cos(rot)
        cx, cy = self.W / 2, self.H / 2
        c = self.m + cx + tx - (a * cx + b * cy)
        f = self.m + cy + ty - (d * cx + e * cy)
        return (a, b, c, d, e, f)

    def render(
        self,
        rng: np.random.Generator,
        *,
        anomaly: str | None = None,
        anomaly_rng: np.random.Generator | None = None,
        subtle: bool = False,
        viewpoint: bool = True,
        neutral: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """One capture: (RGB uint8 image, uint8 0/255 mask or None, anomaly type actually drawn or None).

        ``neutral``: the pinned reference (identity viewpoint, neutral light, low noise). The nuisance draws
        from ``rng`` do not depend on the anomaly, so the same ``rng`` state with and without an anomaly gives
        images that differ only where the anomaly was drawn."""
        vp = self.viewpoint(rng)
        data = self.affine(*vp) if viewpoint and not neutral else self.identity
        scene, mask, atype = self.scene, None, None
        if anomaly is not None:
            atype, scene, mask = self._draw_anomaly(anomaly_rng if anomaly_rng is not None else rng, anomaly, subtle, data)
        img = self._warp(scene, data)
        return self._photometric(rng, img, neutral), mask, atype

    @property
    def identity(self) -> tuple[float, ...]:
        return (1.0, 0.0, float(self.m), 0.0, 1.0, float(self.m))

    def _warp(self, a: np.ndarray, data: tuple[float, ...]) -> np.ndarray:
        """Canonical frame -> cur frame, bilinear (an exact crop for the identity viewpoint)."""
        if data == self.identity:
            return np.ascontiguousarray(a[self.m : self.m + self.H, self.m : self.m + self.W])
        return np.asarray(Image.fromarray(a).transform((self.W, self.H), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR))

    def _warp_mask(self, m: np.ndarray, x0: int, y0: int, data: tuple[float, ...]) -> np.ndarray:
        """A boolean canonical-frame window at (x0, y0) -> uint8 0/255 mask of the cur frame (NEAREST, same affine)."""
        out = np.zeros((self.H, self.W), np.uint8)
        h, w = m.shape
        if data == self.identity:
            cl = _clip_boxes(x0 - self.m, y0 - self.m, h, w, (0, 0, self.W, self.H))
            if cl is not None:
                (dy, dx), (py, px) = cl
                out[dy, dx][m[py, px]] = 255
            return out
        a, b, c, d, e, f = data
        ia, ib, ic, id_, ie, if_ = _invert_affine(data)
        cx = np.array([x0, x0 + w, x0, x0 + w], float)
        cy = np.array([y0, y0, y0 + h, y0 + h], float)
        px, py = ia * cx + ib * cy + ic, id_ * cx + ie * cy + if_
        bx0, by0 = max(int(math.floor(px.min())) - 2, 0), max(int(math.floor(py.min())) - 2, 0)
        bx1, by1 = min(int(math.ceil(px.max())) + 2, self.W), min(int(math.ceil(py.max())) + 2, self.H)
        if bx0 >= bx1 or by0 >= by1:
            return out
        sub = (a, b, a * bx0 + b * by0 + c - x0, d, e, d * bx0 + e * by0 + f - y0)
        src = Image.fromarray(np.where(m, 255, 0).astype(np.uint8))
        out[by0:by1, bx0:bx1] = np.asarray(src.transform((bx1 - bx0, by1 - by0), Image.Transform.AFFINE, sub, Image.Resampling.NEAREST))
        return out

    def _photometric(self, rng: np.random.Generator, img: np.ndarray, neutral: bool) -> np.ndarray:
        H, W = img.shape[:2]
        k = self.k
        gain, gamma = rng.uniform(0.72, 1.3), rng.uniform(0.8, 1.25)
        wb = 1 + rng.uniform(-0.05, 0.05, 3)
        grad_a, grad_phi = rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * math.pi)
        vign, spot_h = self.vignetting + rng.uniform(-0.05, 0.05), rng.uniform(0, 0.3)
        spot_c, spot_s = rng.uniform(-0.6, 0.6, 2), rng.uniform(0.35, 0.9)
        uneven = rng.uniform(0, 0.04)
        blur = rng.uniform(0.3, 0.9) if rng.random() < 0.4 else 0.0
        read, shot, chroma = rng.uniform(0.8, 2.6), rng.uniform(0.02, 0.14), rng.uniform(0.3, 1.2)
        if neutral:
            gain, gamma, wb = 1.0, 1.0, np.ones(3)
            grad_a = spot_h = uneven = blur = 0.0
            vign = self.vignetting
            read, shot, chroma = 0.8, 0.03, 0.3
        # illumination field at 1/8 resolution, upsampled
        fw, fh = max(8, W // 8), max(8, H // 8)
        half_diag = math.hypot(W, H) / 2
        X = ((np.arange(fw, dtype=_F32) + 0.5) * W / fw - W / 2)[None, :] / half_diag
        Y = ((np.arange(fh, dtype=_F32) + 0.5) * H / fh - H / 2)[:, None] / half_diag
        F = gain * (1 + grad_a * (X * math.cos(grad_phi) + Y * math.sin(grad_phi)))
        F = F * (1 - vign * (X * X + Y * Y))
        F = F * (1 + spot_h * np.exp(-((X - spot_c[0]) ** 2 + (Y - spot_c[1]) ** 2) / (2 * spot_s**2)))
        F = F * np.exp(uneven * _fbm(rng, fw, fh, max(2.0, 250 * k / 8), octaves=2))
        Fg = np.power(np.maximum(F, 1e-3), gamma).astype(_F32)
        # low-frequency chroma noise, folded into the field as a per-channel gain (levels relative to ~60)
        cn = rng.standard_normal((3, fh, fw)).astype(_F32) * (chroma / 60)
        Fg = np.stack([_resize_f(Fg * (1 + cn[c]), W, H) for c in range(3)], -1)
        # tone curve and white balance as a LUT (gamma commutes with the illumination gain: (gx)^y = g^y x^y)
        v = np.arange(256, dtype=np.float64) / 255
        lut = np.concatenate([np.clip(255 * np.power(v * wb[c], gamma), 0, 255) for c in range(3)])
        pim = Image.fromarray(img)
        if blur * k >= 0.25:
            pim = pim.filter(ImageFilter.BoxBlur(blur * k))
        base = np.asarray(pim.point(np.rint(lut).astype(np.uint8).tolist()))
        x = base.astype(_F32)
        x *= Fg
        sig_lut = np.sqrt(read * read + shot * np.arange(256, dtype=_F32)).astype(_F32)
        n = rng.standard_normal((H, W), dtype=_F32)
        n *= sig_lut[base[..., 1]]
        n += 0.5  # round, not truncate, below
        x += n[..., None]
        np.clip(x, 0, 255, out=x)
        return x.astype(np.uint8)

    # ------------------------------------------------------------------ anomalies
    def _draw_anomaly(self, rng, kind, subtle, data) -> tuple[str | None, np.ndarray, np.ndarray | None]:
        """Draw ``kind`` (falling back to a foreign body): (type drawn, canonical scene copy, cur-frame mask)."""
        a, b, c, d, e, f = data

        def pick(size):  # a canonical-frame point whose neighbourhood of ``size`` is in the cur view
            pad = min(size / 2 + 6 * self.k + 2, self.W / 2 - 1, self.H / 2 - 1)
            px, py = rng.uniform(pad, self.W - pad), rng.uniform(pad, self.H - pad)
            return a * px + b * py + c, d * px + e * py + f

        min_px = max(6, int(40 * self.k * self.k))
        for attempt in range(6):
            want = kind if attempt < 4 else "foreign_body"
            if want == "missing_component":
                res = self._missing(rng, subtle, data)
            elif want == "scratch":
                res = self._scratch(rng, subtle, pick)
            elif want == "oil_leak":
                res = self._oil(rng, subtle, pick)
            else:
                res = self._foreign(rng, subtle, pick)
            if res is None:
                continue
            (x0, y0), pix, m = res
            mask = self._warp_mask(m, x0, y0, data)
            if int(np.count_nonzero(mask)) >= min_px:
                scene = self.scene.copy()
                scene[y0 : y0 + pix.shape[0], x0 : x0 + pix.shape[1]] = pix
                return want, scene, mask
        return None, self.scene, None  # pragma: no cover - practically unreachable

    def _patch_window(self, x0: int, y0: int, h: int, w: int):
        """Canonical window covering a patch at (x0, y0), clipped: (win, dst slices, patch slices) or None."""
        win = (max(x0, 0), max(y0, 0), min(x0 + w, self.Wc), min(y0 + h, self.Hc))
        cl = _clip_boxes(x0, y0, h, w, win)
        return None if cl is None else (win, *cl)

    def _foreign(self, rng, subtle, pick):
        k = self.k
        kind = str(rng.choice(FOREIGN_KINDS, p=[0.24, 0.18, 0.14, 0.2, 0.12, 0.12]))
        S = max(math.exp(rng.uniform(math.log(40), math.log(250))) * k, 8.0)
        alpha, height, alb, spec, shin, obj_h = _foreign_object(rng, kind, S, k)
        ang = rng.uniform(0, 360)
        alpha, height = _rotate_f(alpha, ang), _rotate_f(height, ang)
        alb = np.stack([_rotate_f(alb[..., i], ang) for i in range(3)], -1)
        h, w = alpha.shape
        cx, cy = pick(max(h, w) * 0.8)
        x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
        rgb = shade(height, alb, self.light, self.half, self.amb, spec, shin)
        sh, sx0, sy0 = _shadow(alpha, x0, y0, obj_h, self.light, rng.uniform(0.3, 0.5))
        pw = self._patch_window(min(x0, sx0), min(y0, sy0), max(y0 + h, sy0 + sh.shape[0]) - min(y0, sy0),
                                max(x0 + w, sx0 + sh.shape[1]) - min(x0, sx0))
        if pw is None:
            return None
        win = pw[0]
        dst = self.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
        if subtle:
            rgb = rgb + (dst.reshape(-1, 3).mean(0) - rgb) * rng.uniform(0.4, 0.6)
        _composite(dst, win, _Part(kind, x0, y0, rgb, alpha, sh, sx0, sy0))
        m = np.zeros(dst.shape[:2], bool)
        _or_mask(m, alpha > 0.5, x0 - win[0], y0 - win[1])
        return (win[0], win[1]), _to_u8(dst), m

    def _scratch(self, rng, subtle, pick):
        k = self.k
        L = math.exp(rng.uniform(math.log(60), math.log(400))) * k
        n = int(rng.integers(1, 5))
        phi = rng.uniform(0, math.pi)
        P = int(L * 1.4 + 60 * k + 8)
        cx, cy = pick(L * 0.9)
        x0, y0 = int(cx - P / 2), int(cy - P / 2)
        raw = np.zeros((P, P), _F32)
        spread = rng.uniform(8, 40) * k
        width = rng.uniform(0.8, 2.8) * k + 0.35
        for _ in range(n):
            Li = L * rng.uniform(0.5, 1.0)
            off = rng.uniform(-1, 1) * spread
            start = np.array([P / 2, P / 2]) + off * np.array([-math.sin(phi), math.cos(phi)]) - Li / 2 * np.array([math.cos(phi), math.sin(phi)])
            steps = 14
            ang = phi + np.cumsum(rng.normal(0, math.radians(3), steps)) + np.linspace(0, rng.normal(0, 0.15), steps)
            pts = start + np.concatenate([[[0, 0]], np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * (Li / steps), 0)])
            raw = np.maximum(raw, _draw_polyline_alpha(pts, P, P, width * rng.uniform(0.7, 1.2)))
        if raw.max() < 0.3:
            return None
        fade = 0.35 + 0.65 * _smoothstep(-1.2, 0.8, _fbm(rng, P, P, max(L / 3, 4), octaves=2))
        strength = rng.uniform(0.25, 0.4) if subtle else rng.uniform(0.55, 0.95)
        al = raw * fade * strength
        pw = self._patch_window(x0, y0, P, P)
        if pw is None:
            return None
        win, (dy, dx), (py, px) = pw
        dst = self.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
        a = al[py, px][..., None]
        if rng.random() < 0.65:  # bright: bare metal
            metal = rng.uniform(170, 215) * np.array([0.97, 0.99, 1.02], _F32)
            dst[dy, dx] += (metal - dst[dy, dx]) * a
        else:  # dark: a gouge in the grime
            dst[dy, dx] *= 1 - 0.65 * a
        rd = max(1, int(round(rng.uniform(2, 4) * k)))
        m = ndi.binary_dilation(raw > 0.2, structure=_disk(rd))[py, px]
        return (win[0], win[1]), _to_u8(dst), m

    def _oil(self, rng, subtle, pick):
        k = self.k
        R = max(math.exp(rng.uniform(math.log(45), math.log(220))) * k, 6.0)
        P = int(4.6 * R) + 8
        aspect, ang = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
        cx, cy = pick(2.2 * R)
        x0, y0 = int(cx - P / 2), int(cy - P / 2)
        q = max(1.0, R / 50)  # the stain is smooth: build its fields at ~50 px radius, then upsample
        Pl = max(8, int(math.ceil(P / q)))
        xs = (np.arange(Pl, dtype=_F32)[None, :] + 0.5) * (P / Pl) - P / 2
        ys = (np.arange(Pl, dtype=_F32)[:, None] + 0.5) * (P / Pl) - P / 2
        u, v = xs * math.cos(ang) + ys * math.sin(ang), -xs * math.sin(ang) + ys * math.cos(ang)
        f = 1 - (u / R) ** 2 - (v / (R * aspect)) ** 2 + 0.45 * _fbm(rng, Pl, Pl, R * 0.6 / q, octaves=3)
        if rng.random() < 0.5:  # drips, mostly "down" the image
            dphi = math.pi / 2 + rng.normal(0, 0.4)
            for _ in range(int(rng.integers(1, 5))):
                sx, sy = rng.uniform(-0.5, 0.5, 2) * R
                Ld, wd = R * rng.uniform(0.5, 1.2), R * rng.uniform(0.06, 0.14)
                dd = _seg_dist(xs, ys, sx, sy, sx + Ld * math.cos(dphi), sy + Ld * math.sin(dphi))
                f = np.maximum(f, 1 - (dd / wd) ** 2)
        a0 = _smoothstep(0.0, 0.25, f).astype(_F32)
        sig = rng.uniform(1.0, 3.5) * k + 0.5
        alpha = _resize_f(ndi.gaussian_filter(a0, sig / q), P, P)
        if alpha.max() < 0.6:
            return None
        thick = _resize_f(ndi.gaussian_filter(a0, (sig * 2 + 1) / q), P, P) * R * rng.uniform(0.05, 0.12)
        D = rng.uniform(0.22, 0.38) if subtle else rng.uniform(0.55, 0.85)
        oil = np.array([20, 16, 10], _F32) * rng.uniform(0.8, 1.6)
        gl, shin = rng.uniform(0.1, 0.35) * (0.5 if subtle else 1.0), rng.uniform(40, 150)
        pw = self._patch_window(x0, y0, P, P)
        if pw is None:
            return None
        win, (dy, dx), (py, px) = pw
        dst = self.scene[win[1] : win[3], win[0] : win[2]].astype(_F32)
        al = alpha[py, px][..., None]
        dst[dy, dx] = dst[dy, dx] * (1 - al * D) + oil * (al * D)
        dst[dy, dx] *= 1 - 0.6 * al * (1 - al)  # darker wet rim
        gloss = shade(thick[py, px], np.zeros(al.shape[:2] + (3,), _F32), self.light, self.half, self.amb, gl, shin)
        dst[dy, dx] += gloss * al
        return (win[0], win[1]), _to_u8(dst), alpha[py, px] > 0.5

    def _group_points(self, gi: int) -> tuple[np.ndarray, np.ndarray]:
        """A sample of the canonical pixels covered by a removable group (cached)."""
        if gi not in self._gpts:
            ps = [self.parts[i] for i in self.groups[gi][1]]
            ys = [np.nonzero(p.alpha > 0.5)[0][::5] + p.y0 for p in ps]
            xs = [np.nonzero(p.alpha > 0.5)[1][::5] + p.x0 for p in ps]
            self._gpts[gi] = (np.concatenate(xs).astype(float), np.concatenate(ys).astype(float))
        return self._gpts[gi]

    def _missing(self, rng, subtle, data):
        """Re-render a window without one removable group; mask = its visible footprint (not its cast shadow)."""
        ia, ib, ic, id_, ie, if_ = _invert_affine(data)
        cands, weights = [], []
        wk = {"bolt": 1.0, "bracket": 0.8, "clamp": 0.6, "plate": 0.5, "cable": 0.35}
        for gi, (kind, _idxs) in enumerate(self.groups):
            if subtle and kind != "bolt":
                continue
            ax, ay = self._group_points(gi)
            if ax.size == 0:
                continue
            ux, uy = ia * ax + ib * ay + ic, id_ * ax + ie * ay + if_  # in the cur frame
            if ((ux > 2) & (ux < self.W - 2) & (uy > 2) & (uy < self.H - 2)).mean() < 0.6:
                continue
            cands.append(gi)
            weights.append(wk.get(kind, 0.5))
        if not cands:
            return self._missing(rng, False, data) if subtle else None  # no bolt in view: any part group
        w = np.asarray(weights)
        gi = cands[int(rng.choice(len(cands), p=w / w.sum()))]
        removed = set(self.groups[gi][1])
        boxes = []
        for i in removed:
            p = self.parts[i]
            boxes.append((p.x0, p.y0, p.x0 + p.alpha.shape[1], p.y0 + p.alpha.shape[0]))
            if p.shadow is not None:
                boxes.append((p.sx0, p.sy0, p.sx0 + p.shadow.shape[1], p.sy0 + p.shadow.shape[0]))
        win = (max(min(b[0] for b in boxes), 0), max(min(b[1] for b in boxes), 0),
               min(max(b[2] for b in boxes), self.Wc), min(max(b[3] for b in boxes), self.Hc))
        dst = self.bg[win[1] : win[3], win[0] : win[2]].copy()
        top = np.full(dst.shape[:2], -1, np.int32)
        for i, p in enumerate(self.parts):
            cl = _clip_boxes(p.x0, p.y0, *p.alpha.shape, win)
            if cl is None and (p.shadow is None or _clip_boxes(p.sx0, p.sy0, *p.shadow.shape, win) is None):
                continue
            if cl is not None:
                (dy, dx), (py, px) = cl
                top[dy, dx][p.alpha[py, px] > 0.5] = i
            if i not in removed:
                _composite(dst, win, p)
        foot = np.isin(top, list(removed))
        # what was under a removed bolt: a hole or a broken stud, and cleaner paint where the head sat
        xs = np.arange(win[0], win[2], dtype=_F32)[None, :] + 0.5
        ys = np.arange(win[1], win[3], dtype=_F32)[:, None] + 0.5
        for i in sorted(removed):
            if self.parts[i].hole is None:
                continue
            hx, hy, r, rw = self.parts[i].hole
            rho = np.hypot(xs - hx, ys - hy)
            if rng.random() < 0.85:
                ghost = np.clip(0.5 - (rho - rw * 0.95), 0, 1) * foot
                dst *= (1 + rng.uniform(0.06, 0.18) * ghost)[..., None]
            if rng.random() < 0.7:
                hole = np.clip(0.5 - (rho - 0.45 * r * rng.uniform(0.8, 1.1)), 0, 1) * foot
                dst *= (1 - rng.uniform(0.55, 0.8) * hole)[..., None]
            else:
                rs = 0.4 * r
                hgt = np.sqrt(np.clip(rs * rs - rho * rho, 0, None)) * 1.5
                stud = np.clip(0.5 - (rho - rs), 0, 1) * foot
                col = np.broadcast_to(np.array(_BOLT_COLORS["steel"], _F32), dst.shape)
                lit = shade(hgt.astype(_F32), col, self.light, self.half, self.amb, 0.4, 25)
                dst += (lit - dst) * stud[..., None]
        if not foot.any():
            return None
        return (win[0], win[1]), _to_u8(dst), foot


# --------------------------------------------------------------------------------------------- rendering helpers


def shade(height, albedo, light, half, amb=0.35, spec=0.2, shin=20.0):
    """Lambert + Blinn-Phong of a height field (px units); a flat surface gets exactly its albedo, so only the
    pixels with a slope are shaded."""
    height = np.asarray(height, _F32)
    rgb = np.array(np.broadcast_to(albedo, height.shape + (3,)), _F32)
    if min(height.shape) < 2:  # a sliver clipped by the canvas edge
        return rgb
    gy, gx = np.gradient(height)
    sel = (gx != 0) | (gy != 0)
    if not sel.any():
        return rgb
    gx, gy = gx[sel], gy[sel]
    inv = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    lx, ly, lz = (float(t) for t in light)
    ndl = np.clip((-gx * lx - gy * ly + lz) * inv, 0, None)
    out = rgb[sel] * (amb + (1 - amb) * ndl / lz)[:, None]
    if spec > 0:
        hx, hy, hz = (float(t) for t in half)
        ndh = np.clip((-gx * hx - gy * hy + hz) * inv, 0, 1)
        out += (spec * 255 * np.clip(ndh**shin - hz**shin, 0, None))[:, None]
    rgb[sel] = out
    return rgb


def _shadow(alpha, x0, y0, obj_h, light, strength):
    dx = -float(light[0]) / float(light[2]) * obj_h
    dy = -float(light[1]) / float(light[2]) * obj_h
    sig = 0.8 + 0.35 * obj_h
    pad = int(math.ceil(2.5 * sig)) + 1
    sh = _blur_alpha(alpha, sig, pad) * strength
    return sh, x0 - pad + int(round(dx)), y0 - pad + int(round(dy))


def _composite(dst: np.ndarray, win: tuple[int, int, int, int], p: _Part) -> None:
    """Shadow then colour of part ``p`` over ``dst`` (float32), whose origin and extent are ``win``."""
    if p.shadow is not None:
        cl = _clip_boxes(p.sx0, p.sy0, *p.shadow.shape, win)  # type: ignore[call-arg]  # shape is (h, w)
        if cl is not None:
            (dy, dx), (py, px) = cl
            dst[dy, dx] *= (1 - p.shadow[py, px])[..., None]
    cl = _clip_boxes(p.x0, p.y0, *p.alpha.shape, win)  # type: ignore[call-arg]  # shape is (h, w)
    if cl is not None:
        (dy, dx), (py, px) = cl
        d = dst[dy, dx]
        t = p.rgb[py, px] - d
        t *= p.alpha[py, px][..., None]
        d += t


def _tight(a: np.ndarray, thr: float) -> tuple[int, int, int, int] | None:
    """Bounding box (r0, r1, c0, c1) of the entries of ``a`` above ``thr`` (None if none)."""
    rows = np.flatnonzero(a.max(1) > thr)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(a.max(0) > thr)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _to_u8(a: np.ndarray) -> np.ndarray:
    a = a + 0.5
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def _or_mask(mask_c: np.ndarray, m: np.ndarray, x0: int, y0: int) -> None:
    cl = _clip_boxes(x0, y0, *m.shape, (0, 0, mask_c.shape[1], mask_c.shape[0]))  # type: ignore[call-arg]  # (h, w)
    if cl is not None:
        (dy, dx), (py, px) = cl
        mask_c[dy, dx][m[py, px]] = 255


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r + 0.5


def _invert_affine(data):
    a, b, c, d, e, f = data
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def _foreign_object(rng, kind: str, S: float, k: float):
    """Unrotated foreign object of size ~S: (alpha, height, albedo (h,w,3), spec, shininess, object height)."""
    P = int(S * 1.25) + 8
    xs = np.arange(P, dtype=_F32)[None, :] + 0.5 - P / 2
    ys = np.arange(P, dtype=_F32)[:, None] + 0.5 - P / 2
    ones = np.ones((P, P), _F32)

    def tex(amp, scale, names=None):
        name = str(rng.choice(names or (_PRIMARY_TEXTURES + _SECONDARY_TEXTURES)))
        return np.maximum(1 + amp * _tex_field(rng, name, P, P, scale * k * rng.uniform(0.6, 1.5)), 0.2)

    if kind == "stone":
        n = int(rng.integers(9, 16))
        th = np.sort(rng.uniform(0, 2 * math.pi, n))
        asp = rng.uniform(0.55, 1.0)
        rad = S / 2 * (1 + 0.18 * rng.standard_normal(n)).clip(0.6, 1.4)
        poly = [(P / 2 + r * math.cos(t), P / 2 + r * asp * math.sin(t)) for r, t in zip(rad, th)]
        alpha = _poly_alpha(poly, P)
        dist = ndi.distance_transform_edt(alpha > 0.5)
        dn = dist / max(dist.max(), 1)
        height = (S * rng.uniform(0.15, 0.3) * np.sqrt(dn * (2 - dn)) + S * 0.02 * _fbm(rng, P, P, max(S / 6, 3), 2)).astype(_F32)
        col: Any = [(120, 115, 105), (140, 120, 95), (90, 88, 85), (165, 155, 140), (105, 90, 75)][int(rng.integers(5))]
        alb = np.array(col, _F32) * rng.uniform(0.85, 1.15) * tex(0.25, 0.6, ("gravel", "brick", "moon"))[..., None]
        return alpha, height * alpha, alb, rng.uniform(0.05, 0.2), 12.0, S * 0.15
    if kind == "rag":
        env = 1 - (xs / (S / 2)) ** 2 - (ys / (S / 2 * rng.uniform(0.5, 1.0))) ** 2
        fld = env + 0.6 * _fbm(rng, P, P, max(S / 3, 3), 3)
        alpha = ndi.gaussian_filter(_smoothstep(0.0, 0.12, fld).astype(_F32), 0.7)
        fa = rng.uniform(0, math.pi)
        folds = np.sin((xs * math.cos(fa) + ys * math.sin(fa)) / (S * rng.uniform(0.08, 0.18)) * 2 * math.pi + 2 * _fbm(rng, P, P, max(S / 4, 3), 2))
        height = (S * 0.03 * folds + S * 0.05 * _fbm(rng, P, P, max(S / 5, 3), 2) + S * 0.06) * alpha
        col = [(170, 165, 150), (60, 80, 120), (130, 50, 40), (190, 110, 40), (110, 110, 105), (150, 150, 80)][int(rng.integers(6))]
        dirt = np.exp(0.35 * _fbm(rng, P, P, max(S / 4, 3), 3))
        weave = 1 + 0.06 * rng.standard_normal((P, P)).astype(_F32)
        alb = np.array(col, _F32) * rng.uniform(0.6, 1.0) * (weave / dirt)[..., None]
        return alpha, height.astype(_F32), alb.astype(_F32), 0.03, 8.0, S * 0.08
    if kind == "bottle":
        L, rb = S, S * rng.uniform(0.14, 0.2)
        x = xs + L / 2  # 0 .. L along the axis
        t = x / L
        rad = np.where(t < 0.66, rb, np.where(t < 0.8, rb + (0.42 * rb - rb) * (t - 0.66) / 0.14, 0.42 * rb))
        rad = np.where(t > 0.93, 0.5 * rb, rad)
        inside = np.clip(np.minimum(x, L - x) + 0.5, 0, 1)
        rad = np.broadcast_to(rad, (P, P))
        sd = np.abs(ys) - rad
        cover = np.clip(0.5 - sd, 0, 1) * inside
        dent = 1 + 0.12 * _fbm(rng, P, P, max(rb, 3), 2)
        height = np.sqrt(np.clip(rad**2 - ys**2, 0, None)) * dent
        col = np.array([(195, 205, 210), (60, 120, 70), (110, 70, 30), (215, 215, 210)][int(rng.integers(4))], _F32)
        opacity = rng.uniform(0.6, 0.9)
        alb = np.broadcast_to(col, (P, P, 3)).copy()
        opaque = (np.broadcast_to(t, (P, P)) > 0.93).astype(_F32)
        if rng.random() < 0.5:  # label band
            band = ((t > 0.2) & (t < rng.uniform(0.4, 0.55))).astype(_F32)
            band = np.broadcast_to(band, (P, P))
            lcol = np.array([(200, 40, 40), (40, 60, 160), (230, 230, 225), (220, 180, 40)][int(rng.integers(4))], _F32)
            alb = alb * (1 - band[..., None]) + lcol * band[..., None]
            opaque = np.maximum(opaque, band)
        alpha = cover * (opacity + (1 - opacity) * opaque)
        return alpha.astype(_F32), height.astype(_F32), alb.astype(_F32), rng.uniform(0.4, 0.8), 60.0, rb
    if kind == "wire":
        r = max(rng.uniform(1.2, 3.2) * k, 1.0)
        p = np.array([(-S / 2, 0), (-S / 6, rng.normal(0, S * 0.3)), (S / 6, rng.normal(0, S * 0.3)), (S / 2, rng.normal(0, S * 0.15))], _F32) + P / 2
        d = _polyline_dist(_bezier(p, 32), 0, 0, P, P, r + 2)
        alpha = np.clip(r + 0.5 - d, 0, 1)
        height = np.sqrt(np.clip(r * r - np.minimum(d, r) ** 2, 0, None))
        col = [(175, 105, 55), (150, 150, 145), (35, 35, 35), (170, 150, 40), (150, 40, 30)][int(rng.integers(5))]
        alb = np.broadcast_to(np.array(col, _F32) * rng.uniform(0.85, 1.1), (P, P, 3)).copy()
        return alpha.astype(_F32), height.astype(_F32), alb, rng.uniform(0.3, 0.6), 40.0, r * 1.5
    if kind == "bolt":
        L = S
        rs, rh = S * rng.uniform(0.07, 0.1), S * rng.uniform(0.14, 0.18)
        x = xs + L / 2
        hl = L * 0.22
        shaft = (x > hl) & (x < L)
        head = (x >= 0) & (x <= hl)
        hs = np.sqrt(np.clip(rs * rs - ys * ys, 0, None)) * (1 + 0.15 * np.sin(x / max(rs * 0.7, 1) * 2 * math.pi) * (x > L * 0.55))
        hh = np.clip(1.7 * (rh - np.abs(ys)), 0, rh)
        height = np.where(shaft, hs, 0) + np.where(head, hh, 0)
        alpha = (np.where(shaft, np.clip(rs + 0.5 - np.abs(ys), 0, 1), 0) + np.where(head, np.clip(rh + 0.5 - np.abs(ys), 0, 1), 0)).clip(0, 1)
        col = _BOLT_COLORS[str(rng.choice(list(_BOLT_COLORS)))]
        alb = np.array(col, _F32) * tex(0.08, 0.4)[..., None]
        return alpha.astype(_F32), height.astype(_F32), alb.astype(_F32), 0.45, 25.0, rh
    # paper / leaf
    hw, hh = S / 2, S / 2 * rng.uniform(0.5, 0.9)
    poly = [(P / 2 + sx * hw + rng.normal(0, S * 0.06), P / 2 + sy * hh + rng.normal(0, S * 0.06)) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    alpha = _poly_alpha(poly, P)
    height = (S * 0.04 * (xs / (S / 2)) ** 2 + S * 0.015 * _fbm(rng, P, P, max(S / 5, 3), 2)) * alpha
    col = [(200, 195, 180), (190, 180, 150), (120, 90, 50), (90, 100, 60)][int(rng.integers(4))]
    alb = np.array(col, _F32) * rng.uniform(0.7, 1.0) * (ones / np.exp(0.3 * _fbm(rng, P, P, max(S / 4, 3), 3)))[..., None]
    return alpha, height.astype(_F32), alb.astype(_F32), 0.05, 8.0, S * 0.04


def _poly_alpha(poly, P: int, ss: int = 3) -> np.ndarray:
    img = Image.new("L", (P * ss, P * ss), 0)
    ImageDraw.Draw(img).polygon([(x * ss, y * ss) for x, y in poly], fill=255)
    return np.asarray(img.resize((P, P), Image.Resampling.BOX)).astype(_F32) / 255


__all__ = [
    "ANOMALY_TYPES",
    "DemoSpec",
    "DemoSummary",
    "RegionScene",
    "capture_id",
    "encode_jpeg",
    "encode_png",
    "generate_depot",
    "region_ids",
    "train_ids",
    "write_pair_folders",
]
