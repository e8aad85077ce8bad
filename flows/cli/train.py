"""``anodet train`` and ``anodet pretrain`` (with its ``--quality-steps`` quality table): training and registering models."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from ._common import SINGLE_IMAGE_ARCHS, _bf16, _device, _json_object, _settings, _store

if TYPE_CHECKING:
    from anodet_core.config import Settings
    from anodet_core.store.layout import Store

    from ._common import Subcommands


PAIRED_LR = 2e-4  # paper learning rate of the paired models (train --lr default without --normal-dir)


def cmd_train(args: argparse.Namespace) -> int:
    """``anodet train``: train a paired model on labelled nights of a depot (or a single-image one) and register it."""
    from anodet_core.registry.retraining import MARGIN, register_and_maybe_promote
    from anodet_core.training import TrainConfig, train_candidate

    if getattr(args, "normal_dir", None) or getattr(args, "model", None):
        return _train_single_image(args)
    settings = _settings(args)
    store = _store(settings)
    nights = args.nights or store.nights(args.depot)
    if not nights:
        print(f"error: depot {args.depot!r} has no nights in {settings.store}", file=sys.stderr)
        return 2
    test = [args.holdout_night] if args.holdout_night else ([nights[-1]] if len(nights) > 1 else [])
    train = [n for n in nights if n not in test]
    device = _device(settings)
    init = _init_ref(args.init, args.arch)
    cfg = TrainConfig(epochs=args.epochs, max_seconds=args.max_minutes * 60, seed=args.seed, device=device,
                      bf16=_bf16(args.bf16, device), lr=PAIRED_LR if args.lr is None else args.lr, loss=args.loss,
                      synthetic=args.synthetic, max_steps=args.steps, crop=args.crop,
                      lr_schedule="cosine" if init else "constant", channels_last=bool(init))
    overrides = _json_object(args.overrides, "--overrides")
    what = f"fine-tuning {init}" if init else f"training {args.arch} preset={args.preset}"
    print(f"{what} on {args.depot} nights {train}, testing on {test}")
    cand = train_candidate(store, args.depot, train, test, name=args.name or "anodfdnet", arch=args.arch, preset=args.preset,
                           overrides=overrides, cfg=cfg, registration=settings.registration, progress=True, init=init,
                           input_size=args.input_size, rank_size=args.rank_size)
    # the one promotion rule: production (the shipped base while none is promoted) must be beaten by the margin
    promo, _, _ = register_and_maybe_promote(store, cand, metric="f1", margin=MARGIN, device=device, force=args.promote)
    m = cand.card.metrics
    print(f"saved {promo.name}:{promo.candidate_version} ({'production' if promo.promoted else 'not promoted'}); best "
          f"epoch {cand.result.best_epoch}, {cand.result.seconds:.0f} s; test F1 {m.get('f1', float('nan')):.3f} "
          f"IoU {m.get('iou', float('nan')):.3f} AUC {m.get('auc', float('nan')):.3f}; {promo.reason}")
    return 0


def _init_ref(choice: str | None, arch: str) -> str | None:
    """What ``train --init`` starts from: ``base`` (default) the shipped pretrained model when there is one for
    ``arch``, ``none`` nothing (``--arch``/``--preset`` from scratch), else the model reference given."""
    from anodet_core.registry import model_store

    if choice in (None, "base"):
        return f"{arch}:{model_store.PACKAGED_VERSION}" if model_store.packaged_folder(arch) else None
    return None if choice == "none" else choice


def _train_single_image(args: argparse.Namespace) -> int:
    """``anodet train --model csaflow|anovit|patchcore|padim --normal-dir DIR``: unsupervised training on normal images."""
    import numpy as np

    from anodet_core.registry.promotion import MARGIN, promote_if_better
    from anodet_core.single_image import (
            ARCHS,
            VAL_FRAC,
            _split,
            config_input_size,
            evaluate_against_production,
            fit_single_image,
            load_images,
            save_single_image_model,
        )

    arch = args.model or (args.arch if args.arch in ARCHS else None)
    if arch not in ARCHS:
        print(f"error: --normal-dir needs --model {'|'.join(ARCHS)} (the single-image model to train)", file=sys.stderr)
        return 2
    if not args.normal_dir:
        print(f"error: --model {arch} trains on normal images: give --normal-dir DIR (paired models use --arch "
              f"and --depot)", file=sys.stderr)
        return 2
    settings = _settings(args)
    store = _store(settings)
    overrides = _json_object(args.overrides, "--overrides")
    size = config_input_size(arch, args.preset, overrides)
    normal, names = load_images(args.normal_dir, size)
    name = args.name or arch
    device = _device(settings)
    print(f"training {arch} preset={args.preset} on {len(names)} normal images of {args.normal_dir} at {size}x{size} "
          f"({args.epochs} epochs, at most {args.max_minutes:g} min, {device})")
    anomalous = load_images(args.anomalous_dir, size)[0] if args.anomalous_dir else None
    fit = fit_single_image(arch, normal, preset=args.preset, overrides=overrides, epochs=args.epochs,
                           max_seconds=args.max_minutes * 60, lr=args.lr, seed=args.seed, device=device, progress=True,
                           anomalous=anomalous)
    # the retraining rule on the images fit_single_image held out: normal only here, so image AUROC is undefined
    # and a version is promoted only when there is no production (or with --promote)
    val = _split(len(normal), VAL_FRAC, args.seed)[1]

    def held_out(sz: int) -> tuple[np.ndarray, np.ndarray]:
        imgs = normal if sz == size else load_images(args.normal_dir, sz)[0]
        return imgs[val], np.empty((0, sz, sz, 3), np.uint8)

    cand, prod_version, prod_value = evaluate_against_production(store, name, fit.model, fit.threshold,
                                                                  *held_out(size), at_size=held_out, device=device)
    split = f"{fit.n_val} held-out normal images of {args.normal_dir}"
    card = save_single_image_model(store, name, arch, args.preset, overrides, fit.model, fit.threshold, fit.metrics,
                                   fit.extra, eval_split=split, data_fingerprint=fit.data_fingerprint)
    cand_value = float(cand["image_auroc"]) if cand else float("nan")
    promo = promote_if_better(store, card, cand_value, prod_version, prod_value, metric="image_auroc", margin=MARGIN,
                              eval_split=split, force=args.promote)
    x = card.extra
    loss = fit.history[-1]["loss"]
    how = ("fitted in one pass (no gradient)" if loss != loss else f"{len(fit.history)} epochs")  # NaN: memory-based
    at = (f"recall {fit.metrics['val_recall']:.3f}, false alarms {fit.metrics['val_false_alarm_rate']:.3f} on the "
          f"calibration images" if "val_recall" in fit.metrics else
          f"normal scores mean {x['normal_score_mean']:.6g}, std {x['normal_score_std']:.3g}")
    print(f"saved {card.name}:{card.version} ({'production' if promo.promoted else 'not promoted'}); "
          f"{how} on {fit.n_train} images in {fit.seconds:.1f} s" + ("" if loss != loss else f", final loss {loss:.4f}")
          + f"; threshold {card.threshold:.6g} ({x['threshold_rule']}; {at}); {promo.reason}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``anodet pretrain``: build the corpus if needed, train the base preset for fixed steps, register it."""
    from anodet_core.pretraining.corpus import CORPUS_FILE, CorpusSpec, build_corpus
    from anodet_core.pretraining.pretrain import export_packaged, pretrain
    from anodet_core.training import TrainConfig

    settings = _settings(args)
    store = _store(settings)
    if args.quality_steps:
        return _quality_table(args, settings, store)
    if not os.path.exists(os.path.join(args.corpus, CORPUS_FILE)):
        t0 = time.perf_counter()
        spec = CorpusSpec(train_per_photo=args.train_per_photo, test_per_photo=args.test_per_photo, seed=args.seed,
                          dirs=tuple(args.photo_dirs) if args.photo_dirs is not None else None)
        rec = build_corpus(args.corpus, spec)
        print(f"corpus {args.corpus}: {rec['n_train']} train pairs from {len(rec['train_photos'])} photographs, "
              f"{rec['n_test']} test pairs from {len(rec['test_photos'])} held-out photographs ({rec['changes']}) "
              f"in {time.perf_counter() - t0:.0f} s")
    device = _device(settings)
    cfg = TrainConfig(epochs=args.epochs, max_steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
                      device=device, bf16=_bf16(args.bf16, device), crop=args.crop, lr_schedule="cosine",
                      channels_last=True, synthetic=args.synthetic, max_seconds=args.max_minutes * 60)
    overrides = _json_object(args.overrides, "--overrides")
    # a continuation never resumes a fresh run's checkpoint (a reference or path, made a file-name part)
    start = "-from-" + re.sub(r"[^A-Za-z0-9._-]+", "_", args.init).strip("_") if args.init else ""
    checkpoint = args.checkpoint or os.path.join(args.corpus, f"checkpoint-{args.preset}{start}-seed{args.seed}.pt")
    if args.recalibrate:
        print(f"recalibrating {args.init} on the validation split of {args.corpus} (no training; {device})")
    else:
        print(f"pretraining anodfdnet preset={args.preset} {overrides or ''} for {args.steps} steps of {args.batch} "
              f"(crops {args.crop or 256}px, cosine lr from {args.lr:g}, {device}); checkpoint {checkpoint}")
    card = pretrain(store, args.corpus, cfg, name=args.name, preset=args.preset, overrides=overrides,
                    checkpoint=checkpoint, promote=args.promote, progress=True, evaluate_test=not args.no_test,
                    init=args.init, recalibrate=args.recalibrate)
    cal = card.extra["calibration"]
    what = (f"the weights of {args.init}, recalibrated" if args.recalibrate
            else f"{card.extra['steps']} steps in {card.extra['train_seconds']:.0f} s")
    print(f"saved {card.name}:{card.version}: {what}; "
          f"validation F1 {cal['pixel_f1_at_05']:.3f} at 0.5; operating point threshold {card.threshold:.2f}, "
          f"min finding area {card.min_finding_area} px, no-history score {card.no_history_score}")
    if card.metrics:
        print("held-out photographs: " + ", ".join(f"{k} {v:.4f}" for k, v in card.metrics.items()
                                                    if isinstance(v, float)))
    if args.export:
        print(f"exported to {export_packaged(store, card.name, card.version, args.export)}")
    return 0


def _quality_table(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    """``anodet pretrain --quality-steps N [--quality-models REF ...]``: the held-out quality table."""
    from anodet_core.pretraining.quality import quality_table, to_markdown
    from anodet_core.registry.model_store import load

    device = _device(settings)
    extra = [(f"{ref} (as built)", *load(store, ref, device)) for ref in args.quality_models or []]
    rows = quality_table(args.corpus, args.quality_steps, extra_models=extra, seed=args.seed, device=device,
                         bf16=_bf16(args.bf16, device))
    text = to_markdown(rows, f"held-out photographs of {args.corpus} ({args.quality_steps} steps per trained method)")
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``train`` and ``pretrain``."""
    t = sub.add_parser("train", help="train a paired model on labelled nights of a depot (or, with --model and "
                                     "--normal-dir, a single-image model on normal images) and register it")
    t.add_argument("--depot", default="demo")
    t.add_argument("--nights", nargs="*", help="training nights (default: all but the hold-out)")
    t.add_argument("--holdout-night", help="night kept for the card's test metrics (default: the last)")
    t.add_argument("--name", help="registry name the version is saved under (default: anodfdnet; with --normal-dir: "
                                  "the --model arch)")
    t.add_argument("--arch", default="anodfdnet", help="model architecture (anodet_core.models)")
    t.add_argument("--model", choices=SINGLE_IMAGE_ARCHS,
                   help="single-image unsupervised model, trained on --normal-dir instead of a depot")
    t.add_argument("--normal-dir", help="folder of normal images (jpg/png/bmp/tif) for --model: 80%% train, 20%% "
                                        "held out to set the image-score threshold (their 99th percentile)")
    t.add_argument("--anomalous-dir", help="with --normal-dir: a few labelled anomalous images (never trained on); the "
                                           "threshold then maximises recall - false-alarm rate over them and the "
                                           "held-out normal images")
    t.add_argument("--init", default="base", help="start from: base (the shipped pretrained model, default), none "
                                                 "(--arch/--preset from scratch) or a model reference NAME[:VERSION]")
    t.add_argument("--preset", default="lite", help="architecture preset with --init none: paper | lite | base")
    t.add_argument("--steps", type=int, default=0, help="optimiser steps in all (0: only --epochs / --max-minutes bound it)")
    t.add_argument("--crop", type=int, default=0, help="random training crops (multiple of 16; 0 = whole pairs)")
    t.add_argument("--input-size", type=int,
                   help="side pairs are prepared at and the model is fed, kept in its card for the night, predict "
                        "and evaluate (multiple of 16; default: the starting model's, 256 for the base)")
    t.add_argument("--rank-size", type=int,
                   help="AnoDFDNet: also try pairs prepared at this larger side, the decision map at the training "
                        "side and a map at this side that only ranks what it leaves below the threshold; kept "
                        "when the validation night's captures rank better (default: off)")
    t.add_argument("--overrides", help='JSON of config overrides, e.g. \'{"depth": 4}\'')
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--max-minutes", type=float, default=30.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, help="Adam learning rate (default: paired paper 2e-4; --model: CSA-Flow "
                                            "and AnoViT its preset's: CSA-Flow paper 2e-4, lite 1e-3; AnoViT paper 1e-4, lite 1e-3)")
    t.add_argument("--loss", choices=["bce", "bce+dice"], default="bce+dice", help="bce is the paper's loss")
    t.add_argument("--synthetic", type=float, default=0.5,
                   help="probability of a pasted synthetic change per sample (0 = the paper's protocol)")
    t.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast in training (auto: where the CPU/GPU has native bf16)")
    t.add_argument("--promote", action="store_true", help="make the new version production (default: only if none)")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.set_defaults(func=cmd_train)

    pt = sub.add_parser("pretrain", help="build the generic pretraining corpus from offline photographs (if missing) and "
                                         "pretrain the base paired model on it for a fixed number of steps")
    pt.add_argument("--corpus", default="anodet-corpus", help="corpus folder (train/, test/, corpus.json); built when absent")
    pt.add_argument("--photo-dirs", nargs="*", help="photo folders besides scikit-image's and matplotlib's "
                                                   "(default /usr/share/backgrounds: `make pretrain-data`)")
    pt.add_argument("--train-per-photo", type=int, default=80)
    pt.add_argument("--test-per-photo", type=int, default=10)
    pt.add_argument("--name", default="anodfdnet", help="registry name of the version")
    pt.add_argument("--preset", default="base")
    pt.add_argument("--overrides", help='JSON of AnoDFDNetConfig overrides, e.g. \'{"feature_norm": "l2"}\'')
    pt.add_argument("--steps", type=int, default=6000, help="optimiser steps (the budget; no wall-time cap decides)")
    pt.add_argument("--epochs", type=int, default=1000, help="upper bound on passes over the corpus")
    pt.add_argument("--batch", type=int, default=8)
    pt.add_argument("--crop", type=int, default=160, help="random training crops (multiple of 16; 0 = whole pairs)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (cosine schedule)")
    pt.add_argument("--synthetic", type=float, default=0.3, help="probability of an extra pasted change per sample")
    pt.add_argument("--max-minutes", type=float, default=float("inf"), help="safety stop (recorded in the card)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    pt.add_argument("--checkpoint", help="resumable checkpoint file (default: in the corpus folder)")
    pt.add_argument("--init", help="continue training this model reference (e.g. anodfdnet:base, the shipped one) "
                                   "instead of a fresh --preset")
    pt.add_argument("--recalibrate", action="store_true",
                    help="with --init: train nothing; choose the operating point (map temperature, threshold, minimum "
                         "area, no-history score) on validation again and re-evaluate on the held-out photographs, as a new version")
    pt.add_argument("--no-test", action="store_true", help="skip the held-out evaluation")
    pt.add_argument("--promote", action="store_true", help="make the version production")
    pt.add_argument("--export", help="copy the version into this folder (anodet_core/weights/anodfdnet-base ships it)")
    pt.add_argument("--quality-steps", type=int, default=0,
                    help="instead of pretraining: train every method of the quality table for this many steps and "
                         "score it, the classical baseline and --quality-models on the corpus's test split")
    pt.add_argument("--quality-models", nargs="*", help="model references scored as built in the quality table")
    pt.add_argument("--out", help="also write the quality table (Markdown) to this file")
    pt.add_argument("--device", help="auto | cpu | cuda")
    pt.set_defaults(func=cmd_pretrain)
