"""Pretraining the base paired model on the corpus, and shipping it.

``pretrain`` prepares the corpus's train split exactly as the night prepares pairs (registration included;
cached beside the corpus), keeps a random tenth of it for validation (best checkpoint, operating point),
trains the ``base`` preset for a fixed number of steps, calibrates, evaluates on the held-out photographs
through the scoring path the night uses, and saves a registry version whose card records the corpus
fingerprint, the code version and those figures. ``export_packaged`` copies a version into the package
(:mod:`anodet_core.weights`), which is how the shipped default is made.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from ..config import available_cores
from ..registry.model_store import CARD, WEIGHTS, ModelCard, code_version, save_version, set_alias
from ..scoring.calibration import calibrate
from ..store.layout import Store
from ..training import PairArrays, TrainConfig, TrainResult, folder_pairs, prepare_arrays, split_indices, train_pairs
from .corpus import CORPUS_FILE

__all__ = ["load_split", "pretrain", "export_packaged"]


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _prepare_chunk(pairs: list, registration: str) -> PairArrays:
    return prepare_arrays(_read, pairs, registration=registration)


def _preparation_code() -> str:
    """Hash of the code that prepares a pair (decoding, registration, warping, fill): a cache made by other code
    holds other arrays (one made before the history faded into the fill trained and calibrated on hard edges)."""
    import hashlib

    from .. import imaging

    h = hashlib.sha256()
    root = os.path.dirname(imaging.__file__)
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(dirpath, name), "rb") as fh:
                h.update(name.encode() + b"\0" + fh.read())
    return h.hexdigest()[:10]


def load_split(corpus: str, split: str, *, registration: str = "auto", progress: bool = False) -> PairArrays:
    """Prepared arrays of one corpus split, cached in ``corpus/prepared-<split>-<fingerprint>-<registration>-<code>.npz``
    (``code``: :func:`_preparation_code`, so a change to the preparation prepares the split again)."""
    with open(os.path.join(corpus, CORPUS_FILE)) as fh:
        fp = json.load(fh)["fingerprint"]
    cache = os.path.join(corpus, f"prepared-{split}-{fp}-{registration}-{_preparation_code()}.npz")
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        return PairArrays(list(z["keys"]), z["cur"], z["his"], z["mask"], list(z["groups"]),
                          [(int(w), int(h)) for w, h in z["sizes"]], z["history_weight"])
    pairs = folder_pairs(os.path.join(corpus, split))
    if not pairs:
        raise ValueError(f"corpus split {split!r} under {corpus} has no pairs")
    workers = max(1, min(available_cores(), len(pairs) // 64))
    if workers > 1:  # registration is CPU-bound and holds the GIL: one process per core
        chunks = [pairs[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_prepare_chunk, chunks, [registration] * workers))
        order = {p.key: i for i, p in enumerate(pairs)}
        data = PairArrays(sum((q.keys for q in parts), []), np.concatenate([q.cur for q in parts]),
                          np.concatenate([q.his for q in parts]), np.concatenate([q.mask for q in parts]),
                          sum((q.groups for q in parts), []), sum((q.sizes for q in parts), []),
                          np.concatenate([q.history_weight for q in parts]))
        data = data.subset(sorted(range(len(data)), key=lambda i: order[data.keys[i]]))
    else:
        data = prepare_arrays(_read, pairs, registration=registration, progress=progress)
    data.groups = [k.rsplit("-", 1)[0] for k in data.keys]  # source photograph of each pair
    tmp = cache + ".tmp.npz"
    np.savez(tmp, keys=np.array(data.keys), cur=data.cur, his=data.his, mask=data.mask, groups=np.array(data.groups),
             sizes=np.array(data.sizes, np.int64),
             history_weight=data.history_weight if data.history_weight is not None else np.full(data.mask.shape, 255, np.uint8))
    os.replace(tmp, cache)
    return data


def pretrain(
    store: Store,
    corpus: str,
    cfg: TrainConfig,
    *,
    name: str = "anodfdnet",
    preset: str = "base",
    overrides: dict[str, Any] | None = None,
    val_frac: float = 0.1,
    registration: str = "auto",
    checkpoint: str | None = None,
    promote: bool = False,
    progress: bool = False,
    evaluate_test: bool = True,
    init: str | None = None,
    recalibrate: bool = False,
) -> ModelCard:
    """Train, calibrate, evaluate on the held-out photographs and save a version (see the module docstring).

    ``init`` (a model reference such as ``anodfdnet:base``) continues training that model instead of a fresh
    ``preset``: its preset and config are kept and the card adds its steps to this run's (``steps_total``).
    ``recalibrate`` (with ``init``) trains nothing: the same weights get a new operating point (map
    temperature, threshold, minimum area) and held-out figures from this code's scoring path, as a new version.
    """
    from ..models import create_model
    from ..registry.model_store import load

    with open(os.path.join(corpus, CORPUS_FILE)) as fh:
        record = json.load(fh)
    data = load_split(corpus, "train", registration=registration, progress=progress)
    tr, va = split_indices(len(data), val_frac, cfg.seed)
    train, val = data.subset(tr), data.subset(va)
    init_steps = 0
    init_record: dict[str, Any] | None = None
    if init:
        model, init_card = load(store, init, "cpu")
        preset, overrides = init_card.preset or preset, dict(init_card.config)
        init_steps = int(init_card.extra.get("steps_total", init_card.extra.get("steps", 0)))
        init_record = {"ref": init, "version": init_card.version, "created_at": init_card.created_at,
                       "code_version": init_card.code_version, "steps_total": init_steps,
                       "train_config": init_card.extra.get("train_config", {})}
    else:
        model = create_model("anodfdnet", preset=preset, **(overrides or {}))
    if recalibrate:
        if not init:
            raise ValueError("recalibrate needs init: the model whose operating point is chosen again")
        overrides = {k: v for k, v in (overrides or {}).items() if k != "map_temperature"}  # chosen again below
        result = TrainResult(model.state_dict(), 0, dict(init_card.extra.get("best_val") or {}), [], 0.0)
    else:
        result = train_pairs(model, train, val, cfg, progress=progress, checkpoint=checkpoint)
    cal = calibrate(model, val, cfg.device)
    card = ModelCard(
        name=name, arch="anodfdnet", preset=preset, config={**(overrides or {}), **cal.config()}, threshold=cal.threshold,
        min_finding_area=cal.min_finding_area, no_history_score=cal.no_history_score, data_fingerprint=record["fingerprint"],
        code_version=code_version(),
        extra={
            "pretraining": {
                "corpus_spec": record["spec"], "train_photos": sorted(record["train_photos"]),
                "test_photos": sorted(record["test_photos"]), "n_train": len(tr), "n_val": len(va),
                "changes": record["changes"],
            },
            "calibration": asdict(cal),
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "train_seconds": round(result.seconds, 1),
            "steps": sum(int(h.get("steps", 0)) for h in result.history),
            "init": init_record,
            "steps_total": init_steps + sum(int(h.get("steps", 0)) for h in result.history),
            "train_config": {k: v for k, v in asdict(cfg).items() if k != "max_seconds" or math.isfinite(v)},
            "history": result.history,
        },
    )
    if recalibrate and init_record is not None:  # the init's training record (same weights); a new operating point
        card.extra = {**init_card.extra, "calibration": asdict(cal),
                      "recalibrated": {k: init_record[k] for k in ("ref", "version", "created_at", "code_version")}}
    if evaluate_test:
        from ..evaluation.evaluate import evaluate_model_on_pairs

        test = folder_pairs(os.path.join(corpus, "test"))
        card.metrics = evaluate_model_on_pairs(model, card, test, device=cfg.device, registration=registration)
        card.eval_split = (f"pretraining corpus test split: {len(test)} pairs from {len(record['test_photos'])} "
                           f"held-out photographs ({', '.join(sorted(record['test_photos']))})")
    card = save_version(store, model, card)
    if promote:
        set_alias(store, card.name, card.version)
    return card


def _continued(card: ModelCard) -> str:
    """The model card's lines on the model this one continued from, or was recalibrated from (empty for a fresh run)."""
    re_ = card.extra.get("recalibrated")
    again = (f"\n- Recalibrated by code {card.code_version} (same weights, no training): operating point and held-out "
             f"figures of `{re_['ref']}` (code {re_.get('code_version')}) chosen again") if isinstance(re_, dict) else ""
    init = card.extra.get("init")
    if not isinstance(init, dict):
        return again
    return again + (f"\n- Continued from `{init['ref']}` (created {init.get('created_at')}, {init.get('steps_total')} steps, "
            f"config `{json.dumps(init.get('train_config', {}), sort_keys=True)}`): "
            f"{card.extra.get('steps_total')} steps in all")


def export_packaged(store: Store, name: str, version: str, dest: str) -> str:
    """Copy version ``name:version`` (weights + card) into ``dest`` (a folder of :mod:`anodet_core.weights`)."""
    from ..registry.model_store import PACKAGED_VERSION, read_card

    card = read_card(store, name, version)
    weights = store.read_bytes(f"{store.model_version_rel(name, version)}/{WEIGHTS}")
    card.extra = {**card.extra, "registry_version": card.version}
    card.version = PACKAGED_VERSION
    tmp = dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, WEIGHTS), "wb") as fh:
        fh.write(weights)
    with open(os.path.join(tmp, CARD), "w") as fh:
        fh.write(card.to_json())
    with open(os.path.join(tmp, "MODEL_CARD.md"), "w") as fh:
        fh.write(model_card_markdown(card, len(weights)))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


REBUILD_COMMAND = "make pretrain-data && make pretrain"


def model_card_markdown(card: ModelCard, n_bytes: int) -> str:
    """A human-readable card for a shipped version: what it is, what it saw, how it scores, how to rebuild it."""
    pre = card.extra.get("pretraining", {})
    cal = card.extra.get("calibration", {})
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in card.metrics.items() if isinstance(v, float))
    return f"""# {card.name}:{card.version} (registry version {card.extra.get('registry_version', '?')})

AnoDFDNet, preset `{card.preset}` {card.config or ''}: ImageNet EfficientNet-Lite0 as the shared encoder of cur
and his, |F_cur - F_his| at strides 2/4/8/16, a 2-layer pre-LN Transformer over the 16x16 stride-16 difference,
a pyramid decoder with a pixel-difference skip, sigmoid map. Weights: {n_bytes / 1e6:.1f} MB safetensors.

- Code: {card.code_version}; created {card.created_at}
- Data: the generic pretraining corpus (fingerprint `{card.data_fingerprint}`), {pre.get('n_train', '?')} training
  and {pre.get('n_val', '?')} validation pairs synthesised from {len(pre.get('train_photos', []))} offline photographs;
  changes: {pre.get('changes', {})}
- Training: {card.extra.get('steps', '?')} steps in {card.extra.get('train_seconds', '?')} s, config
  `{json.dumps(card.extra.get('train_config', {}), sort_keys=True)}`{_continued(card)}
- Operating point (validation): threshold {card.threshold}, minimum finding area {card.min_finding_area} native px,
  no-history score {card.no_history_score} (decision F1 {cal.get('decision_f1', float('nan')):.3f})
- Held-out evaluation: {card.eval_split}

| metric | value |
|---|---|
{rows}

Rebuild: `{REBUILD_COMMAND}` (seeded; bf16 autocast where the CPU has it, so figures move slightly between CPUs).
"""
