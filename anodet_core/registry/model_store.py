"""Model registry in the store: immutable versions (safetensors + JSON card) and aliases such as ``production``.

A model reference is one of:
  * ``NAME``            the version the ``production`` alias of NAME points to
  * ``NAME:VERSION``    that version (``NAME:latest`` for the newest)
  * a local folder (or its ``weights.safetensors``) holding ``weights.safetensors`` and ``card.json``
  * ``NAME:base``       the base model shipped inside the package (:mod:`anodet_core.weights`), for the names
                        that have one; ``NAME`` falls back to it while the store has no production version,
                        so a fresh install scores nights without training

Weights are safetensors, so loading never unpickles code; the card holds what is needed to rebuild the module
through :func:`anodet_core.models.create_model`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..store.layout import Store
from ..store.names import check_name

PRODUCTION = "production"
WEIGHTS = "weights.safetensors"
CARD = "card.json"


@dataclass
class ModelCard:
    """What a stored version is: how to rebuild its module, its operating point, metrics and provenance."""

    name: str  # registry name, e.g. "anodfdnet"
    arch: str  # create_model name
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # create_model overrides
    version: str = ""
    created_at: str = ""
    threshold: float = 0.5
    min_finding_area: int | None = None  # native px, calibrated on validation; None: the ANODET_MIN_FINDING_AREA default
    # paired models: the map's score where the history is missing (anodet_core.scoring.postprocess.weigh_missing_history),
    # calibrated on validation; None: the map as the model gives it
    no_history_score: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # on the card's evaluation split
    eval_split: str = ""  # what the metrics were measured on
    data_fingerprint: str = ""
    code_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card; unknown keys are ignored (cards written by newer code still load)."""
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)

    def to_json(self) -> str:
        """The card as indented JSON with sorted keys (non-JSON values written with ``str``)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("anodet")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            v += f"+g{sha.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def list_versions(store: Store, name: str) -> list[str]:
    """Versions of a model, oldest first (versions are positive integers as strings)."""
    vs = store.ls(f"models/{check_name(name, 'model name')}/versions")
    return sorted((v for v in vs if v.isdigit()), key=int)


def get_alias(store: Store, name: str, alias: str = PRODUCTION) -> str | None:
    """The version an alias of model ``name`` points to, or None when the alias is not set."""
    rel = store.model_alias_rel(name, alias)
    return store.read_text(rel).strip() if store.exists(rel) else None


def set_alias(store: Store, name: str, version: str, alias: str = PRODUCTION) -> None:
    """Point an alias of model ``name`` at ``version``; ValueError when that version does not exist."""
    if version not in list_versions(store, name):
        raise ValueError(f"model {name!r} has no version {version!r}")
    store.write_text(store.model_alias_rel(name, alias), version + "\n")


def save_version(store: Store, model: torch.nn.Module, card: ModelCard) -> ModelCard:
    """Write a new immutable version (next integer); returns the card with version and created_at filled."""
    check_name(card.name, "model name")
    existing = list_versions(store, card.name)
    nxt = int(existing[-1]) + 1 if existing else 1
    while store.exists(store.model_version_rel(card.name, str(nxt))):  # a concurrent writer took it
        nxt += 1
    card.version = str(nxt)
    card.created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    card.code_version = card.code_version or code_version()
    rel = store.model_version_rel(card.name, card.version)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    store.write_bytes(f"{rel}/{WEIGHTS}", st_save(state, metadata={"name": card.name, "version": card.version}))
    store.write_text(f"{rel}/{CARD}", card.to_json())
    return card


def update_card(store: Store, card: ModelCard) -> None:
    """Attach evidence (e.g. a promotion comparison) to a version's card; weights stay untouched."""
    store.write_text(f"{store.model_version_rel(card.name, card.version)}/{CARD}", card.to_json())


def _local_folder(path: str) -> str:
    return os.path.dirname(path) if path.endswith(".safetensors") else path


def _local_card(path: str) -> ModelCard:
    with open(os.path.join(_local_folder(path), CARD)) as fh:
        return ModelCard.from_json(fh.read())


def _read_local(path: str) -> tuple[bytes, ModelCard]:
    with open(os.path.join(_local_folder(path), WEIGHTS), "rb") as fh:
        return fh.read(), _local_card(path)


def read_card(store: Store, name: str, version: str) -> ModelCard:
    """The card of one stored version, without reading its weights."""
    return ModelCard.from_json(store.read_text(f"{store.model_version_rel(name, version)}/{CARD}"))


PACKAGED_VERSION = "base"


def packaged_folder(name: str) -> str | None:
    """Folder of the base model shipped for ``name`` inside the package, or None."""
    from ..weights import packaged_model_dir

    return packaged_model_dir(name)


def _packaged_ref(store: Store, ref: str) -> str | None:
    """The shipped folder a store reference falls back to: ``NAME:base``, or ``NAME`` without production."""
    name, _, version = ref.partition(":")
    if version == PACKAGED_VERSION or (not version and get_alias(store, check_name(name, "model name")) is None):
        return packaged_folder(name)
    return None


def _version(store: Store, ref: str) -> tuple[str, str]:
    """(name, version) a store reference names; LookupError when an alias or ``latest`` finds none."""
    name, _, version = ref.partition(":")
    check_name(name, "model name")
    if not version:
        version = get_alias(store, name, PRODUCTION) or ""
        if not version:
            raise LookupError(f"model {name!r} has no production version in {store.root}; train one or pass NAME:VERSION")
    elif version == "latest":
        versions = list_versions(store, name)
        if not versions:
            raise LookupError(f"model {name!r} has no versions in {store.root}")
        version = versions[-1]
    return name, version


def _stored_card(store: Store, name: str, version: str) -> ModelCard:
    """:func:`read_card`, with a missing version as LookupError (one read, no separate existence check)."""
    try:
        return read_card(store, name, version)
    except FileNotFoundError:
        raise LookupError(f"model {name}:{version} not found in {store.root}") from None


def resolve_card(store: Store, ref: str) -> ModelCard:
    """The card a model reference points to, without reading its weights (pinning a night's model version
    must not pull the weights from object storage)."""
    if os.path.exists(ref):
        return _local_card(ref)
    shipped = _packaged_ref(store, ref)
    if shipped:
        return _local_card(shipped)
    return _stored_card(store, *_version(store, ref))


def resolve(store: Store, ref: str) -> tuple[bytes, ModelCard]:
    """Weights bytes and card for a model reference (see the module docstring)."""
    if os.path.exists(ref):
        return _read_local(ref)
    shipped = _packaged_ref(store, ref)
    if shipped:
        return _read_local(shipped)
    name, version = _version(store, ref)
    card = _stored_card(store, name, version)
    return store.read_bytes(f"{store.model_version_rel(name, version)}/{WEIGHTS}"), card


def build(card: ModelCard, weights: bytes | None = None) -> torch.nn.Module:
    """Rebuild the module a card describes and load its weights (strict: every tensor must match)."""
    from ..models import create_model

    config = dict(card.config)
    if weights is not None and card.arch == "anodfdnet":
        config["pretrained"] = False  # the stored weights replace the ImageNet start: don't read it first
    model = create_model(card.arch, preset=card.preset, **config)
    if weights is not None:
        model.load_state_dict(st_load(weights), strict=True)
    return model


def load(store: Store, ref: str, device: str = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """The module a model reference points to, with its weights, on ``device`` in eval mode, and its card.

    LookupError when the store has no such version (or no production version and no shipped base model).
    """
    weights, card = resolve(store, ref)
    model = build(card, weights).to(device).eval()
    return model, card
