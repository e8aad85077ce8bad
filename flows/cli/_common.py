"""Helpers every ``anodet`` command shares: settings from flags and environment, the store, device and bf16 choice."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from anodet_core.config import SINGLE_IMAGE_ARCHS as SINGLE_IMAGE_ARCHS  # spelled out there: the parser imports no model code
from anodet_core.config import Settings

if TYPE_CHECKING:
    from anodet_core.store.layout import Store

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]  # what each module's add_parsers() fills

# The one place where flags meet settings: flag dest -> the Settings field it sets, for any command that declares
# it. Such flags default to None (--store: absent), so that a flag not given leaves ANODET_<FIELD>, else the field's
# default, to apply; a help text that states the default takes it from setting_default().
SETTING_FLAGS: dict[str, str] = {
    "store": "store",
    "model": "model",
    "batch_size": "batch_size",
    "device": "device",
    "second_opinion": "second_opinion",
    "backend": "backend",
}


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[TextIO]:
    """With ``--json`` stdout carries the one JSON object alone: whatever prints while the work runs (a library's
    progress bar, our narrative) goes to stderr. Yields the stream the JSON object is printed to."""
    out = sys.stdout
    if not enabled:
        yield out
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield out


def setting_default(field: str) -> Any:
    """The default of a settings field, for the help text of the flag that sets it."""
    return Settings.default(field)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of a command: its flags where given (:data:`SETTING_FLAGS`), else the ``ANODET_*`` environment."""
    return Settings.from_env(**{field: getattr(args, dest, None) for dest, field in SETTING_FLAGS.items()})


def _store(settings: Settings) -> Store:
    """The store the settings point at."""
    from anodet_core.store.layout import Store

    return Store(settings.store, settings.storage_options or None)


def _device(settings: Settings) -> str:
    """The torch device the settings resolve to (``auto`` picks one)."""
    from anodet_core.config import resolve_device

    return resolve_device(settings.device)


def _bf16(choice: str, device: str) -> bool:
    """A ``--bf16 auto|on|off`` choice on ``device``: auto is on where the device has native bf16."""
    from anodet_core.scoring.predictor import bf16_supported

    return bf16_supported(device) if choice == "auto" else choice == "on"


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    """A CLI flag's JSON object (empty when not given); anything else is a clear error."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value
