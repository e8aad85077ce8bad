"""The pretraining corpus: a paired folder dataset, split by source photograph.

``root/train/<pair>/`` and ``root/test/<pair>/`` hold ``cur.jpg``, ``his.jpg`` and, for pairs with a change,
``mask.png`` (white = change, cur's frame): the layout ``anodet evaluate --data`` and ``anodet compare
--data`` read. Pairs of the test split come only from held-out photographs (and their foreign objects only
from other held-out photographs), so every figure on it is on pictures the model never saw. ``corpus.json``
records the photographs of each split, their digests, the seed and the corpus fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from ..imaging.io import encode_png
from .sources import Photo, load_photos, split_photos
from .synth import synth_pair

__all__ = ["CorpusSpec", "build_corpus", "corpus_fingerprint", "CORPUS_FILE"]

CORPUS_FILE = "corpus.json"


@dataclass(frozen=True)
class CorpusSpec:
    """How many pairs per photograph in each split, and the seed every pair derives from."""

    train_per_photo: int = 100
    test_per_photo: int = 10
    seed: int = 0
    dirs: tuple[str, ...] | None = None  # photo folders (None: sources.DEFAULT_DIRS)
    test_frac: float = 0.3


_PHOTOS: list[Photo] = []


def _init(photos: list[Photo]) -> None:
    global _PHOTOS
    _PHOTOS = photos


def _one(args: tuple[str, int, list[int], int, int, str]) -> tuple[str, list[str]]:
    out, idx, donor_idx, seed, k, split = args
    rng = np.random.default_rng([seed, idx, k, 0 if split == "train" else 1])
    photo = _PHOTOS[idx]
    donors = [_PHOTOS[j].pixels for j in donor_idx if j != idx] or [photo.pixels]
    pair = synth_pair(photo.pixels, donors, rng)
    name = f"{photo.name.split(':', 1)[1].replace('/', '_').rsplit('.', 1)[0]}-{k:04d}"
    d = os.path.join(out, split, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "cur.jpg"), "wb") as f:
        f.write(pair.cur_jpeg)
    with open(os.path.join(d, "his.jpg"), "wb") as f:
        f.write(pair.his_jpeg)
    if pair.mask.any():
        with open(os.path.join(d, "mask.png"), "wb") as f:
            f.write(encode_png(pair.mask.astype(np.uint8) * 255))
    return name, pair.kinds


def corpus_fingerprint(root: str) -> str:
    """Content hash of every file of the corpus (names and bytes), to record in a model card."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        base = os.path.join(root, split)
        for dirpath, _, files in sorted(os.walk(base)):
            for fn in sorted(files):
                p = os.path.join(dirpath, fn)
                h.update(os.path.relpath(p, root).encode())
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def build_corpus(out: str, spec: CorpusSpec = CorpusSpec(), *, workers: int = 0,
                 photos: list[Photo] | None = None) -> dict:
    """Write the corpus under ``out`` (replacing nothing: ``out`` must not hold one yet); returns its record."""
    if os.path.exists(os.path.join(out, CORPUS_FILE)):
        raise FileExistsError(f"{out} already holds a corpus ({CORPUS_FILE}); remove it or choose another folder")
    photos = load_photos(spec.dirs) if photos is None else photos
    train, test = split_photos(photos, spec.test_frac)
    index = {p.name: i for i, p in enumerate(photos)}
    tr_idx = [index[p.name] for p in train]
    te_idx = [index[p.name] for p in test]
    jobs = [(out, i, tr_idx, spec.seed, k, "train") for i in tr_idx for k in range(spec.train_per_photo)]
    jobs += [(out, i, te_idx, spec.seed, k, "test") for i in te_idx for k in range(spec.test_per_photo)]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    kinds: dict[str, int] = {}
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(photos,)) as ex:
            results = list(ex.map(_one, jobs, chunksize=8))
    else:
        _init(photos)
        results = [_one(j) for j in jobs]
    for _, ks in results:
        for k in ks or ["none"]:
            kinds[k] = kinds.get(k, 0) + 1
    record = {
        "spec": asdict(spec),
        "train_photos": {p.name: p.digest() for p in train},
        "test_photos": {p.name: p.digest() for p in test},
        "n_train": len(tr_idx) * spec.train_per_photo,
        "n_test": len(te_idx) * spec.test_per_photo,
        "changes": kinds,
        "fingerprint": corpus_fingerprint(out),
    }
    with open(os.path.join(out, CORPUS_FILE), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return record
