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
kills a helper twice is reported as an error, and its night goes on.
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
from ..imaging.io import ImageError, sha256
from ..imaging.prepare import MODEL_SIZE, PreparedPair, prepare_image, prepare_pair
from ..store.layout import Store
from .history import PairJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepError:
    """Why a capture could not be prepared; ``message`` is its report row's ``error``.

    Module-level (and frozen) so that it pickles back from the helper processes.
    """

    message: str


PreparedJob = tuple[PreparedPair, np.ndarray | None]  # a pair, and cur for a second opinion (or None)


def read_capture(store: Store, job: PairJob) -> bytes | PrepError:
    """The capture's bytes, checked against the manifest's sha256."""
    try:
        cur_bytes = store.read_bytes(job.capture["uri"])
    except (FileNotFoundError, OSError) as exc:
        return PrepError(f"cannot read capture {job.capture['uri']}: {exc}")
    expected = job.capture.get("sha256")
    if expected and sha256(cur_bytes) != expected:
        return PrepError(f"sha256 mismatch for {job.capture['uri']}: the file changed after the manifest was written")
    return cur_bytes


def prepare_job(store: Store, job: PairJob, settings: Settings, second_size: int = 0,
                size: int = MODEL_SIZE) -> PreparedJob | PrepError:
    """Read and align one pair at the paired model's input ``size``; a PrepError keeps the capture from being scored.

    With ``second_size`` cur is also prepared for a single-image model's second opinion, as that model's
    calibration images were (:func:`prepare_image`); else the second item is None.
    """
    cur_bytes = read_capture(store, job)
    if isinstance(cur_bytes, PrepError):
        return cur_bytes
    try:
        his_bytes = store.read_bytes(job.history_uri)  # type: ignore[arg-type]
    except (FileNotFoundError, OSError) as exc:
        return PrepError(f"cannot read history {job.history_uri}: {exc}")
    try:
        pair = prepare_pair(cur_bytes, his_bytes, size=size, registration=settings.registration)
        if not second_size:
            return pair, None
        # pair.cur is prepare_image's result at the paired model's size (same reduced decode and resize)
        return pair, pair.cur if second_size == pair.cur.shape[0] else prepare_image(cur_bytes, second_size)[0]
    except (ImageError, ValueError) as exc:
        return PrepError(str(exc))


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
        image, native = prepare_image(cur_bytes, size)
    except (ImageError, ValueError) as exc:
        return PrepError(str(exc))
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
    return PrepError(result) if isinstance(result, str) else result
