"""``anodet`` command line: demo, data, training, nightly runs, prediction and queries.

Every option has an ``ANODET_*`` environment default (see anodet_core.config.Settings); flags win.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import tasks._env  # noqa: F401  (Prefect defaults before anything imports prefect)


def _settings(args: argparse.Namespace):
    from anodet_core.config import Settings

    return Settings.from_env(
        store=getattr(args, "store", None),
        model=getattr(args, "model", None),
        batch_size=getattr(args, "batch_size", None),
        device=getattr(args, "device", None),
        second_opinion=getattr(args, "second_opinion", None),
    )


def _store(settings):
    from anodet_core.layout import Store

    return Store(settings.store, settings.storage_options or None)


# ------------------------------------------------------------------------------------------ commands


def cmd_demo_data(args: argparse.Namespace) -> int:
    from anodet_core.demo_data import DemoSpec, generate_depot

    settings = _settings(args)
    spec = DemoSpec(
        depot=args.depot, first_night=args.first_night, nights=args.nights, trains=args.trains, cars=args.cars,
        regions=args.regions, width=args.width, height=args.height, seed=args.seed,
    )
    t0 = time.perf_counter()
    summary = generate_depot(_store(settings), spec)
    print(f"wrote {summary.n_captures} captures ({summary.n_anomalous} anomalous: {summary.counts_by_type}) and "
          f"{summary.n_references} references for depot {summary.depot}, nights {summary.nights[0]}..{summary.nights[-1]} "
          f"into {settings.store} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from anodet_core import model_store
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
                           overrides=overrides, cfg=cfg, registration=settings.registration, progress=True, init=init)
    card = model_store.save_version(store, cand.model, cand.card)
    promote = args.promote or model_store.get_alias(store, card.name) is None
    if promote:
        model_store.set_alias(store, card.name, card.version)
    m = card.metrics
    print(f"saved {card.name}:{card.version} ({'production' if promote else 'not promoted'}); best epoch "
          f"{cand.result.best_epoch}, {cand.result.seconds:.0f} s; test F1 {m.get('f1', float('nan')):.3f} "
          f"IoU {m.get('iou', float('nan')):.3f} AUC {m.get('auc', float('nan')):.3f}")
    return 0


PAIRED_LR = 2e-4  # paper learning rate of the paired models (train --lr default without --normal-dir)


def _init_ref(choice: str | None, arch: str) -> str | None:
    """What ``train --init`` starts from: ``base`` (default) the shipped pretrained model when there is one for
    ``arch``, ``none`` nothing (``--arch``/``--preset`` from scratch), else the model reference given."""
    from anodet_core import model_store

    if choice in (None, "base"):
        return f"{arch}:{model_store.PACKAGED_VERSION}" if model_store.packaged_folder(arch) else None
    return None if choice == "none" else choice


def _train_single_image(args: argparse.Namespace) -> int:
    """``anodet train --model csaflow|anovit --normal-dir DIR``: unsupervised training on normal images."""
    from anodet_core import model_store
    from anodet_core.single_image import ARCHS, config_input_size, fit_single_image, load_images, save_single_image_model

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
    fit = fit_single_image(arch, normal, preset=args.preset, overrides=overrides, epochs=args.epochs,
                           max_seconds=args.max_minutes * 60, lr=args.lr, seed=args.seed, device=device, progress=True)
    had_production = model_store.get_alias(store, name) is not None
    card = save_single_image_model(store, name, arch, args.preset, overrides, fit.model, fit.threshold, fit.metrics,
                                   fit.extra, eval_split=f"{fit.n_val} held-out normal images of {args.normal_dir}",
                                   data_fingerprint=fit.data_fingerprint, promote=args.promote)
    promoted = args.promote or not had_production
    x = card.extra
    print(f"saved {card.name}:{card.version} ({'production' if promoted else 'not promoted'}); "
          f"{len(fit.history)} epochs on {fit.n_train} images in {fit.seconds:.1f} s, final loss "
          f"{fit.history[-1]['loss']:.4f}; threshold {card.threshold:.6g} (quantile {x['threshold_quantile']} of "
          f"{fit.n_val} held-out normal image scores: mean {x['normal_score_mean']:.6g}, std {x['normal_score_std']:.3g})")
    return 0


def _bf16(choice: str, device: str) -> bool:
    from anodet_core.inference import bf16_supported

    return bf16_supported(device) if choice == "auto" else choice == "on"


def _device(settings) -> str:
    from anodet_core.config import resolve_device

    return resolve_device(settings.device)


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
    checkpoint = args.checkpoint or os.path.join(args.corpus, f"checkpoint-{args.preset}-seed{args.seed}.pt")
    print(f"pretraining anodfdnet preset={args.preset} {overrides or ''} for {args.steps} steps of {args.batch} "
          f"(crops {args.crop or 256}px, cosine lr from {args.lr:g}, {device}); checkpoint {checkpoint}")
    card = pretrain(store, args.corpus, cfg, name=args.name, preset=args.preset, overrides=overrides,
                    checkpoint=checkpoint, promote=args.promote, progress=True, evaluate_test=not args.no_test)
    cal = card.extra["calibration"]
    print(f"saved {card.name}:{card.version}: {card.extra['steps']} steps in {card.extra['train_seconds']:.0f} s; "
          f"validation F1 {cal['pixel_f1_at_05']:.3f} at 0.5; operating point threshold {card.threshold:.2f}, "
          f"min finding area {card.min_finding_area} px")
    if card.metrics:
        print("held-out photographs: " + ", ".join(f"{k} {v:.4f}" for k, v in card.metrics.items()
                                                    if isinstance(v, float)))
    if args.export:
        print(f"exported to {export_packaged(store, card.name, card.version, args.export)}")
    return 0


def _quality_table(args: argparse.Namespace, settings, store) -> int:
    """``anodet pretrain --quality-steps N [--quality-models REF ...]``: the held-out quality table."""
    from anodet_core.model_store import load
    from anodet_core.pretraining.quality import quality_table, to_markdown

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


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    """A CLI flag's JSON object (empty when not given); anything else is a clear error."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def cmd_run_night(args: argparse.Namespace) -> int:
    from anodet_core.layout import check_night
    from flows.nightly import run_night

    settings = _settings(args)
    store = _store(settings)
    night = check_night(args.night)
    if not store.exists(store.manifest_rel(args.depot, night)):  # say it plainly before starting Prefect
        raise FileNotFoundError(f"no manifest for depot {args.depot!r} night {night} in {settings.store}")
    summary = run_night(settings, args.depot, night)
    print(summary.markdown())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from distributed import LocalCluster

    from anodet_core import model_store
    from anodet_core.demo_data import DemoSpec, generate_depot
    from anodet_core.training import TrainConfig, train_candidate
    from flows.nightly import run_night
    from flows.runners import local_cluster_kwargs

    settings = _settings(args)
    store = _store(settings)
    t0 = time.perf_counter()
    spec = DemoSpec(depot=args.depot, nights=args.nights, seed=args.seed)
    if not store.nights(spec.depot):
        s = generate_depot(store, spec)
        print(f"[{time.perf_counter() - t0:5.0f}s] demo depot: {s.n_captures} captures, {s.n_anomalous} anomalous "
              f"({s.counts_by_type}), nights {s.nights[0]}..{s.nights[-1]} in {settings.store}")
    nights = store.nights(spec.depot)
    if model_store.get_alias(store, settings.model) is None:
        device = _device(settings)
        base = f"{settings.model}:{model_store.PACKAGED_VERSION}" if model_store.packaged_folder(settings.model) else None
        if base:
            # fine-tune the shipped pretrained model for a fixed number of steps: what is learned does not depend
            # on how fast or busy the machine is, so two runs give the same figures
            cfg = TrainConfig(epochs=10_000, max_steps=args.steps, batch_size=8, crop=args.crop, device=device,
                              seed=args.seed, lr=args.lr, lr_schedule="cosine", channels_last=True, synthetic=0.3,
                              bf16=_bf16("auto", device))
            what = f"fine-tuning the shipped {base} for {args.steps} steps"
        else:  # a checkout without shipped weights: the lite preset from scratch, as before
            cfg = TrainConfig(epochs=args.epochs, max_steps=args.steps, device=device, seed=args.seed, lr=1e-3,
                              bf16=_bf16("auto", device))
            what = f"training the lite preset for {args.steps} steps"
        print(f"[{time.perf_counter() - t0:5.0f}s] no production {settings.model!r}: {what} on nights {nights[:-1]} "
              f"(held out: {nights[-1]})")
        cand = train_candidate(store, spec.depot, nights[:-1], nights[-1:], name=settings.model, preset="lite", cfg=cfg,
                               registration=settings.registration, progress=True, init=base)
        card = model_store.save_version(store, cand.model, cand.card)
        model_store.set_alias(store, card.name, card.version)
        m = card.metrics
        print(f"[{time.perf_counter() - t0:5.0f}s] {card.name}:{card.version} is production; held-out night "
              f"{nights[-1]}: F1 {m['f1']:.3f} IoU {m['iou']:.3f} precision {m['precision']:.3f} recall {m['recall']:.3f} "
              f"pixel AUC {m['auc']:.3f} (at 0.5); operating threshold {card.threshold:.2f} (best validation F1): "
              f"F1 {m['f1_at_threshold']:.3f} IoU {m['iou_at_threshold']:.3f}")
    # one cluster for all nights: workers keep the model loaded between flow runs
    with LocalCluster(**local_cluster_kwargs(settings)) as cluster:
        run_settings = settings.with_(dask_address=cluster.scheduler_address)
        summary = None
        for night in nights:
            summary = run_night(run_settings, spec.depot, night)
            print(f"[{time.perf_counter() - t0:5.0f}s] night {night}: {summary.n_captures} captures, "
                  f"{summary.n_anomalous} anomalous, {summary.by_status}"
                  + (f", image AUROC {summary.image_auroc:.3f}" if summary.image_auroc is not None else ""))
    assert summary is not None
    print()
    print(summary.markdown(top_n=args.top))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. Try: anodet query \"select night, decision, count(*) "
          f"from captures group by all order by all\"")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from anodet_core.predict_folders import predict_folders

    settings = _settings(args)
    out = predict_folders(_store(settings), args.model, args.pairs, args.out, settings)
    print(f"wrote {out['n']} maps and {out['table']}")
    return 0


EVAL_KEYS = ("precision", "recall", "oa", "f1", "iou", "auc", "eer", "image_auroc",  # pixels at > 0.5 (paper)
             "precision_at_op", "recall_at_op", "f1_at_op", "iou_at_op", "threshold", "min_area",  # operating point
             "decision_precision", "decision_recall", "false_alarms")  # capture decisions at the operating point


def cmd_evaluate(args: argparse.Namespace) -> int:
    import math

    from anodet_core.evaluation import dataset_split, evaluate_pairs
    from anodet_core.inference import Predictor
    from anodet_core.model_store import load
    from anodet_core.scoring import operating_point

    if getattr(args, "normal_dir", None) or getattr(args, "anomalous_dir", None):
        return _evaluate_single_image(args)
    if not args.data:
        print("error: evaluate needs --data DIR (paired folder dataset) or --normal-dir DIR --anomalous-dir DIR "
              "(single-image model)", file=sys.stderr)
        return 2
    settings = _settings(args)
    path, pairs = dataset_split(args.data, args.split)
    device = _device(settings)
    model, card = load(_store(settings), args.model, device)
    if card.arch in SINGLE_IMAGE_ARCHS:
        print(f"error: {args.model} is a single-image model ({card.arch}): evaluate it with --normal-dir and "
              f"--anomalous-dir, not --data", file=sys.stderr)
        return 2
    op = operating_point(card, settings)  # the night's: ANODET_THRESHOLD / ANODET_MIN_FINDING_AREA over the card's
    res = evaluate_pairs(Predictor(model, device, fast=settings.fast), pairs, op, registration=settings.registration,
                         batch_size=settings.batch_size, map_dtype=settings.map_dtype)

    def num(v: float | int) -> float | int | None:
        return v if isinstance(v, int) else (None if math.isnan(v) else float(v))

    if args.json:
        print(json.dumps({k: num(res[k]) for k in EVAL_KEYS}))
        return 0
    name = f"{card.name}:{card.version}" if card.version else card.name
    print(f"model {name} on {path}: {res['n_samples']} pairs ({res['n_anomalous']} anomalous), native resolution, "
          f"the nightly post-processing; operating point: threshold {op.threshold:.3f}, min finding area "
          f"{op.min_area} px")
    for title, keys in (("pixels at > 0.5 (paper), summed over all pixels", EVAL_KEYS[:7]),
                        ("pixels at the operating point's threshold", EVAL_KEYS[8:12]),
                        ("captures: AUROC of the map maximum; decisions at the operating point (anomalous iff a "
                         "finding)", EVAL_KEYS[7:8] + EVAL_KEYS[14:])):
        print(f"\n{title}\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        print("| " + " | ".join(str(res[k]) if isinstance(res[k], int) else f"{res[k]:.4f}" for k in keys) + " |")
    return 0


SINGLE_IMAGE_ARCHS = ("csaflow", "anovit")
SINGLE_IMAGE_EVAL_KEYS = ("image_auroc", "recall", "pixel_auroc")


def _evaluate_single_image(args: argparse.Namespace) -> int:
    """``anodet evaluate --model M --normal-dir DIR --anomalous-dir DIR [--mask-dir DIR]``."""
    import math

    from anodet_core.model_store import load
    from anodet_core.single_image import evaluate_single_image, load_images, load_masks, model_input_size

    if not (args.normal_dir and args.anomalous_dir):
        print("error: single-image evaluation needs both --normal-dir and --anomalous-dir", file=sys.stderr)
        return 2
    if args.data:
        print("error: give either --data (paired) or --normal-dir/--anomalous-dir (single-image), not both", file=sys.stderr)
        return 2
    settings = _settings(args)
    device = _device(settings)
    model, card = load(_store(settings), args.model, device)
    if card.arch not in SINGLE_IMAGE_ARCHS:
        print(f"error: {args.model} is a paired model ({card.arch}): evaluate it with --data", file=sys.stderr)
        return 2
    size = model_input_size(model)
    normal, _ = load_images(args.normal_dir, size)
    anomalous, names = load_images(args.anomalous_dir, size)
    masks = load_masks(args.mask_dir, names, size) if args.mask_dir else None
    res = evaluate_single_image(model, card, normal, anomalous, masks, device=device, batch_size=settings.batch_size)

    def num(v: float) -> float | None:
        return None if v is None or math.isnan(v) else float(v)

    if args.json:
        print(json.dumps({k: num(res[k]) for k in SINGLE_IMAGE_EVAL_KEYS}))
        return 0
    name = f"{card.name}:{card.version}" if card.version else card.name
    print(f"model {name} ({card.arch}): {res['n_normal']} normal images ({args.normal_dir}) vs {res['n_anomalous']} "
          f"anomalous ({args.anomalous_dir}) at {size}x{size}; recall and false alarms at the card's image-score "
          f"threshold {res['threshold']:.6g}; pixel AUROC: exact rank AUC over all pixels"
          + (" (normal images: all pixels normal)" if masks is not None else " (no --mask-dir: n/a)"))
    print("| " + " | ".join(SINGLE_IMAGE_EVAL_KEYS) + " | false alarms |")
    print("|" + "---|" * (len(SINGLE_IMAGE_EVAL_KEYS) + 1))
    print("| " + " | ".join("n/a" if num(res[k]) is None else f"{res[k]:.4f}" for k in SINGLE_IMAGE_EVAL_KEYS)
          + f" | {res['false_alarms']}/{res['n_normal']} |")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from anodet_core.compare import compare, depot_split, folder_split, to_markdown
    from anodet_core.training import TrainConfig

    settings = _settings(args)
    if args.data:
        train, test, note, read = folder_split(args.data, seed=args.seed)
    else:
        train, test, note, read = depot_split(_store(settings), args.depot)
    device = _device(settings)
    cfg = TrainConfig(epochs=args.epochs, max_seconds=args.max_minutes_per_method * 60, lr=args.lr, seed=args.seed,
                      device=device, bf16=_bf16("auto", device))
    overrides = _json_object(args.overrides, "--overrides")
    print(note)
    run = compare(train, test, read, note=note, preset=args.preset, layers=args.layers, overrides=overrides, cfg=cfg,
                  out_dir=args.out, registration=settings.registration, progress=True)
    print(f"same trainer for every method: {args.epochs} epochs (at most {args.max_minutes_per_method} min), lr {args.lr}, "
          f"seed {args.seed}, 8:2 train/validation split, best validation F1 kept; test: pixels at > 0.5 summed over "
          f"all {len(test)} test pairs at 256x256")
    print()
    print(to_markdown(run.results, run.title))
    for kind, path in run.paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from flows.bench import run_bench

    settings = _settings(args)
    # with --json, stdout carries the JSON object alone; the narrative goes to stderr
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    out = run_bench(settings, captures=args.captures, batch_size=args.batch_size or 8, repeats=args.repeats,
                    e2e_runs=args.e2e_runs, log=log)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import build_deployments, schedules_from_env

    schedules = schedules_from_env(_settings(args))
    for s in schedules:
        print(f"depot {s.depot}: nightly '{s.nightly_cron}', retrain '{s.retrain_cron}' ({s.timezone})")
    if args.dry_run:
        return 0
    from prefect import serve

    serve(*build_deployments(schedules))  # runs until interrupted; each run uses ANODET_DASK_ADDRESS or a LocalCluster
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain

    settings = _settings(args)
    overrides = _json_object(args.overrides, "--overrides") or None
    out = retrain(depot=args.depot, store=settings.store, model=args.name, preset=args.preset, overrides=overrides,
                  holdout_nights=args.holdout_nights, epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr,
                  seed=args.seed, margin=args.margin)
    print(f"{out['name']}:{out['candidate_version']} {'promoted' if out['promoted'] else 'not promoted'}: {out['reason']}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from anodet_core.query import run_query

    settings = _settings(args)
    df = run_query(_store(settings), args.sql)
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", date_format="iso"))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help="store root, any fsspec URL (env ANODET_STORE, default ./anodet-data)")
    p = argparse.ArgumentParser(prog="anodet", description=__doc__.split("\n")[0], parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    d = sub.add_parser("demo", help="generate a demo depot, fine-tune the shipped base model if there is no production "
                                    "model, run every night, print the summary")
    d.add_argument("--depot", default="demo")
    d.add_argument("--nights", type=int, default=5, help="nights to generate (the last is held out from training)")
    d.add_argument("--steps", type=int, default=400, help="fine-tuning steps of 8 pairs (fixed: no wall-time cap)")
    d.add_argument("--crop", type=int, default=160, help="fine-tuning crop size (multiple of 16; 0 = whole pairs)")
    d.add_argument("--lr", type=float, default=2e-4, help="peak fine-tuning learning rate (cosine schedule)")
    d.add_argument("--epochs", type=int, default=10_000, help="upper bound on passes over the demo's pairs")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--top", type=int, default=20, help="captures listed in the summary")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("demo-data", help="write a seeded demo depot (captures, manifests, labels, references)")
    g.add_argument("--depot", default="demo")
    g.add_argument("--first-night", default="2026-11-16")
    g.add_argument("--nights", type=int, default=5)
    g.add_argument("--trains", type=int, default=2)
    g.add_argument("--cars", type=int, default=2)
    g.add_argument("--regions", type=int, default=5)
    g.add_argument("--width", type=int, default=1920)
    g.add_argument("--height", type=int, default=1200)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_demo_data)

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
    t.add_argument("--init", default="base", help="start from: base (the shipped pretrained model, default), none "
                                                 "(--arch/--preset from scratch) or a model reference NAME[:VERSION]")
    t.add_argument("--preset", default="lite", help="architecture preset with --init none: paper | lite | base")
    t.add_argument("--steps", type=int, default=0, help="optimiser steps in all (0: only --epochs / --max-minutes bound it)")
    t.add_argument("--crop", type=int, default=0, help="random training crops (multiple of 16; 0 = whole pairs)")
    t.add_argument("--overrides", help='JSON of config overrides, e.g. \'{"depth": 4}\'')
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--max-minutes", type=float, default=30.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, help="Adam learning rate (default: paired paper 2e-4; --model: CSA-Flow "
                                            "2e-4, AnoViT 1e-4)")
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

    r = sub.add_parser("run-night", help="run the nightly inspection flow for one depot-night")
    r.add_argument("--depot", required=True)
    r.add_argument("--night", required=True, help="YYYY-MM-DD")
    r.add_argument("--model", help="model reference: NAME (its production version), NAME:VERSION or a local folder")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--device", help="auto | cpu | cuda")
    r.add_argument("--second-opinion", action="store_true", default=None,
                   help="also score captures with history by their region's single-image model (report columns "
                        "second_*; env ANODET_SECOND_OPINION)")
    r.set_defaults(func=cmd_run_night)

    pr = sub.add_parser("predict", help="score unlabelled pair folders (DIR/<pair>/cur.*, his.*): map PNGs + scores.parquet")
    pr.add_argument("--model", required=True, help="NAME, NAME:VERSION or a local model folder")
    pr.add_argument("--pairs", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--batch-size", type=int)
    pr.add_argument("--device", help="auto | cpu | cuda")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="metrics of a paired model on a labelled folder dataset (DIR/<pair>/cur, his, mask), "
                                        "or of a single-image model on --normal-dir vs --anomalous-dir")
    e.add_argument("--model", required=True, help="NAME (production version), NAME:VERSION or a local model folder")
    e.add_argument("--data", help="paired folder dataset; its test/ split when present")
    e.add_argument("--normal-dir", help="single-image model: folder of normal images")
    e.add_argument("--anomalous-dir", help="single-image model: folder of anomalous images")
    e.add_argument("--mask-dir", help="masks of the anomalous images, matched by file stem (<stem>.*), for pixel AUROC")
    e.add_argument("--split", help="evaluate this sub-folder (train, val, test) instead")
    e.add_argument("--json", action="store_true", help="one JSON object: " + ", ".join(EVAL_KEYS)
                   + " (single-image: " + ", ".join(SINGLE_IMAGE_EVAL_KEYS) + "; NaN as null)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--device", help="auto | cpu | cuda")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="train every method with the same protocol and tabulate test metrics (paper Table I / III)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="paired folder dataset: DIR/train + DIR/test, else a seeded 80/20 split of DIR")
    src.add_argument("--depot", help="labelled nights of this depot; the last night is the test split")
    c.add_argument("--preset", default="lite", help="architecture preset of every method: paper | lite")
    c.add_argument("--layers", nargs="+", type=int, help="Table III: AnoDFDNet Transformer depths, e.g. 0 1 2 4 8")
    c.add_argument("--overrides", help='JSON config overrides for every method, flat or per arch: \'{"unet_cat": {...}}\'')
    c.add_argument("--epochs", type=int, default=40)
    c.add_argument("--max-minutes-per-method", type=float, default=30.0)
    c.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (paper: 2e-4)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="anodet-compare", help="folder for the .md, .csv and ROC .png")
    c.add_argument("--device", help="auto | cpu | cuda")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="model-only (fp32 vs fast path) and end-to-end throughput, stage breakdown, memory")
    b.add_argument("--json", action="store_true", help="end with one JSON object of the key figures")
    b.add_argument("--captures", type=int, default=256, help="size of the generated 1920x1200 bench night")
    b.add_argument("--batch-size", type=int, help="pairs per forward pass (default 8)")
    b.add_argument("--repeats", type=int, default=8, help="timed model-only batches per path and measurement")
    b.add_argument("--e2e-runs", type=int, default=3,
                   help="timed nightly runs after the warm-up, each followed by a model-only measurement")
    b.add_argument("--model", help="model whose fp32-vs-fast F1 difference is measured (default: production anodfdnet)")
    b.add_argument("--device", help="auto | cpu | cuda")
    b.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="serve the nightly and retraining deployments on their schedules (Prefect)")
    sv.add_argument("--dry-run", action="store_true", help="print the schedules and exit")
    sv.set_defaults(func=cmd_serve)

    rt = sub.add_parser("retrain", help="train a candidate and promote it only if it beats production on held-out nights")
    rt.add_argument("--depot", required=True)
    rt.add_argument("--name", default="anodfdnet")
    rt.add_argument("--preset", default="lite")
    rt.add_argument("--overrides", help="JSON of config overrides")
    rt.add_argument("--holdout-nights", type=int, default=1)
    rt.add_argument("--epochs", type=int, default=40)
    rt.add_argument("--max-minutes", type=float, default=30.0)
    rt.add_argument("--lr", type=float, default=2e-4)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--margin", type=float, default=0.01, help="required F1 gain over production")
    rt.set_defaults(func=cmd_retrain)

    q = sub.add_parser("query", help="SQL (DuckDB) over the reports: tables `captures` and `findings`")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=int, default=200)
    q.set_defaults(func=cmd_query)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
