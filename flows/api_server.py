"""The ephemeral Prefect API server of the runs started from this process, in a session of its own.

Without ``PREFECT_API_URL`` a run needs a temporary API server (:func:`flows.runners.ephemeral_run_settings`).
Prefect's own (``prefect.server.api.server.SubprocessASGIServer``) is a child in this process's process group,
so a Ctrl-C in a terminal, which signals the whole foreground group, ended it together with the CLI, and the flow
engine then spent over a minute retrying to report the crashed run to it before the command exited (status 1).
:class:`DetachedASGIServer` is that server started in a new session: the terminal's SIGINT reaches only the CLI
and its Dask workers, the run reports its end to a live server, and the CLI stops the server (:func:`stop`; else
Prefect's atexit hook does). So that it never outlives the process that started it (kill -9 of the CLI, whose
process group it has left), on Linux the kernel sends it SIGTERM when that process's main thread ends
(``PR_SET_PDEATHSIG``).

Imported only where a server is started: importing Prefect's server module loads the whole API application.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process's main thread ends (None off Linux, or
    when not called from the main thread: the death signal follows the thread that forks, not the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before the call: no signal will come
            os._exit(1)

    return preexec


class DetachedASGIServer(SubprocessASGIServer):
    """Prefect's ephemeral API server (``SubprocessASGIServer``: same command, port choice, health wait, atexit
    stop) started in a new session, dying with this process (module docstring). One per port, as Prefect's."""

    _instances: dict[int | None, SubprocessASGIServer] = {}  # its own registry: Prefect's instances stay Prefect's

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        """Prefect 3.8's ``SubprocessASGIServer._run_uvicorn_command``, plus ``start_new_session`` and the death signal."""
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                  "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                  "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def stop(drain_timeout: float = 5.0) -> None:
    """Stop the servers this process started (idempotent; Prefect's atexit hook calls the same ``stop``).

    First drains this process's Prefect services that send to the API (run logs, events), as an interpreter exit
    does before its atexit hooks: stopped under them, their exit drain retried the gone server for seconds.
    """
    servers = list(DetachedASGIServer._instances.values())
    if not any(s.running for s in servers):
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):  # logs first: the events worker may still log
        service.drain_all(timeout=drain_timeout, at_exit=False)
    for server in servers:
        server.stop()
