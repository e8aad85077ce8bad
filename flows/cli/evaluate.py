"""``anodet predict``, ``anodet evaluate`` and ``anodet compare``: scoring folders, metrics of a model, methods side by side."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from anodet_core.text import printable

from ._common import SINGLE_IMAGE_ARCHS, _bf16, _device, _json_object, _settings, _store

if TYPE_CHECKING:
    from ._common import Subcommands


_PAPER_KEYS = ("precision", "recall", "oa", "f1", "iou", "auc", "eer")  # pixels at > 0.5 (paper), all pixels
_OP_KEYS = ("precision_at_op", "recall_at_op", "f1_at_op", "iou_at_op")  # pixels at the operating point
_DECISION_KEYS = ("decision_precision", "decision_recall", "false_alarms")  # captures at the operating point
# pixels at > 0.5 where the registered history covers cur, and how much it does not
_COVERED_KEYS = ("precision_covered", "recall_covered", "f1_covered", "iou_covered", "auc_covered", "uncovered_frac",
                 "uncovered_anomalous_frac")
EVAL_KEYS = (*_PAPER_KEYS, "image_auroc", *_OP_KEYS, "threshold", "min_area", *_DECISION_KEYS, *_COVERED_KEYS)


SINGLE_IMAGE_EVAL_KEYS = ("image_auroc", "recall", "pixel_auroc")

# exit status of predict and evaluate when no pair at all could be scored (the pairs that failed are listed)
NOTHING_SCORED = 1
SCORED_EXIT = (f"exit status 0 when at least one pair was scored (each pair that could not be is named with its reason), "
               f"{NOTHING_SCORED} when none could be, 2 for a missing or bad argument")


def _report_unscored(verb: str, unscored: list[tuple[str, str]]) -> None:
    """One stderr line per pair that could not be scored: its id and reason, escaped for the terminal."""
    for pid, reason in unscored:
        print(f"{verb} {printable(pid)}: {printable(reason)}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    """``anodet predict``: score unlabelled pair folders into map PNGs and a scores table."""
    from anodet_core.scoring.folders import predict_folders

    settings = _settings(args)
    out = predict_folders(_store(settings), args.model, args.pairs, args.out, settings)
    _report_unscored("failed", out["failed"])
    print(f"pairs: {out['n']} scored, {out['errors']} failed; wrote {out['n']} map PNGs and {out['table']}")
    return 0 if out["n"] else NOTHING_SCORED


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``anodet evaluate``: metrics of a paired model on a labelled folder dataset (or of a single-image model)."""
    import math

    from anodet_core.evaluation.evaluate import NothingScored, dataset_split, evaluate_pairs, unpaired_folders
    from anodet_core.registry.model_store import load
    from anodet_core.scoring.backends import make_predictor
    from anodet_core.scoring.postprocess import operating_point

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
    try:
        pred = make_predictor(_store(settings), model, card, backend=settings.backend, device=device, fast=settings.fast,
                              batch_size=settings.batch_size, report=lambda m: print(m, file=sys.stderr))
        res = evaluate_pairs(pred, pairs, op, registration=settings.registration,
                             batch_size=settings.batch_size, map_dtype=settings.map_dtype)
    except NothingScored as exc:
        res = {**dict.fromkeys(EVAL_KEYS, math.nan), "threshold": op.threshold, "min_area": op.min_area, "n_samples": 0,
               "skipped": exc.skipped}
    skipped = sorted(unpaired_folders(path, pairs) + res["skipped"])
    _report_unscored("skipped", skipped)
    status = 0 if res["n_samples"] else NOTHING_SCORED

    def num(v: float | int) -> float | int | None:
        return v if isinstance(v, int) else (None if math.isnan(v) else float(v))

    if not res["n_samples"]:
        if args.json:
            print(json.dumps({**{k: num(res[k]) for k in EVAL_KEYS}, "n_scored": 0, "n_skipped": len(skipped),
                              "skipped": [{"pair_id": pid, "reason": reason} for pid, reason in skipped]}))
        else:
            print(f"pairs: 0 scored, {len(skipped)} skipped; nothing to evaluate in {path}", file=sys.stderr)
        return status
    name = f"{card.name}:{card.version}" if card.version else card.name
    lines = [f"model {name} on {path}: pairs: {res['n_samples']} scored ({res['n_anomalous']} anomalous), "
             f"{len(skipped)} skipped; native resolution, the nightly post-processing; operating point: threshold "
             f"{op.threshold:.3f}, min finding area {op.min_area} px, no-history score {op.no_history_score}"]
    for title, keys in (("pixels at > 0.5 (paper), summed over all pixels", _PAPER_KEYS),
                        ("pixels at the operating point's threshold", _OP_KEYS),
                        ("captures: AUROC of the capture score; decisions at the operating point (anomalous iff a "
                         "finding)", ("image_auroc", *_DECISION_KEYS)),
                        ("pixels at > 0.5 where the registered history covers cur (elsewhere no pair can show a "
                         "change)", _COVERED_KEYS)):
        lines.append(f"\n{title}\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        lines.append("| " + " | ".join(str(res[k]) if isinstance(res[k], int) else f"{res[k]:.4f}" for k in keys) + " |")
    if args.json:
        print(json.dumps({**{k: num(res[k]) for k in EVAL_KEYS}, "n_scored": res["n_samples"], "n_skipped": len(skipped),
                          "skipped": [{"pair_id": pid, "reason": reason} for pid, reason in skipped]}))
    else:
        print("\n".join(lines))
    if args.plots:
        _write_plots(args.plots, "\n".join(lines), res["image_scores"], res["image_labels"], res["pixel_hists"],
                     f"{name} on {path}")
    return status


def _write_plots(out_dir: str, summary: str, scores: object, labels: object, pixel_hists: object, title: str) -> None:
    """``--plots DIR``: the ROC and PR curve PNGs and ``evaluate.md`` linking them; the paths on stderr (stdout
    stays the table or the one JSON object)."""
    from anodet_core.reporting.evaluation_plots import evaluation_plots, write_evaluation_report

    made, missing = evaluation_plots(scores, labels, pixel_hists, title)  # type: ignore[arg-type]
    for path in write_evaluation_report(out_dir, summary, made, missing):
        print(f"wrote {path}", file=sys.stderr)


def _evaluate_single_image(args: argparse.Namespace) -> int:
    """``anodet evaluate --model M --normal-dir DIR --anomalous-dir DIR [--mask-dir DIR]``."""
    import math

    import numpy as np

    from anodet_core.registry.model_store import load
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

    name = f"{card.name}:{card.version}" if card.version else card.name
    lines = [f"model {name} ({card.arch}): {res['n_normal']} normal images ({args.normal_dir}) vs {res['n_anomalous']} "
             f"anomalous ({args.anomalous_dir}) at {size}x{size}; recall and false alarms at the card's image-score "
             f"threshold {res['threshold']:.6g}; pixel AUROC: exact rank AUC over all pixels"
             + (" (normal images: all pixels normal)" if masks is not None else " (no --mask-dir: n/a)"),
             "| " + " | ".join(SINGLE_IMAGE_EVAL_KEYS) + " | false alarms |",
             "|" + "---|" * (len(SINGLE_IMAGE_EVAL_KEYS) + 1),
             "| " + " | ".join("n/a" if num(res[k]) is None else f"{res[k]:.4f}" for k in SINGLE_IMAGE_EVAL_KEYS)
             + f" | {res['false_alarms']}/{res['n_normal']} |"]
    print(json.dumps({k: num(res[k]) for k in SINGLE_IMAGE_EVAL_KEYS}) if args.json else "\n".join(lines))
    if args.plots:
        scores = np.concatenate([res["normal_scores"], res["anomalous_scores"]])
        labels = np.r_[np.zeros(res["n_normal"], bool), np.ones(res["n_anomalous"], bool)]
        _write_plots(args.plots, "\n".join(lines), scores, labels, None, f"{name} ({card.arch})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``anodet compare``: train every method with one protocol and tabulate their test metrics."""
    from anodet_core.evaluation.compare import compare, depot_split, folder_split, to_markdown
    from anodet_core.training import TrainConfig

    if args.single_image:
        return _compare_single_image(args)
    if not (args.data or args.depot):
        print("error: compare needs --data DIR or --depot NAME (or --single-image)", file=sys.stderr)
        return 2
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


def _compare_single_image(args: argparse.Namespace) -> int:
    """``anodet compare --single-image``: every single-image model on the held-out single-image benchmark."""
    import os

    from anodet_core.single_image import ARCHS
    from anodet_core.single_image.benchmark import (
        compare_single_image,
        make_benchmark,
        results_json,
        results_markdown,
    )

    if args.depot:
        print("error: --single-image compares on a folder benchmark (--data), not on a depot", file=sys.stderr)
        return 2
    methods = tuple(args.methods or ARCHS)
    unknown = [m for m in methods if m not in ARCHS]
    if unknown:
        print(f"error: unknown single-image model(s) {unknown}; choose from {list(ARCHS)}", file=sys.stderr)
        return 2
    root = args.data or args.benchmark_dir
    if not args.data and not os.path.exists(os.path.join(root, "benchmark.json")):
        print(f"writing the project's single-image benchmark to {root} (seed 0)", flush=True)
        make_benchmark(root)
    settings = _settings(args)
    overrides = _json_object(args.overrides, "--overrides")
    bad = [k for k, v in overrides.items() if k not in ARCHS or not isinstance(v, dict)]
    if bad:
        print(f"error: --single-image --overrides takes one object per model ('{{\"csaflow\": {{...}}}}'), got {bad}",
              file=sys.stderr)
        return 2
    per_method = {m: dict(overrides.get(m, {})) for m in methods}
    results = compare_single_image(root, methods, preset=args.preset, overrides=per_method, epochs=args.epochs,
                                   max_seconds=args.max_minutes_per_method * 60, seed=args.seed,
                                   device=_device(settings), progress=True)
    table = results_markdown(results)
    print(f"\nsingle-image models on {root}: each fitted per category on train/good (80 % fit, 20 % calibrate the "
          f"threshold: the defaults of anodet train), preset {args.preset}, at most {args.epochs} epochs; test/good vs "
          f"test/defect\n\n{table}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "single_image.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "single_image.json"), "w") as f:
        json.dump(results_json(results), f, indent=1)
    print(f"wrote {os.path.join(args.out, 'single_image.md')} and single_image.json")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """Register ``predict``, ``evaluate`` and ``compare``."""
    pr = sub.add_parser("predict", help="score unlabelled pair folders (DIR/<pair>/cur.*, his.*): map PNGs + scores.parquet",
                        description="Score unlabelled pair folders (DIR/<pair>/cur.*, his.*): a map PNG per pair and "
                                    "scores.parquet (a row per folder, the reason in `error` for one that could not be "
                                    f"scored); {SCORED_EXIT}.")
    pr.add_argument("--model", required=True, help="NAME, NAME:VERSION or a local model folder")
    pr.add_argument("--pairs", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--batch-size", type=int)
    pr.add_argument("--device", help="auto | cpu | cuda")
    pr.add_argument("--backend", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="paired models' inference engine (env ANODET_BACKEND, default auto: on a CPU the "
                        "fastest of torch and the version's exports, measured)")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="metrics of a paired model on a labelled folder dataset (DIR/<pair>/cur, his, mask), "
                                        "or of a single-image model on --normal-dir vs --anomalous-dir",
                       description="Metrics of a paired model on a labelled folder dataset (DIR/<pair>/cur.*, his.*, "
                                   "mask.*), or of a single-image model on --normal-dir vs --anomalous-dir. --data: a pair "
                                   "whose cur, his or mask cannot be read or decoded is skipped; "
                                   f"{SCORED_EXIT}.")
    e.add_argument("--model", required=True, help="NAME (production version), NAME:VERSION or a local model folder")
    e.add_argument("--data", help="paired folder dataset; its test/ split when present")
    e.add_argument("--normal-dir", help="single-image model: folder of normal images")
    e.add_argument("--anomalous-dir", help="single-image model: folder of anomalous images")
    e.add_argument("--mask-dir", help="masks of the anomalous images, matched by file stem (<stem>.*), for pixel AUROC")
    e.add_argument("--split", help="evaluate this sub-folder (train, val, test) instead")
    e.add_argument("--json", action="store_true", help="one JSON object: " + ", ".join(EVAL_KEYS)
                   + ", n_scored, n_skipped, skipped ([{pair_id, reason}]) (single-image: "
                   + ", ".join(SINGLE_IMAGE_EVAL_KEYS) + "; NaN as null)")
    e.add_argument("--plots", metavar="DIR", help="also write ROC and precision-recall curves as PNG (per image; "
                   "paired: per pixel too) and DIR/evaluate.md, the table linking them")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--device", help="auto | cpu | cuda")
    e.add_argument("--backend", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="paired models' inference engine (env ANODET_BACKEND, default auto: on a CPU the "
                        "fastest of torch and the version's exports, measured)")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="train every method with the same protocol and tabulate test metrics (paper Table I / III)")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--data", help="paired folder dataset: DIR/train + DIR/test, else a seeded 80/20 split of DIR; "
                                    "with --single-image: MVTec-layout folders DIR/<category>/train/good, test/good, "
                                    "test/defect, ground_truth/defect")
    src.add_argument("--depot", help="labelled nights of this depot; the last night is the test split")
    c.add_argument("--single-image", action="store_true",
                   help="compare the single-image models (CSA-Flow, AnoViT, PatchCore, PaDiM) instead: image AUROC, "
                        "pixel AUROC, recall and false alarms at the calibrated threshold, fit and score time")
    c.add_argument("--methods", nargs="+", help="--single-image: the models to compare (default: all registered)")
    c.add_argument("--benchmark-dir", default="anodet-sibench",
                   help="--single-image without --data: the project's held-out benchmark, written here when missing")
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
