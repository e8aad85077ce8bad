"""Preparing captures ahead of the model: read, verify, decode, register, resize -- in helper processes.

On a CPU the forward pass keeps every core busy for ~100 ms per pair (paper preset, 2 cores) and preparing a
pair costs ~25 ms of CPU. In the worker's own threads, between forward passes, that preparation did not use
two cores: registration gained nothing from a second thread (the GIL, and two registrations side by side
measured 1.4x, not 2x, even in two processes). So each worker keeps helper processes, one per core, that
prepare the next sub-batch while the model runs on this one, in the idle scheduling class
(:func:`_lowest_priority`): they take the cycles the forward pass leaves (its OpenMP threads sleep instead of
spinning while they wait, ``OMP_WAIT_POLICY=PASSIVE`` in :func:`flows.runners.worker_env`) and both cores
while the model waits for them. Measured on 128 pairs of the bench night in one process (paper preset, batch
8, 2 cores, side by side): 8.35 pairs/s preparing in threads, 9.04 with two helpers.

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
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Settings
from .history import PairJob
from .imaging import ImageError, sha256
from .layout import Store
from .preprocess import PreparedPair, prepare_image, prepare_pair

log = logging.getLogger(__name__)

def read_capture(store: Store, job: PairJob) -> bytes | str:
    """The capture's bytes, checked against the manifest's sha256; a string is the error."""
    try:
        cur_bytes = store.read_bytes(job.capture["uri"])
    except (FileNotFoundError, OSError) as exc:
        return f"cannot read capture {job.capture['uri']}: {exc}"
    expected = job.capture.get("sha256")
    if expected and sha256(cur_bytes) != expected:
        return f"sha256 mismatch for {job.capture['uri']}: the file changed after the manifest was written"
    return cur_bytes


def prepare_job(store: Store, job: PairJob, settings: Settings, second_size: int = 0
                ) -> tuple[PreparedPair, np.ndarray | None] | str:
    """Read and align one pair; a string is the error that keeps the capture from being scored.

    With ``second_size`` cur is also prepared for a single-image model's second opinion, as that model's
    calibration images were (:func:`prepare_image`); else the second item is None.
    """
    cur_bytes = read_capture(store, job)
    if isinstance(cur_bytes, str):
        return cur_bytes
    try:
        his_bytes = store.read_bytes(job.history_uri)  # type: ignore[arg-type]
    except (FileNotFoundError, OSError) as exc:
        return f"cannot read history {job.history_uri}: {exc}"
    try:
        pair = prepare_pair(cur_bytes, his_bytes, registration=settings.registration)
        if not second_size:
            return pair, None
        # pair.cur is prepare_image's result at the paired model's size (same reduced decode and resize)
        return pair, pair.cur if second_size == pair.cur.shape[0] else prepare_image(cur_bytes, second_size)[0]
    except (ImageError, ValueError) as exc:
        return str(exc)


@dataclass
class PreparedImage:
    """A capture without history, decoded and resized for its single-image model."""

    image: np.ndarray  # S x S x 3 uint8, the model's input size
    native_size: tuple[int, int]  # (width, height)
    t_decode_ms: float  # CPU time of the preparing thread


def prepare_single_job(store: Store, job: PairJob, size: int) -> PreparedImage | str:
    """Read, verify and decode one capture for a single-image model; a string is the error."""
    cur_bytes = read_capture(store, job)
    if isinstance(cur_bytes, str):
        return cur_bytes
    t0 = time.thread_time()
    try:
        image, native = prepare_image(cur_bytes, size)
    except (ImageError, ValueError) as exc:
        return str(exc)
    return PreparedImage(image, native, (time.thread_time() - t0) * 1e3)


def _lowest_priority() -> None:
    """Run this helper only on cycles nothing else wants (SCHED_IDLE; nice 19 where that does not exist).

    SCHED_IDLE rather than a nice value: a waking OpenMP thread of the model preempts an idle-class task at
    once, while a nice 10 helper cost the forward pass ~12 % (measured side by side on 128 pairs: 8.35 -> 9.04
    pairs/s with SCHED_IDLE helpers, 8.34 -> 8.92 at nice 19, 8.21 -> 8.41 at nice 10, against preparing in
    threads). Set in the helper's main thread before anything else runs; threads it starts inherit it.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _init_helper(parent: int) -> None:
    _lowest_priority()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="anodet-orphan-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this helper once its parent is gone (killed, say): a helper blocks on a queue that it holds the
    writing end of too, so it would otherwise wait forever, holding memory and the parent's stdout."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> int:
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
        # killed the worker after 4 s and the helpers lived on. Finalizers with an exit priority run first.
        # At exit the helpers are stopped, not asked to finish: they hold nothing, and an idle-class helper
        # tearing its interpreter down beside the exiting worker took ~1.2 s of the nanny's 4.
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
        """The function's result; a string error when the capture killed a helper twice."""
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
