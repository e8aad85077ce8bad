"""Model references resolve to cards without reading weights; every kind of reference and its errors."""

import os

import pytest
import torch

from anodet_core.models import create_model
from anodet_core.registry import model_store
from anodet_core.registry.model_store import ModelCard
from anodet_core.store.layout import Store


def _save(store: Store, threshold: float) -> ModelCard:
    torch.manual_seed(0)
    model = create_model("anodfdnet", preset="lite")
    return model_store.save_version(store, model, ModelCard(name="anodfdnet", arch="anodfdnet", preset="lite",
                                                            threshold=threshold))


def test_resolve_card_follows_every_reference_and_never_reads_weights(tmp_path):
    store = Store(str(tmp_path / "store"))
    v1, v2 = _save(store, 0.4), _save(store, 0.6)
    model_store.set_alias(store, "anodfdnet", v1.version)
    for rel in (store.model_version_rel("anodfdnet", v) for v in (v1.version, v2.version)):
        os.remove(store.path(f"{rel}/{model_store.WEIGHTS}"))  # a card-only lookup must not need them

    assert model_store.resolve_card(store, "anodfdnet").version == v1.version  # production alias
    assert model_store.resolve_card(store, "anodfdnet:latest").threshold == 0.6
    assert model_store.resolve_card(store, f"anodfdnet:{v1.version}").threshold == 0.4
    local = store.path(store.model_version_rel("anodfdnet", v2.version))
    assert model_store.resolve_card(store, local).version == v2.version  # a local folder
    with pytest.raises(FileNotFoundError):
        model_store.resolve(store, "anodfdnet")  # the full resolve does read the weights
    with pytest.raises(LookupError, match="not found"):
        model_store.resolve_card(store, "anodfdnet:9")
    with pytest.raises(LookupError, match="no production version"):
        model_store.resolve_card(store, "other")
    with pytest.raises(ValueError):
        model_store.resolve_card(store, "../escape")
