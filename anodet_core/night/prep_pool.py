"""Preparing captures ahead of the model: read, verify, decode, register, resize -- in helper processes.

On a CPU the forward pass keeps every core busy, and preparing a pair costs a sizeable fraction of a forward
pass in CPU time. In the worker's own threads, between forward passes, that preparation did not use all the
cores: registration gains little from a second thread (the GIL, and two registrations side by side scale
poorly even in two processes). So each worker keeps helper processes, one per core, that prepare the next
sub-batch while the model runs on this one, in the idle scheduling class (:func:`_lowest_priority`): they take
the cycles the forward pass leaves (its OpenMP threads sleep instead of spinning while they wait,
``OMP_WAIT_POLICY=PASSIVE`` in :func:`flows.runners.worker_env`) and all the cores while the model waits for
them. ``anodet bench`` measures the end-to-end throughput this gives.

This module does not import torch: helpers start with ``spawn`` and import only what preparing needs.
A helper that dies (e.g. killed for memory) costs a retry of its captures in a fresh pool; a capture that
kills a helper twice is reported with status ``error``, and its night goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Settings
from ..imaging.io import ImageError, sha256, stable_message
from ..imaging.prepare import MODEL_SIZE, PreparedPair, prepare_image, prepare_pair
from ..store.layout import Store
from ..store.schemas import Status
from .history import PairJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepError:
    """Why a capture could not be prepared: its report row's ``status`` and ``error`` (a stable message).

    Module-level (and frozen) so that it pickles back from the helper processes.
    """

    status: Status
    message: str


PreparedJob = tuple[PreparedPair, np.ndarray | None]  # a pair, and cur for a second opinion (or None)


def _read(store: Store, uri: str, what: str) -> bytes | PrepError:
    """The bytes of the ``what`` ("capture" or "history") file at ``uri``: MISSING or IO_ERROR when unreadable."""
    try:
        return store.read_bytes(uri)
    except FileNotFoundError:
        return PrepError(Status.MISSING, f"{what} file not found: {uri}")
    except OSError as exc:
        return PrepError(Status.IO_ERROR, f"cannot read {what} file {uri}: {stable_message(exc)}")


def _declared_size(capture: dict[str, Any]) -> tuple[int, int] | None:
    """The manifest's (width, height) of a capture; None where an old manifest has none (null, NaN or absent)."""
    try:
        size = (int(capture.get("width")), int(capture.get("height")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None


def read_capture(store: Store, job: PairJob) -> bytes | PrepError:
    """The capture's bytes, checked against the manifest's sha256 (CHECKSUM_MISMATCH)."""
    uri = job.capture["uri"]
    cur_bytes = _read(store, uri, "capture")
    expected = job.capture.get("sha256")
    if isinstance(cur_bytes, bytes) and expected and sha256(cur_bytes) != expected:
        return PrepError(Status.CHECKSUM_MISMATCH, f"sha256 mismatch for {uri}: the file changed after the manifest was written")
    return cur_bytes


def _failed(job: PairJob, exc: Exception) -> PrepError:
    """The PrepError of an exception raised while decoding or registering ``job``'s images."""
    if isinstance(exc, ImageError):  # the bytes: not an image, truncated, too large, not the declared size
        return PrepError(Status.INVALID_IMAGE, str(exc))
    if not isinstance(exc, ValueError):  # registration refusing a pair raises ValueError; anything else is a bug
        log.warning("capture %s: unexpected failure while preparing it", job.capture["capture_id"], exc_info=exc)
    return PrepError(Status.ERROR, f"preparation failed: {stable_message(exc)}")


def prepare_job(store: Store, job: PairJob, settings: Settings, second_size: int = 0,
                size: int = MODEL_SIZE) -> PreparedJob | PrepError:
    """Read and align one pair at the paired model's input ``size``; a PrepError keeps the capture from being scored.

    With ``second_size`` cur is also prepared for a single-image model's second opinion, as that model's
    calibration images were (:func:`prepare_image`); else the second item is None. Whatever goes wrong with
    this capture or its history becomes its PrepError (:class:`~anodet_core.store.schemas.Status` names the
    cause), never an exception that would cost the rest of the batch.
    """
    cur_bytes = read_capture(store, job)
    if isinstance(cur_bytes, PrepError):
        return cur_bytes
    his_bytes = _read(store, job.history_uri, "history")  # type: ignore[arg-type]
    if isinstance(his_bytes, PrepError):
        return his_bytes
    try:
        pair = prepare_pair(cur_bytes, his_bytes, size=size, registration=settings.registration,
                            expect_size=_declared_size(job.capture))
        if pair.gray:
            log.debug("capture %s: it or its history %s has no colour; both compared in grayscale",
                      job.capture["capture_id"], job.history_uri)
        if not second_size:
            return pair, None
        # pair.cur is prepare_image's result at the paired model's size (same reduced decode and resize), unless
        # it was turned gray to match a gray history
        same = second_size == pair.cur.shape[0] and not pair.gray
        return pair, pair.cur if same else prepare_image(cur_bytes, second_size)[0]
    except Exception as exc:  # one capture's failure, whatever it is, is its own row: the batch goes on
        return _failed(job, exc)


@dataclass
class PreparedImage:
    """A capture without history, decoded and resized for its single-image model."""

    image: np.ndarray  # S x S x 3 uint8, the model's input size
    native_size: tuple[int, int]  # (width, height)
    t_decode_ms: float  # CPU time of the preparing thread


def prepare_single_job(store: Store, job: PairJob, size: int) -> PreparedImage | PrepError:
    """Read, verify and decode one capture for a single-image model of input ``size``."""
    cur_bytes = read_capture(store, job)
    if isinstance(cur_bytes, PrepError):
        return cur_bytes
    t0 = time.thread_time()
    try:
        image, native = prepare_image(cur_bytes, size, expect_size=_declared_size(job.capture))
    except ImageError as exc:
        return PrepError(Status.INVALID_IMAGE, f"capture image: {exc}")
    except Exception as exc:  # one capture's failure is its own row, as in prepare_job
        return _failed(job, exc)
    return PreparedImage(image, native, (time.thread_time() - t0) * 1e3)


def _lowest_priority() -> None:
    """Run this helper only on cycles nothing else wants (SCHED_IDLE; nice 19 where that does not exist).

    SCHED_IDLE rather than a nice value: a waking OpenMP thread of the model preempts an idle-class task at
    once, while a niced helper still takes noticeable time from the forward pass (SCHED_IDLE helpers gave the
    best throughput side by side with nice 19 and nice 10). Set in the helper's main thread before anything
    else runs; threads it starts inherit it.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _init_helper(parent: int) -> None:
    """Each helper's initializer: idle scheduling class, and an end when its parent is gone."""
    _lowest_priority()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="anodet-orphan-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this helper once its parent is gone (killed, say): a helper blocks on a queue that it holds the
    writing end of too, so it would otherwise wait forever, holding memory and the parent's stdout."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> int:
    """A no-op task that makes the pool start its processes."""
    return os.getpid()


class PrepPool:
    """Helper processes that run preparation functions; :meth:`result` turns a dead helper into a retry.

    Functions and arguments must be picklable and importable without this process's state (``spawn``).
    """

    def __init__(self, processes: int):
        if processes < 1:
            raise ValueError("PrepPool needs at least one process")
        self.processes = processes
        self._lock = threading.Lock()
        self._executor = self._start()
        # A Dask worker process ends through multiprocessing's exit function, not the interpreter's: it joins
        # the worker's non-daemonic children (these helpers) without telling the pool to stop, so the nanny
        # killed the worker after its grace period and the helpers lived on. Finalizers with an exit priority run
        # first. At exit the helpers are stopped, not asked to finish: they hold nothing, and an idle-class helper
        # tearing its interpreter down beside the exiting worker took a good part of the nanny's grace period.
        multiprocessing.util.Finalize(None, self.shutdown, kwargs={"terminate": True}, exitpriority=10)

    def _start(self) -> ProcessPoolExecutor:
        ex = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_helper, initargs=(os.getpid(),))
        try:
            # processes start on submit, here rather than in the middle of a night: a daemonic parent (a Dask
            # worker with distributed.worker.daemon left True) cannot have children. Not waited for: helpers
            # import while the caller loads its model.
            for _ in range(self.processes):
                ex.submit(_ready)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        return ex

    def submit(self, fn: Callable[..., Any], *args: Any) -> PrepFuture:
        """Run ``fn(*args)`` in a helper; the returned future's ``result()`` retries once if the helper dies."""
        return PrepFuture(self, fn, args)

    def _submit(self, fn: Callable[..., Any], args: tuple) -> tuple[Executor, Future]:
        with self._lock:
            try:
                return self._executor, self._executor.submit(fn, *args)
            except BrokenProcessPool:
                self._restart_locked()
                return self._executor, self._executor.submit(fn, *args)

    def _restart(self, broken: Executor) -> None:
        with self._lock:
            if self._executor is broken:  # the first of the futures that saw it die restarts the pool
                self._restart_locked()

    def _restart_locked(self) -> None:
        log.warning("a preparation helper process died; starting a fresh pool of %d", self.processes)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()

    def shutdown(self, terminate: bool = False) -> None:
        """Stop the helpers: after their current preparations, or at once with ``terminate`` (SIGTERM)."""
        ex = self._executor
        if terminate:  # ProcessPoolExecutor.terminate_workers() only exists from Python 3.14
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.terminate()
        ex.shutdown(wait=True, cancel_futures=True)


class PrepFuture:
    """A preparation in a :class:`PrepPool`; :meth:`result` retries once in a fresh pool if its helper died."""

    def __init__(self, pool: PrepPool, fn: Callable[..., Any], args: tuple):
        self._pool, self._fn, self._args = pool, fn, args
        self._executor, self._future = pool._submit(fn, args)

    def result(self) -> Any:
        """The function's result; a plain string error when the capture killed a helper twice.

        A string, not a :class:`PrepError`: the pool runs any function (:func:`prepared_chunks` turns it into
        one).
        """
        try:
            return self._future.result()
        except BrokenProcessPool:
            self._pool._restart(self._executor)
        _, retry = self._pool._submit(self._fn, self._args)
        try:
            return retry.result()
        except BrokenProcessPool as exc:
            return f"preparation failed: its helper process died twice ({exc})"


_POOLS: dict[int, PrepPool | None] = {}
_POOLS_LOCK = threading.Lock()


def get_prep_pool(processes: int) -> PrepPool | None:
    """This process's helper pool of ``processes`` (started once, kept across tasks); None when helpers cannot
    be started here (logged once): the caller then prepares in threads of its own process."""
    if processes < 1:
        return None
    with _POOLS_LOCK:
        if processes not in _POOLS:
            try:
                _POOLS[processes] = PrepPool(processes)
            except (AssertionError, OSError, RuntimeError, BrokenProcessPool) as exc:
                # AssertionError: "daemonic processes are not allowed to have children"
                log.warning("cannot start %d preparation helper processes (%s); preparing in threads instead. "
                            "Dask workers need distributed.worker.daemon: False for helpers.", processes, exc)
                _POOLS[processes] = None
        return _POOLS[processes]


def prepared_chunks(jobs: list[PairJob], size: int, submit: Callable[..., Any], ahead: bool,
                    call: Callable[[PairJob], tuple]) -> Iterator[list[tuple[PairJob, Any]]]:
    """``jobs`` in chunks of ``size``, each job with the result of ``submit(*call(job))``, in order.

    ``submit`` is a :class:`PrepPool`'s or a thread pool's. With ``ahead`` the next chunk is submitted before
    this one is handed out, so it is prepared while the caller runs the model on this one; otherwise each chunk
    is prepared when it is needed. A helper's plain-string failure (:meth:`PrepFuture.result`) comes out as a
    :class:`PrepError`, like the preparations' own.
    """
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    depth = 1 if ahead else 0
    queued = deque([(job, submit(*call(job))) for job in c] for c in chunks[:depth])
    for k in range(len(chunks)):
        if k + depth < len(chunks):
            queued.append([(job, submit(*call(job))) for job in chunks[k + depth]])
        yield [(job, _as_prep_error(fut.result())) for job, fut in queued.popleft()]


def _as_prep_error(result: Any) -> Any:
    return PrepError(Status.ERROR, result) if isinstance(result, str) else result
