"""The reports in a real browser: Debian's chromium driven by Playwright, pages served from 127.0.0.1.

Checked: no console error, no request outside the report folder, every image loads, sorting and
filtering show the expected units in the expected order, a label that is a script tag shows as text,
and screenshots of the layer page, of its summary and of the report-all page are non-trivial.
Skipped when chromium or playwright is missing, except under CI=true, where that is a failure.
Set NETDISSECT_SCREENSHOTS=DIR to keep the screenshots (default: the test's tmp folder).
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netdissect.report import count_detectors, read_result_csv, render_layer_report, render_summary_report
from netdissect.report.layer import unit_order
from netdissect.report.summary import LayerEntry
from tests.test_report_data import XSS_LABEL, make_layer

CHROMIUM = "/usr/bin/chromium"
UNITS = 24
pytestmark = pytest.mark.browser


def _require_browser() -> None:
    missing = [
        what
        for what, ok in (
            ("chromium", Path(CHROMIUM).exists() or shutil.which("chromium")),
            ("playwright", importlib.util.find_spec("playwright")),
        )
        if not ok
    ]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two layer reports and their summary under one folder, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("site")
    entries = []
    for i, layer_name in enumerate(["layer3", "layer4"]):
        layer_dir = root / "synth" / "demo" / layer_name
        layer = make_layer(layer_dir, units=UNITS + 8 * i, images=30, size=48, map_size=4, seed=20 + i)
        result, categories = read_result_csv(layer.result_csv)
        # layer4 has a significance test (docs/experiments.md §3): a p per unit, alpha 0.05
        p_values = {u: float(p) for u, p in enumerate(np.linspace(0.01, 0.5, len(result)), start=1)} if i else None
        index = render_layer_report(
            layer_dir / "report",
            result,
            categories,
            {"model": "demo", "layer": layer_name, "dataset": "synth"},
            layer.thresholds,
            layer.imgmax,
            layer.maps_for_rows,
            layer.load_image,
            topk=6,
            p_values=p_values,
            alpha=0.05 if i else None,
        )
        entries.append(LayerEntry("synth", "demo", layer_name, count_detectors(result, categories, 0.04), index))
        if i == 0:
            first = (result, categories)
        else:
            tested = (result, p_values)
    render_summary_report(root / "report", entries)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {
        "root": root,
        "base": f"http://127.0.0.1:{server.server_address[1]}",
        "result": first[0],
        "categories": first[1],
        "tested": tested,
    }
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class Visit:
    """A page with every request, console error, page error and dialog recorded."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(url)
        self.page.wait_for_load_state("load")

    def load_all_images(self) -> list[int]:
        """Switch lazy images to eager, wait for all, return their natural widths."""
        self.page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
        return self.page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")

    def shown_units(self) -> list[int]:
        return self.page.evaluate(
            "Array.from(document.querySelectorAll('#units article.unit')).filter(a => !a.hidden)"
            ".map(a => Number(a.dataset.unit))"
        )


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("NETDISSECT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def assert_nontrivial_png(path: Path, min_size: tuple[int, int]) -> None:
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1]
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, f"{path} looks blank"


def test_layer_page_loads_offline_and_escapes_labels(site, browser, tmp_path) -> None:
    folder = f"{site['base']}/synth/demo/layer3/report/"
    visit = Visit(browser, folder + "index.html")
    widths = visit.load_all_images()
    assert len(widths) == UNITS and all(w > 0 for w in widths)
    outside = [url for url in visit.requests if not url.startswith(folder)]
    assert outside == [] and len(visit.requests) >= UNITS + 3  # page, css, js, every strip
    assert visit.errors == []
    assert visit.dialogs == []
    label = visit.page.locator("article.unit .label", has_text=XSS_LABEL).first
    assert label.is_visible() and label.inner_text() == XSS_LABEL
    assert visit.page.evaluate("document.querySelectorAll('#units script').length") == 0

    shots = screenshot_dir(tmp_path)
    visit.page.screenshot(path=shots / "layer_page.png")
    visit.page.locator("#summary").screenshot(path=shots / "layer_summary.png")
    assert_nontrivial_png(shots / "layer_page.png", (1280, 900))
    assert_nontrivial_png(shots / "layer_summary.png", (600, 200))
    visit.page.close()


def test_sorting_and_filtering(site, browser) -> None:
    result, categories = site["result"], site["categories"]
    rows = {int(r["unit"]): r for r in result.to_dict("records")}
    visit = Visit(browser, f"{site['base']}/synth/demo/layer3/report/index.html")
    page = visit.page
    default = result["unit"].to_numpy()[unit_order(result, categories, 0.04)].tolist()
    assert visit.shown_units() == default
    detector_cats = [rows[u]["category"] for u in default if rows[u]["score"] >= 0.04 and rows[u]["label"]]
    assert detector_cats == sorted(detector_cats, key=categories.index)  # grouped in category order

    page.select_option("#sort", "unit")
    assert visit.shown_units() == list(range(1, UNITS + 1))
    page.select_option("#sort", "score")
    assert visit.shown_units() == sorted(rows, key=lambda u: (-rows[u]["score"], u))
    page.select_option("#sort", "label")
    assert visit.shown_units() == sorted(
        rows, key=lambda u: (rows[u]["label"] == "", rows[u]["label"], -rows[u]["score"], u)
    )

    page.select_option("#category", "part")
    expected = [u for u in visit.shown_units() if rows[u]["category"] == "part" and rows[u]["label"]]
    shown = visit.shown_units()
    assert shown == expected and 0 < len(shown) < UNITS
    assert page.inner_text("#shown") == f"{len(shown)} of {UNITS} units"
    page.select_option("#category", "")
    page.check("#detectors-only")
    assert visit.shown_units() == [
        u
        for u in sorted(rows, key=lambda u: (rows[u]["label"] == "", rows[u]["label"], -rows[u]["score"], u))
        if rows[u]["score"] >= 0.04 and rows[u]["label"]
    ]
    page.uncheck("#detectors-only")
    page.fill("#search", "7")
    assert visit.shown_units() == [7]
    page.fill("#search", "ScRiPt")
    assert visit.shown_units() == [
        u for u in sorted(rows, key=lambda u: (rows[u]["label"], -rows[u]["score"], u)) if "script" in rows[u]["label"]
    ]
    page.fill("#search", "car")
    substring = visit.shown_units()
    page.fill("#search", '"car"')
    exact = visit.shown_units()
    assert exact == [u for u in substring if rows[u]["label"] == "car"]
    assert 0 < len(exact) < len(substring) and all("car" in rows[u]["label"] for u in substring)
    page.fill("#search", "")
    assert len(visit.shown_units()) == UNITS

    bar = page.locator(".chart-box .bar").first
    bar_label, bar_category = bar.get_attribute("data-label"), bar.get_attribute("data-category")
    bar.locator("rect").click()
    shown = visit.shown_units()
    assert len(shown) == int(bar.get_attribute("data-count"))
    assert all(rows[u]["label"] == bar_label and rows[u]["category"] == bar_category for u in shown)

    card = page.locator("#units article.unit:not([hidden])").first
    card.locator("summary").click()
    cells = card.locator("table.detail tbody tr")
    assert cells.count() == len(categories)
    unit = int(card.get_attribute("data-unit"))
    best = card.locator("table.detail tr.best td").all_inner_texts()
    assert best[:3] == [rows[unit]["category"], rows[unit]["label"], f"{rows[unit]['score']:.4f}"]
    assert visit.errors == [] and visit.dialogs == []
    page.close()


def test_summary_page(site, browser, tmp_path) -> None:
    folder = f"{site['base']}/report/"
    visit = Visit(browser, folder + "index.html")
    assert all(url.startswith(folder) for url in visit.requests) and visit.errors == []
    rows = visit.page.locator("#summary-table tbody tr")
    assert rows.count() == 2
    assert visit.page.locator("#chart-unique_by_category g.column").count() == 2
    shots = screenshot_dir(tmp_path)
    visit.page.screenshot(path=shots / "summary_page.png", full_page=True)
    assert_nontrivial_png(shots / "summary_page.png", (1280, 600))
    rows.nth(1).get_by_role("link", name="open").click()
    visit.page.wait_for_load_state("load")
    assert visit.page.url == f"{site['base']}/synth/demo/layer4/report/index.html"
    assert "units are detectors" in visit.page.inner_text("#headline")
    visit.page.close()


def test_significant_only_filter(site, browser) -> None:
    result, p_values = site["tested"]
    rows = {int(r["unit"]): r for r in result.to_dict("records")}
    detectors = {u for u, r in rows.items() if r["score"] >= 0.04 and r["label"]}
    visit = Visit(browser, f"{site['base']}/synth/demo/layer4/report/index.html")
    page = visit.page
    significant = {u for u in rows if p_values[u] <= 0.05}
    assert 0 < len(significant) < len(rows)
    headline = page.inner_text("#headline")
    assert f"({len(significant & detectors)} significant, p ≤ 0.05)" in headline
    page.check("#significant-only")
    assert set(visit.shown_units()) == significant
    page.check("#detectors-only")
    assert set(visit.shown_units()) == significant & detectors
    page.uncheck("#significant-only")
    page.uncheck("#detectors-only")
    assert len(visit.shown_units()) == len(rows)
    card = page.locator("#unit-3")
    assert card.locator(".p").inner_text() == f"p {p_values[3]:.3g}"
    assert visit.errors == [] and visit.dialogs == []
    # the untested layer has no filter
    other = Visit(browser, f"{site['base']}/synth/demo/layer3/report/index.html")
    assert other.page.locator("#significant-only").count() == 0 and other.errors == []
    page.close()
    other.page.close()
