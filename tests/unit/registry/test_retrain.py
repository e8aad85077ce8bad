"""Retraining promotes only with evidence, and the nightly flow then reports with the new production version."""


import numpy as np
import pytest
from PIL import Image

from anodet_core.registry import model_store
from anodet_core.registry.retraining import decide
from anodet_core.store.layout import Store

from helpers import add_capture, jpeg

pytestmark = pytest.mark.slow

TINY = {"depth": 0, "widths": [8, 8, 8, 8], "latent_dim": 16, "token_dim": 16, "num_heads": 1, "mlp_dim": 16}
NIGHTS = ["2026-03-01", "2026-03-02", "2026-03-03"]


@pytest.fixture
def in_process_cluster(monkeypatch):
    """The flows' Dask tasks in this process (ANODET_DASK_ADDRESS of a thread-based cluster): what the tests
    monkeypatch then holds where the training task runs; in production it runs on a worker process."""
    from distributed import LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        monkeypatch.setenv("ANODET_DASK_ADDRESS", cluster.scheduler_address)
        yield cluster



def _easy_depot(store: Store, regions: int = 8) -> None:
    """Smooth textured regions; anomalies are bright squares (a tiny model learns them in seconds)."""
    rng = np.random.default_rng(0)
    bases = []
    for r in range(regions):
        small = rng.integers(40, 120, (16, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC))
        bases.append(base)
        store.write_bytes(store.reference_rel("T1", 1, f"R{r}"), jpeg(base))
    for n, night in enumerate(NIGHTS):
        man, lab = [], []
        for r, base in enumerate(bases):
            cid = f"c{n}-{r}"
            img = np.clip(base.astype(int) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
            row, label = add_capture(store, "d", night, cid, img, (r + n) % 2 == 0, rng, train_id="T1",
                                     region_id=f"R{r}", minute=r)
            man.append(row)
            lab.append(label)
        store.write_manifest("d", night, man)
        store.write_labels("d", night, lab)


def test_decide_rule():
    assert decide(0.5, None, 0.01) == (True, "no production version yet")
    assert decide(0.505, 0.5, 0.01)[0] is False
    assert decide(0.52, 0.5, 0.01)[0] is True
    assert decide(float("nan"), 0.5, 0.01)[0] is False


def test_a_fine_tune_that_learned_nothing_does_not_replace_the_shipped_base(tmp_path, prefect_harness):
    from flows.retrain import retrain

    root = str(tmp_path)
    store = Store(root)
    _easy_depot(store)
    out = retrain(depot="d", store=root, epochs=1, max_minutes=0, lr=0.0, seed=0, margin=0.01)  # init: the base
    assert out["production_version"] == "base" and not out["promoted"], out["reason"]
    assert model_store.get_alias(store, "anodfdnet") is None  # the nights keep using anodfdnet:base
    card = model_store.resolve(store, "anodfdnet:1")[1]
    assert card.extra["init"]["ref"] == "anodfdnet:base"
    import os

    # trained in a Dask worker process (the flow's LocalCluster), not in the process that runs the flow
    assert card.extra["trained_on"]["pid"] != os.getpid() and card.extra["trained_on"]["device"] == "cpu"


def test_worse_candidate_is_kept_but_not_promoted_better_one_is(tmp_path, prefect_harness, monkeypatch, in_process_cluster):
    from flows.nightly import nightly_inspection
    from flows.retrain import retrain

    monkeypatch.setattr(model_store, "packaged_folder", lambda name: None)  # a checkout without shipped weights
    root = str(tmp_path)
    store = Store(root)
    _easy_depot(store)
    common = dict(depot="d", store=root, overrides=TINY, epochs=6, max_minutes=0, seed=0, margin=0.05, init="none")
    first = retrain(lr=0.0, **common)  # an untrained candidate: becomes production only because there is none
    assert first["promoted"] and first["candidate_version"] == "1"
    worse = retrain(lr=0.0, **common)  # the same untrained model again: no evidence it is better
    assert not worse["promoted"] and model_store.get_alias(store, "anodfdnet") == "1"
    card2 = model_store.resolve(store, "anodfdnet:2")[1]
    assert card2.extra["promotion"]["promoted"] is False
    assert {r["role"] for r in card2.extra["promotion"]["table"]} == {"candidate", "production"}
    better = retrain(lr=5e-3, **{**common, "epochs": 30})
    assert better["promoted"], better["reason"]
    assert better["candidate_value"] >= better["production_value"] + 0.05
    assert model_store.get_alias(store, "anodfdnet") == "3"

    summary = nightly_inspection(depot="d", night=NIGHTS[-1], store=root)
    caps = store.read_report("captures")
    assert summary.model == "anodfdnet:3"
    assert set(caps.model_version) == {"3"} and len(caps) == 8
