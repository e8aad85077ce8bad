"""Helpers every ``anodet`` command shares: settings from flags and environment, the store, device and bf16 choice."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anodet_core.config import Settings
    from anodet_core.layout import Store

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]  # what each module's add_parsers() fills

# the single-image architectures, spelled out so that building the parser imports no model code
SINGLE_IMAGE_ARCHS = ("csaflow", "anovit")


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of a command: its flags where given, else the ``ANODET_*`` environment."""
    from anodet_core.config import Settings

    return Settings.from_env(
        store=getattr(args, "store", None),
        model=getattr(args, "model", None),
        batch_size=getattr(args, "batch_size", None),
        device=getattr(args, "device", None),
        second_opinion=getattr(args, "second_opinion", None),
    )


def _store(settings: Settings) -> Store:
    """The store the settings point at."""
    from anodet_core.layout import Store

    return Store(settings.store, settings.storage_options or None)


def _device(settings: Settings) -> str:
    """The torch device the settings resolve to (``auto`` picks one)."""
    from anodet_core.config import resolve_device

    return resolve_device(settings.device)


def _bf16(choice: str, device: str) -> bool:
    """A ``--bf16 auto|on|off`` choice on ``device``: auto is on where the device has native bf16."""
    from anodet_core.inference import bf16_supported

    return bf16_supported(device) if choice == "auto" else choice == "on"


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    """A CLI flag's JSON object (empty when not given); anything else is a clear error."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value
