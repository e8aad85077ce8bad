"""Scoring one batch of a night: read, verify, register, infer, write maps, build report rows.

This is what one Prefect task runs inside one Dask worker. The model is loaded once per worker process
and kept (keyed by store, name, version, device and precision).

Captures without history whose region has a pinned single-image model (``NightPlan.single_models``) are scored
by that model alone (:class:`anodet_core.single_image.SingleImageScorer`); their maps are normalised to [0, 1]
(normal pixel p99.9 -> 0.5) and stored, measured and reported exactly like the paired maps.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..allocator import release_freed_memory
from ..config import Settings, available_cores, resolve_device
from ..imaging.prepare import PreparedPair
from ..registry.model_store import ModelCard, load
from ..scoring.backends import make_predictor
from ..scoring.postprocess import OperatingPoint, operating_point
from ..scoring.predictor import Predictor
from ..single_image import SingleImageScorer
from ..store.layout import Store
from ..store.maps import MapWriter
from ..store.schemas import (
    STATUS_NO_HISTORY,
)
from .history import PairJob
from .prep_pool import (
    PreparedImage,
    PrepError,
    PrepPool,
    get_prep_pool,
    prepare_job,
    prepare_single_job,
    prepared_chunks,
)
from .rows import BatchResult, Scored, capture_row, finding_rows, finish_pair, finish_single, invalid_row

log = logging.getLogger(__name__)
_MODELS: dict[tuple, Any] = {}  # (Predictor, ModelCard) for paired models, SingleImageScorer for single-image ones
_LOCK = threading.Lock()


def worker_threads(settings: Settings) -> int:
    """Torch threads for this worker: explicit setting, else the cores it may use shared among the workers."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, available_cores() // max(1, settings.dask_workers))


def prep_processes(settings: Settings) -> int:
    """Helper processes preparing pairs for this worker: explicit setting, else one per core it may use."""
    return worker_threads(settings) if settings.prep_processes < 0 else settings.prep_processes


def get_predictor(store: Store, model_ref: str, settings: Settings) -> tuple[Predictor, ModelCard]:
    """Load a model once per process (Dask workers live across tasks and nights)."""
    device = resolve_device(settings.device)
    key = (store.root, model_ref, device, settings.fast, settings.backend)
    with _LOCK:
        if key not in _MODELS:
            model, card = load(store, model_ref, device)
            pred = make_predictor(store, model, card, backend=settings.backend, device=device, fast=settings.fast,
                                  batch_size=settings.batch_size)
            _MODELS[key] = (pred, card)
        return _MODELS[key]


def get_single_image_scorer(store: Store, model_ref: str, settings: Settings) -> SingleImageScorer:
    """Load a single-image model once per process, like :func:`get_predictor` (fp32: see SingleImageScorer)."""
    device = resolve_device(settings.device)
    key = ("single_image", store.root, model_ref, device)
    with _LOCK:
        if key not in _MODELS:
            model, card = load(store, model_ref, device)
            _MODELS[key] = SingleImageScorer(model, card, device)
        return _MODELS[key]


def _second_opinion_sizes(store: Store, jobs: list[PairJob], single_models: dict[str, str] | None,
                          settings: Settings) -> dict[str, int]:
    """region_id -> input size of the second-opinion models (``single_models[region_id]``) these jobs need.

    A model that cannot be loaded costs its region the second opinion (logged), never the paired results.
    """
    sizes: dict[str, int] = {}
    if not settings.second_opinion or not single_models:
        return sizes
    for region in sorted({str(j.capture["region_id"]) for j in jobs} & set(single_models)):
        try:
            sizes[region] = get_single_image_scorer(store, single_models[region], settings).size
        except (OSError, LookupError, ValueError, RuntimeError) as exc:
            log.warning("no second opinion for region %s: cannot load %s: %s", region, single_models[region], exc)
    return sizes


def _split_jobs(jobs: list[PairJob], single_models: dict[str, str]
                ) -> tuple[list[PairJob], dict[str, list[PairJob]], list[PairJob]]:
    """(jobs with history, single-image model ref -> its jobs without history, jobs left unscored), in order.

    Invalid manifest rows (:attr:`PairJob.invalid`) have no history and are always left unscored.
    """
    paired = [j for j in jobs if j.history_uri and not j.invalid]
    single: dict[str, list[PairJob]] = {}
    unscored: list[PairJob] = []
    for job in (j for j in jobs if not j.history_uri or j.invalid):
        ref = None if job.invalid else single_models.get(str(job.capture["region_id"]))
        if ref:
            single.setdefault(ref, []).append(job)
        else:
            unscored.append(job)
    return paired, single, unscored


class _Written(NamedTuple):
    """A scored capture whose map an IO thread post-processes and writes (``future``: :func:`finish_pair`'s result)."""

    job: PairJob
    card: ModelCard
    t_infer_ms: float
    future: Future[Scored]
    backend: str  # what ran the forward pass (Predictor.backend; single-image models: torch)


@dataclass
class _BatchRun:
    """One :func:`process_batch` call while it scores: the report so far, second opinions, map writes in flight.

    Preparing (read, decode, register) runs in helper processes one sub-batch ahead of the model when they can
    be started (:mod:`anodet_core.night.prep_pool`); otherwise in the IO threads, in phases that alternate with the
    model's: threads preparing next to the model's threads were slower on a small machine (they thrash each
    other, and registration holds the GIL). Upsampling + writing the maps runs in the IO threads between forward
    passes either way (cheap next to the forward pass). Rows that cannot be scored go to ``result`` as they
    are met; scored ones in scoring order, by :meth:`finish`.
    """

    store: Store
    settings: Settings
    run_id: str
    predictor: Predictor
    card: ModelCard
    op: OperatingPoint
    maps: MapWriter
    io: ThreadPoolExecutor
    helpers: PrepPool | None
    single_models: dict[str, str]
    second_sizes: dict[str, int]  # region_id -> input size of its second-opinion model
    result: BatchResult
    second: dict[int, dict[str, Any]] = field(default_factory=dict)  # job.index -> second_* report fields
    written: list[_Written] = field(default_factory=list)

    def _chunks(self, jobs: list[PairJob], call: Callable[[PairJob], tuple]) -> Iterator[list[tuple[PairJob, Any]]]:
        submit: Callable[..., Any] = self.helpers.submit if self.helpers is not None else self.io.submit
        return prepared_chunks(jobs, self.settings.batch_size, submit, self.helpers is not None, call)

    def _error(self, job: PairJob, card: ModelCard, error: PrepError) -> None:
        """Report ``job`` as not scored: the status of its PrepError names the cause, its message the details."""
        self.result.captures.append(capture_row(job, card, self.run_id, error.status, error=error.message))

    def _writing(self, card: ModelCard, t_infer_ms: float, jobs: list[PairJob],
                 futures: list[Future[Scored]], backend: str = "torch") -> None:
        self.written.extend(_Written(job, card, t_infer_ms, fut, backend) for job, fut in zip(jobs, futures))
        for fut in futures:  # finish writing before the next phase starts
            fut.exception()

    def score_pairs(self, jobs: list[PairJob]) -> None:
        """Prepare, score with the paired model and write the maps of ``jobs`` (all with history), chunk by chunk."""
        size = self.predictor.info.input_size

        def call(j: PairJob) -> tuple:
            return prepare_job, self.store, j, self.settings, self.second_sizes.get(str(j.capture["region_id"]), 0), size

        for chunk in self._chunks(jobs, call):
            pairs: list[tuple[PairJob, PreparedPair]] = []
            second: list[tuple[PairJob, np.ndarray]] = []
            for job, prep in chunk:
                if isinstance(prep, PrepError):
                    self._error(job, self.card, prep)
                    continue
                pairs.append((job, prep[0]))
                if prep[1] is not None:
                    second.append((job, prep[1]))
            if pairs:
                self._infer_pairs(pairs, second)

    def _infer_pairs(self, pairs: list[tuple[PairJob, PreparedPair]], second: list[tuple[PairJob, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        scores = self.predictor.predict(np.stack([p.cur for _, p in pairs]), np.stack([p.his for _, p in pairs])).cpu()
        t_infer = (time.perf_counter() - t0) * 1e3 / len(pairs)
        futures = [self.io.submit(finish_pair, self.maps, job, prep, scores[k], self.op) for k, (job, prep) in enumerate(pairs)]
        if second:  # while the IO threads write the paired maps
            self.second_opinions(second)
        self._writing(self.card, t_infer, [job for job, _ in pairs], futures, self.predictor.backend)

    def second_opinions(self, images: list[tuple[PairJob, np.ndarray]]) -> None:
        """Image scores of their region's single-image model for captures with history (report ``second_*``)."""
        by_ref: dict[str, list[tuple[PairJob, np.ndarray]]] = {}
        for job, img in images:
            by_ref.setdefault(self.single_models[str(job.capture["region_id"])], []).append((job, img))
        for ref, group in by_ref.items():
            scorer = get_single_image_scorer(self.store, ref, self.settings)
            for (job, _), s in zip(group, scorer.image_scores(np.stack([img for _, img in group]))):
                self.second[job.index] = {"second_model": ref, "second_score": float(s),
                                          "second_anomalous": bool(s > scorer.threshold)}

    def score_single(self, ref: str, jobs: list[PairJob]) -> None:
        """Prepare, score with single-image model ``ref`` and write the maps of ``jobs`` (no history), chunk by chunk."""
        scorer = get_single_image_scorer(self.store, ref, self.settings)

        def call(j: PairJob) -> tuple:
            return prepare_single_job, self.store, j, scorer.size

        for chunk in self._chunks(jobs, call):
            ready: list[tuple[PairJob, PreparedImage]] = []
            for job, img in chunk:
                if isinstance(img, PrepError):
                    self._error(job, scorer.card, img)
                else:
                    ready.append((job, img))
            if ready:
                self._infer_single(scorer, ready)

    def _infer_single(self, scorer: SingleImageScorer, ready: list[tuple[PairJob, PreparedImage]]) -> None:
        t0 = time.perf_counter()
        image_scores, norm_maps = scorer.score(np.stack([p.image for _, p in ready]))
        t_infer = (time.perf_counter() - t0) * 1e3 / len(ready)
        futures = [
            self.io.submit(finish_single, self.maps, job, prep, torch.from_numpy(norm_maps[k]), float(image_scores[k]),
                           scorer.threshold, self.op)
            for k, (job, prep) in enumerate(ready)
        ]
        self._writing(scorer.card, t_infer, [job for job, _ in ready], futures)

    def finish(self, map_uri: str) -> None:
        """Capture and finding rows of every scored capture, in scoring order, once its map is written."""
        processed_at = dt.datetime.now(dt.UTC)
        for w in self.written:
            done = w.future.result()
            row = capture_row(w.job, w.card, self.run_id, done.status, **done.columns, **self.second.get(w.job.index, {}),
                            t_infer_ms=w.t_infer_ms, backend=w.backend, map_uri=map_uri, processed_at=processed_at)
            self.result.captures.append(row)
            self.result.findings.extend(finding_rows(row, done.findings, w.card, self.run_id))


def process_batch(
    store: Store,
    depot: str,
    night: str,
    jobs: list[PairJob],
    model_ref: str,
    settings: Settings,
    run_id: str = "",
    single_models: dict[str, str] | None = None,
    maps_rel: str | None = None,
) -> BatchResult:
    """Score a batch of pairs and write their maps; every job yields exactly one capture row.

    Maps go to ``maps_rel``, the plan's map group (:attr:`NightPlan.maps_rel`; default: the night's newest), which
    readers see once the night is published (:func:`anodet_core.night.plan.write_reports`).

    Sub-batches of ``settings.batch_size`` pairs are read, decoded and registered by helper processes one
    sub-batch ahead of the model (``settings.prep_processes``; without helpers, by threads of this process
    before their forward pass), at the model's registered input size, go through the model on all the worker's
    cores, then are upsampled, measured and written by threads. ``settings.threshold`` must be set (the flow
    passes the plan's, and the plan's ``min_finding_area``): with the card they give the operating point of
    every capture (:func:`anodet_core.scoring.postprocess.operating_point`), post-processed by
    :func:`anodet_core.scoring.postprocess.postprocess`.

    Jobs without history are scored by their region's single-image model when ``single_models`` (region_id ->
    NAME:VERSION, ``NightPlan.single_models``) has one, the same way; otherwise they are reported
    ``no_history``. With ``settings.second_opinion``, jobs with history whose region has one are also scored by
    it (report columns ``second_*``; the decision stays the paired model's).
    """
    if settings.threshold is None:
        raise ValueError("process_batch needs an explicit threshold (see NightPlan.threshold)")
    # per call, not per process: OpenMP keeps the thread count per calling thread, and Dask may run the next
    # task on another thread of its pool (without this the forward pass runs far slower)
    torch.set_num_threads(worker_threads(settings))
    helpers = get_prep_pool(prep_processes(settings))  # first: helpers start while the model loads
    predictor, card = get_predictor(store, model_ref, settings)
    op = operating_point(card, settings)
    result = BatchResult()
    paired, single, unscored = _split_jobs(jobs, single_models or {})
    result.captures.extend(invalid_row(job, card, run_id) if job.invalid else capture_row(job, card, run_id, STATUS_NO_HISTORY)
                           for job in unscored)
    if not paired and not single:
        return result
    maps = MapWriter(store, depot, night, maps_rel)
    map_uri = maps.rel  # store-relative: a copied or moved store stays valid
    second_sizes = _second_opinion_sizes(store, paired, single_models, settings)
    try:
        with ThreadPoolExecutor(max(1, worker_threads(settings)), thread_name_prefix="anodet-io") as io:
            run = _BatchRun(store, settings, run_id, predictor, card, op, maps, io, helpers, single_models or {},
                            second_sizes, result)
            run.score_pairs(paired)
            for ref, group in single.items():
                run.score_single(ref, group)
            run.finish(map_uri)
    finally:
        # the worker keeps freed memory while a batch runs (flows.runners.worker_env: its forward passes reuse their
        # buffers) and gives it back between batches, so that Dask's memory monitor, which pauses a worker above 80 % of
        # its limit, sees what the worker holds rather than its high-water mark
        release_freed_memory()
    return result
