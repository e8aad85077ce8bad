"""Prefect flows: compose the tasks, own schedules and deployments."""

import tasks._env  # noqa: F401  (Prefect defaults: must run before prefect is imported anywhere)
