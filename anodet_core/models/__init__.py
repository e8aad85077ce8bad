"""Models: the registry (:mod:`._registry`) and one module per model family, each registering itself.

``create_model(name, preset=..., **overrides)`` builds any of them; model modules import the registry, never
this package, so there is no import cycle.
"""

from ._registry import (
    PAIRED_INFO,
    ModelInfo,
    ModelKind,
    config_input_size,
    create_model,
    instance_info,
    list_models,
    list_presets,
    model_config,
    model_info,
    preset_config,
    register_model,
    single_image_models,
)

# importing a model module registers it
# isort: off
from . import anodfdnet  # noqa: E402,F401
from . import fc_siam_diff  # noqa: E402,F401
from . import unet_cat  # noqa: E402,F401
from . import csaflow  # noqa: E402,F401
from . import anovit  # noqa: E402,F401
from . import classical_diff  # noqa: E402,F401
from . import patchcore  # noqa: E402,F401
from . import padim  # noqa: E402,F401
# isort: on

__all__ = ["register_model", "create_model", "list_models", "list_presets", "preset_config", "model_info", "instance_info",
           "single_image_models", "model_config", "config_input_size", "ModelInfo", "ModelKind", "PAIRED_INFO"]
