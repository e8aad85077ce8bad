"""Writing a demo depot into a store: references, captures, masks, then each night's manifest and labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..imaging.io import encode_png, sha256
from ..store.layout import Store
from ..store.names import check_name, check_night
from ._constants import ANOMALY_TYPES
from ._encode import encode_jpeg
from ._ids import capture_id, region_ids, train_ids
from ._scene import RegionScene
from ._seeding import _capture_times, _plan_anomalies, _rng
from ._spec import DemoSpec, DemoSummary, _check_spec

_PARALLEL_MEGAPIXELS = 100.0  # ~40 full-resolution captures: below this, starting worker processes does not pay
_DEFAULT_SPEC = DemoSpec()


def generate_depot(store: Store, spec: DemoSpec = _DEFAULT_SPEC, *, workers: int = 0) -> DemoSummary:
    """Write references, captures, manifests, labels and masks of a demo depot into ``store``.

    Regions are rendered in ``workers`` processes (1: in this process; 0: one per core this process may use
    when the depot is large enough to repay starting them); every image depends only on the seed and its keys,
    so the depot is the same for any ``workers``.
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
        from ..config import available_cores

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
