"""Single-image unsupervised models (CSA-Flow, AnoViT; the baselines PatchCore, PaDiM): folders in, trained and
calibrated model cards out.

Unlike the paired models (current vs historical capture, trained on labelled changes), these models see one
image and are trained on NORMAL images only; an image is anomalous when it is unlikely (CSA-Flow: flow negative
log-likelihood of its features), badly reconstructed (AnoViT) or far from the normal features (PatchCore: nearest
memory patch; PaDiM: per-position Gaussian).  This package holds everything the
``anodet train --model ...`` and ``anodet evaluate --normal-dir ...`` commands, the night and the retraining
flow need, one concern per module:

* :mod:`.archs`: the architectures (:data:`ARCHS`, from the model registry), input sizes, input normalisation.
* :mod:`.folders`: :func:`load_images` / :func:`load_masks`, a folder resized to the model input.
* :mod:`.training`: :func:`train_single_image` on normal images.
* :mod:`.scoring`: :func:`score_images`, image scores and maps in the model's own units.
* :mod:`.fitting`: :func:`fit_single_image`, seeded split, training and the threshold rule (:func:`calibrate`).
* :mod:`.evaluation`: :func:`evaluate_single_image`, image AUROC, recall, false alarms, pixel AUROC.
* :mod:`.registry`: :func:`save_single_image_model`, a model-store version.
* :mod:`.night`: :class:`SingleImageScorer` and the map normalisation of the night.
* :mod:`.benchmark`: the project's held-out single-image benchmark and ``anodet compare --single-image``.
* :mod:`.retraining`: :func:`retrain_region_model`, the per-region models of the retraining flow, and
  :func:`evaluate_against_production`, the same-images comparison that ``train`` uses too.
"""

from ..imaging.prepare import prepare_image
from .archs import ARCHS, config_input_size, model_input_size, to_input
from .evaluation import evaluate_single_image
from .fitting import THRESHOLD_QUANTILE, VAL_FRAC, SingleImageFit, calibrate, fit_single_image
from .fitting import _split as _split  # used by the tests
from .folders import IMAGE_SUFFIXES, list_images, load_images, load_masks
from .night import MAP_THRESHOLD, SingleImageScorer, map_scale, normalise_map, single_image_model_name
from .registry import save_single_image_model
from .retraining import (
    MIN_NORMAL,
    RegionRetrain,
    evaluate_against_production,
    labelled_captures,
    retrain_region_model,
    single_image_regions,
)
from .scoring import MAX_PIXELS, score_images
from .training import ANOVIT_LR, train_single_image

__all__ = [
    "ARCHS",
    "IMAGE_SUFFIXES",
    "THRESHOLD_QUANTILE",
    "VAL_FRAC",
    "ANOVIT_LR",
    "MAX_PIXELS",
    "config_input_size",
    "model_input_size",
    "list_images",
    "load_images",
    "load_masks",
    "to_input",
    "train_single_image",
    "score_images",
    "calibrate",
    "SingleImageFit",
    "fit_single_image",
    "evaluate_single_image",
    "save_single_image_model",
    "MAP_THRESHOLD",
    "MIN_NORMAL",
    "single_image_model_name",
    "prepare_image",
    "map_scale",
    "normalise_map",
    "SingleImageScorer",
    "labelled_captures",
    "single_image_regions",
    "evaluate_against_production",
    "RegionRetrain",
    "retrain_region_model",
]
