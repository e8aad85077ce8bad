"""The single-image models' scoring surface: one ``score_and_map`` per model, the two views of it derived here."""

from __future__ import annotations

import torch


class ScoreAndMap:
    """Mixin: ``image_score`` and ``anomaly_map`` from the model's one ``score_and_map`` pass (no second path)."""

    def score_and_map(self, x: torch.Tensor, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image scores (B,), maps (B, 1, H, W) or None when ``maps`` is False)."""
        raise NotImplementedError

    def image_score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per image, (B,)."""
        return self.score_and_map(x, maps=False)[0]

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel anomaly map, (B, 1, H, W)."""
        m = self.score_and_map(x)[1]
        assert m is not None
        return m
