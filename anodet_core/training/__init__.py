"""Supervised training of paired models (AnoDFDNet and baselines) from labelled pairs.

Protocol (AnoDFDNet paper): BCE on the sigmoid map (computed from logits, which is the same loss without
the log(0) hazard), Adam lr 2e-4 betas (0.5, 0.999), batch 4, one augmentation per sample drawn from
{identity, vertical flip, horizontal flip, 180° rotation} applied jointly to cur, his and mask, 256x256.
Beyond the paper (switchable): independent photometric jitter of cur and his (gain, gamma), because nightly
illumination changes are nuisance the model must learn to ignore.

The best checkpoint is the one with the best validation F1 (micro, pixels, threshold 0.5).

Modules: :mod:`.data` (labelled pairs, prepared arrays, splits), :mod:`.augment` (flips, photometric jitter,
synthetic changes), :mod:`.config` (``TrainConfig``, ``TrainResult``), :mod:`.evaluate` (pixel metrics of a
model), :mod:`.loop` (``train_pairs``), :mod:`.candidate` (``train_candidate``: a store's nights to an unsaved
model and card).
"""

from .augment import AUGMENTATIONS, flip_augment
from .candidate import Candidate, train_candidate
from .config import TrainConfig, TrainResult
from .data import (
    LabelledPair,
    PairArrays,
    folder_pairs,
    mask_to_model,
    prepare_arrays,
    split_indices,
    split_last_group,
    store_pairs,
)
from .evaluate import evaluate_arrays, pixel_metrics
from .loop import train_pairs

__all__ = [
    "AUGMENTATIONS",
    "Candidate",
    "LabelledPair",
    "PairArrays",
    "TrainConfig",
    "TrainResult",
    "evaluate_arrays",
    "flip_augment",
    "folder_pairs",
    "mask_to_model",
    "pixel_metrics",
    "prepare_arrays",
    "split_indices",
    "split_last_group",
    "store_pairs",
    "train_candidate",
    "train_pairs",
]
