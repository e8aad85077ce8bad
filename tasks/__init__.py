"""Thin Prefect tasks over anodet_core: retries, names and logging live here, logic does not."""

from . import _env  # noqa: F401  (Prefect defaults before prefect is imported)
