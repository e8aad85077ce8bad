"""Moved to :mod:`tasks._env` (tasks import Prefect first; flows import tasks). Kept so that ``from . import _env``
still works until no module uses it; it only runs that module."""

import tasks._env  # noqa: F401
