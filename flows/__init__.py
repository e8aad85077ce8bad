"""Prefect flows: compose the tasks, own schedules and deployments."""

from . import _env  # noqa: F401  (must run before prefect is imported anywhere)
