"""The night's HTML page: built from a real scored night (the shipped base model), opened in headless Chromium."""

import os
import re
import shutil

import pytest

from anodet_core.config import Settings
from anodet_core.demo_data import DemoSpec, generate_depot
from anodet_core.night.batch import process_batch
from anodet_core.night.plan import plan_night, split_jobs, write_reports
from anodet_core.reporting.night_page import build_night_page, write_night_page
from anodet_core.store.layout import Store
from anodet_core.store.verdicts import record_verdict

pytestmark = pytest.mark.slow

SPEC = DemoSpec(depot="pg", nights=2, trains=1, cars=1, regions=5, width=640, height=400, anomaly_rate=0.5, seed=5)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _run_night(store: Store, night: str) -> None:
    """A night through the library path the flow's tasks call (plan, batches, publish), without Prefect."""
    plan = plan_night(store, SPEC.depot, night, "anodfdnet:base", threshold=0.5)
    settings = Settings(store=store.root, threshold=plan.threshold, min_finding_area=plan.min_finding_area, batch_size=4,
                        prep_processes=0)
    caps, finds = [], []
    for batch in split_jobs(plan.jobs, 8):
        res = process_batch(store, SPEC.depot, night, batch, plan.model_ref, settings, "run-1", plan.single_models, plan.maps_rel)
        caps += res.captures
        finds += res.findings
    write_reports(store, SPEC.depot, night, caps, finds, generation=plan.generation, maps_rel=plan.maps_rel, run_id="run-1")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("page-store")))
    generate_depot(store, SPEC)
    n1, n2 = store.nights(SPEC.depot)
    man = store.read_manifest(SPEC.depot, n2)
    broken = man.iloc[0]
    store.write_bytes(broken.uri, store.read_bytes(broken.uri)[:-64])  # checksum mismatch: a failed capture
    for n in (n1, n2):
        _run_night(store, n)
    finds = store.read_report("findings")
    finds = finds[finds["night"] == n2]
    assert len(finds) > 0, "the base model found nothing: the page test needs findings"
    reviewed = finds.sort_values("peak_score").iloc[0]["capture_id"]
    record_verdict(store, reviewed, "normal", by="ana", note="shadow <b>of</b> the jack")
    return store, n2, finds, broken.capture_id, reviewed


def test_page_holds_one_card_per_finding_the_failures_and_the_verdicts(night):
    store, n2, finds, broken, reviewed = night
    page = build_night_page(store, SPEC.depot, n2)
    assert page.n_cards == len(finds) == page.n_findings
    assert len(re.findall(r'<article class="finding"', page.html)) == len(finds)
    ranks = [float(x) for x in re.findall(r"· peak ([0-9.]+) ·", page.html)]
    assert ranks == sorted(ranks, reverse=True)  # highest peak score first
    assert page.n_failed >= 1 and broken in page.html and "checksum_mismatch" in page.html
    assert "verdict: <b>normal</b> by ana" in page.html
    assert "shadow &lt;b&gt;of&lt;/b&gt; the jack" in page.html  # an analyst's note is text, never markup
    assert set(page.plots) == {"scores.png", "region_trend.png", "roc_pr.png"}  # night 2 is labelled: curves too
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in page.plots.values())
    assert "src=\"http" not in page.html and "src='http" not in page.html  # self-contained: nothing fetched
    capped = build_night_page(store, SPEC.depot, n2, max_findings=1)
    assert capped.n_cards == 1 and f"{len(finds) - 1} more findings not shown" in capped.html


def test_a_capture_whose_file_is_gone_keeps_its_card(night, tmp_path):
    store, n2, finds, _, _ = night
    copy = Store(str(tmp_path / "copy"))
    shutil.copytree(store.root, copy.root)
    cid = finds.iloc[0]["capture_id"]
    os.remove(copy.path(copy.capture_rel(SPEC.depot, n2, cid)))
    page = build_night_page(copy, SPEC.depot, n2)
    assert page.n_cards == len(finds) and "pictures unavailable" in page.html


def test_page_renders_in_headless_chromium(night, tmp_path):
    assert CHROMIUM and CHROMEDRIVER, "Debian's chromium and chromium-driver are needed (make test installs them)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    store, n2, finds, broken, _ = night
    url = write_night_page(store, SPEC.depot, n2)
    assert url == store.path(store.page_rel(SPEC.depot, n2)) and store.exists(store.page_rel(SPEC.depot, n2, "scores.png"))
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online: the system one is given
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
                "--disable-background-networking", "--no-first-run", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(f"file://{url}")
        assert driver.title == f"anodet · night {n2} at depot {SPEC.depot}"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        cards = driver.find_elements(By.CSS_SELECTOR, "article.finding")
        assert len(cards) == len(finds)
        assert {c.get_attribute("data-capture") for c in cards} == set(finds["capture_id"])
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        assert len(images) == 4 * len(finds) + 3  # four pictures a card, three plots
        undecoded = [alt for done, w, h, alt in images if not (done and w > 0 and h > 0)]
        assert undecoded == []
        failed = driver.find_element(By.CSS_SELECTOR, "table.failed").text
        assert broken in failed and "checksum_mismatch" in failed
        shot = tmp_path / "night-page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
