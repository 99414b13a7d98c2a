"""The report as a reader sees it: a demo-like report opened in headless Chromium (Selenium, the system's
chromedriver), checked for overlapping elements, dead contents links and images that do not load.

Screenshots of the whole page, wide and narrow, are kept as test artefacts in the folder named by
FRUGALRAY_REPORT_ARTIFACTS (default: test-artifacts/report/ in the repository).
"""

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from frugalray import ResultsStore
from frugalray.cli import main
from frugalray.results.metadata import record_run
from frugalray.testing import synthetic_catalog, synthetic_table

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
pytestmark = [pytest.mark.required_in_ci, pytest.mark.skipif(  # required_in_ci: with CI set, a skip fails
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium here: `apt-get install chromium chromium-driver` (as .ci/run does) runs this test")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Elements of one task's section that must never overlap one another.
LAYOUT = """
const box = e => e.getBoundingClientRect();
const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
const name = e => e.tagName.toLowerCase() + (e.closest('[id]') ? '#' + e.closest('[id]').id : '');
const overlaps = [], apart = [];
for (const section of document.querySelectorAll('section.task')) {
  const parts = [...section.querySelectorAll('h2, h3, figure, div.scroll, p')];
  for (let i = 0; i < parts.length; i++)
    for (let j = i + 1; j < parts.length; j++)
      if (hit(box(parts[i]), box(parts[j]))) overlaps.push(name(parts[i]) + ' / ' + name(parts[j]));
}
for (const pair of document.querySelectorAll('.pair')) {  // a figure and its table side by side, tops aligned
  const [figure, table] = [pair.querySelector('figure'), pair.querySelector('div.scroll')];
  if (figure && table) apart.push([box(figure).right <= box(table).left, Math.abs(box(figure).top - box(table).top)]);
}
const links = [...document.querySelectorAll('nav#contents a')];
return {
  overlaps, apart, links: links.length,
  dead: links.filter(a => !document.getElementById(decodeURIComponent(a.hash.slice(1)))).map(a => a.hash),
  images: document.images.length,
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
  overflow: document.documentElement.scrollWidth - window.innerWidth,
};
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver  # in the test extra: a missing package fails here, it does not skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="frugalray-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # never Selenium Manager's download
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report like the quick start's: three demo tasks, a 6-layer model, 3 seeds, every strategy family."""
    root = tmp_path_factory.mktemp("report")
    store = ResultsStore(root / "results")
    catalog = synthetic_catalog(tasks=("demo_pos", "demo_ner", "demo_sentiment"), num_layers=6, model="minilm",
                                symmetric=True)
    store.write_table(synthetic_table(catalog, seeds=3), "trials", "synthetic.parquet")
    pairs = {"demo_pos": "FTB_POS", "demo_ner": "WikiNER", "demo_sentiment": "Allocine"}
    record_run(store, "sweeps", "quick", {"name": "quick"}, reference_tasks=pairs)  # as the quick sweep does
    assert main(["report", store.location, "--out", str(root / "report"), "--title", "frugalray: sweep quick"]) == 0
    return root / "report" / "index.html"


def _artefacts() -> Path:
    folder = Path(os.environ.get("FRUGALRAY_REPORT_ARTIFACTS", ROOT / "test-artifacts" / "report"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("width", [1400, 800])
def test_report_in_a_browser_has_no_overlaps_no_dead_links_and_every_image(browser, report, width):
    browser.set_window_size(width, 1000)
    browser.get(report.as_uri())
    browser.execute_async_script(  # every image decoded (or failed) before measuring
        "const done = arguments[0]; Promise.all([...document.images].map(i => i.decode().catch(() => null)))"
        ".then(() => done())")
    found = browser.execute_script(LAYOUT)
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    (_artefacts() / f"report-{width}px.png").write_bytes(base64.b64decode(shot["data"]))

    assert found["overlaps"] == [] and found["overflow"] <= 0
    assert found["links"] >= 3 * 8 and found["dead"] == []  # a link per task and per block of it
    assert found["images"] == 3 * 6 and found["broken"] == []
    if width >= 1200:  # wide: every figure stands beside its table
        assert found["apart"] and all(beside and top < 2 for beside, top in found["apart"]), found["apart"]
    else:  # narrow: one column
        assert not any(beside for beside, _ in found["apart"])
    html = report.read_text()
    assert "FTB_POS best_6, study: 6/12 layers" in html  # the sweep's pairs, read back from the store
