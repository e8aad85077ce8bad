"""Labelled pairs and their prepared arrays: where the samples come from (a store's nights, a paired folder),
how they are decoded to model size, and the seeded train/validation split."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..imaging.io import read_mask, resize
from ..imaging.prepare import MODEL_SIZE, prepare_pair
from ..store.layout import Store


@dataclass
class LabelledPair:
    """One supervised sample: where cur, his and the mask live (store-relative or absolute paths)."""

    key: str  # capture id or pair folder name
    cur_uri: str
    his_uri: str
    mask_uri: str | None  # None: normal (all-zero mask)
    group: str = ""  # e.g. the night: used for held-out splits


@dataclass
class PairArrays:
    """Prepared samples in memory: uint8 NHWC images and uint8 {0,1} masks at model size."""

    keys: list[str]
    cur: np.ndarray
    his: np.ndarray
    mask: np.ndarray
    groups: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # native (width, height) of each cur
    # the history's weight in each pixel (anodet_core.imaging.prepare.history_weight), uint8 x 255; None: 1 everywhere
    history_weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def weight(self, sl: slice) -> np.ndarray | None:
        """The history's weight of the samples ``sl``, float32 in [0, 1]; None when it is 1 everywhere."""
        if self.history_weight is None:
            return None
        w = self.history_weight[sl]
        return None if bool((w == 255).all()) else w.astype(np.float32) / 255.0

    def subset(self, idx: Sequence[int]) -> PairArrays:
        """The samples at positions ``idx``, in that order (arrays copied)."""
        idx = list(idx)
        return PairArrays([self.keys[i] for i in idx], self.cur[idx], self.his[idx], self.mask[idx],
                          [self.groups[i] for i in idx] if self.groups else [],
                          [self.sizes[i] for i in idx] if self.sizes else [],
                          None if self.history_weight is None else self.history_weight[idx])

    def fingerprint(self) -> str:
        """Content hash of the samples: tells whether two models saw the same data."""
        h = hashlib.sha256()
        for a in (self.cur, self.his, self.mask):
            h.update(a.tobytes())
        return h.hexdigest()[:16]


def mask_to_model(mask: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Native bool mask -> model-size {0,1}: a model pixel is anomalous when >= 1/4 of it is (keeps thin scratches)."""
    cover = resize((mask.astype(np.uint8) * 255), (size, size), resample=4)  # Image.Resampling.BOX = 4
    return (cover >= 64).astype(np.uint8)


def prepare_arrays(
    read: Callable[[str], bytes],
    pairs: Sequence[LabelledPair],
    *,
    size: int = MODEL_SIZE,
    registration: str = "auto",
    progress: bool = False,
) -> PairArrays:
    """Decode, register and resize every pair to ``size`` (a model's input side) exactly as the nightly run does."""
    from tqdm import tqdm

    from ..progress import bars_enabled

    n = len(pairs)
    cur = np.zeros((n, size, size, 3), np.uint8)
    his = np.zeros_like(cur)
    mask = np.zeros((n, size, size), np.uint8)
    weight = np.full((n, size, size), 255, np.uint8)
    sizes: list[tuple[int, int]] = []
    for i, p in enumerate(tqdm(pairs, desc="preparing pairs", disable=not bars_enabled(progress))):
        prep = prepare_pair(read(p.cur_uri), read(p.his_uri), size=size, registration=registration)
        cur[i], his[i] = prep.cur, prep.his
        if prep.history_weight is not None:
            weight[i] = np.rint(prep.history_weight * 255.0).astype(np.uint8)
        sizes.append(prep.native_size)
        if p.mask_uri:
            mask[i] = mask_to_model(read_mask(read(p.mask_uri), prep.native_size), size)
    return PairArrays([p.key for p in pairs], cur, his, mask, [p.group for p in pairs], sizes, weight)


def store_pairs(store: Store, depot: str, nights: Sequence[str]) -> list[LabelledPair]:
    """Labelled captures of the given nights paired with the history production would use.

    History: the most recent earlier capture of the same region labelled normal, else the pinned reference.
    Labels are ground truth with analysts' verdicts over it (:meth:`Store.read_labels`). Captures without a label row,
    without any history, or labelled anomalous without a mask are skipped.
    """
    pairs: list[LabelledPair] = []
    last_normal: dict[tuple, str] = {}
    for night in sorted(nights):
        labels = store.read_labels(depot, night)
        if labels.empty:
            continue
        manifest = store.read_manifest(depot, night).sort_values("captured_at")
        lab = labels.set_index("capture_id")
        normal_tonight: dict[tuple, str] = {}
        for row in manifest.itertuples():
            if row.capture_id not in lab.index:
                continue
            key = (row.train_id, int(row.car), row.region_id)
            his = last_normal.get(key)
            if his is None:
                ref = store.reference_rel(row.train_id, int(row.car), row.region_id)
                his = ref if store.exists(ref) else None
            label = lab.loc[row.capture_id]
            # an anomaly without a mask (an image-level verdict) has no pixel target: skipped, never trained as normal
            if his is not None and not (label["anomalous"] and not isinstance(label["mask_uri"], str)):
                pairs.append(LabelledPair(row.capture_id, row.uri, his, label["mask_uri"] if label["anomalous"] else None, night))
            if not label["anomalous"]:
                normal_tonight[key] = row.uri
        last_normal.update(normal_tonight)
    return pairs


def folder_pairs(root: str) -> list[LabelledPair]:
    """A paired-folder dataset: ``root/<pair>/cur.*, his.*[, mask.*]`` (white mask = anomaly)."""
    import glob

    pairs = []
    for d in sorted(glob.glob(os.path.join(root, "*", ""))):
        def one(stem: str) -> str | None:
            found = sorted(glob.glob(os.path.join(d, stem + ".*")))  # noqa: B023  (called in this iteration)
            return found[0] if found else None

        cur, his = one("cur"), one("his")
        if cur and his:
            pairs.append(LabelledPair(os.path.basename(d.rstrip("/")), cur, his, one("mask"), os.path.basename(root.rstrip("/"))))
    return pairs


def split_indices(n: int, val_frac: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded 8:2 (by default) split of n samples."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    k = int(round(n * val_frac))
    return sorted(perm[k:]), sorted(perm[:k])


def split_last_group(n: int, groups: Sequence[str], val_frac: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices: the samples of the last group (the latest night) validate when there are two
    groups or more, so the weights and operating point are chosen on a night the model did not train on, as the
    next night will be (a random split puts the same regions of the same nights on both sides); otherwise (one
    group, or no group per sample) :func:`split_indices` of the ``n`` samples."""
    names = sorted(set(groups))
    if len(groups) != n or len(names) < 2:
        return split_indices(n, val_frac, seed)
    last = names[-1]
    return [i for i, g in enumerate(groups) if g != last], [i for i, g in enumerate(groups) if g == last]
