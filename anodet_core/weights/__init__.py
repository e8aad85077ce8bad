"""Model versions shipped inside the package (safetensors + card.json per folder), rebuilt by ``anodet pretrain``.

``anodfdnet-base/``: the pretrained AnoDFDNet ``base`` preset (see its ``MODEL_CARD.md`` for the data, the
figures and the command that rebuilds it). A store whose ``anodfdnet`` has no production version uses it.
"""

from __future__ import annotations

import os

__all__ = ["PACKAGED", "packaged_model_dir"]

PACKAGED: dict[str, str] = {"anodfdnet": "anodfdnet-base"}
"""Registry name -> folder beside this file."""


def packaged_model_dir(name: str) -> str | None:
    """The shipped folder for registry ``name`` when it exists and holds weights and a card, else None."""
    folder = PACKAGED.get(name)
    if folder is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), folder)
    ok = all(os.path.isfile(os.path.join(path, f)) for f in ("weights.safetensors", "card.json"))
    return path if ok else None
