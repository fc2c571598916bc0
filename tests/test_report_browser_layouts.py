"""In a real browser (Debian's chromium driven by Playwright, pages served from 127.0.0.1): the report
`netdissect dissect` writes, and `report-all` over result files of all three layouts written here (long
network names, as the paper's CSVs have). Checked: every image loads, nothing is requested from
outside, no console error; no chart label is cut; bars are in the paper's order; the wide table
scrolls inside its box with its first column fixed, and the page itself never scrolls sideways.
Skipped when chromium or playwright is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from netdissect.cli import main
from tests.test_report_browser import Visit, _QuietHandler, browser  # noqa: F401  (the browser fixture)
from tests.test_report_data import result_rows
from tests.test_results_layouts import write_layout

pytestmark = pytest.mark.browser
NAMES = {
    "original": "ResNet-152-model_places365 (the paper, published CSV of the original system)",
    "lite": "NetDissect-Lite resnet18 places365",
    "netdissect": "WWW MMM wide capitals network",
}


@pytest.fixture(scope="module")
def site(synth_dataset: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    out = root / "dissect"
    args = ["dissect", "--dataset", str(synth_dataset), "--model", "netdissect.demo:DemoNet", "--layers", "conv3"]
    assert main([*args, "--out", str(out), "--no-progress", "--threads", "2", "--topk", "4"]) == 0
    paths, names = [str(out / "conv3")], ["demo (random)"]
    for i, (layout, name) in enumerate(NAMES.items()):
        file = {"netdissect": "result.csv", "lite": "tally.csv", "original": "res5c-result.csv"}[layout]
        rows = result_rows(np.random.default_rng(40 + i), 30 + 20 * i)
        paths.append(str(write_layout(root / "nets" / layout / file, rows, layout).parent))
        names.append(name)
    named = [option for name in names for option in ("--name", name)]
    assert main(["report-all", *paths, *named, "--out", str(root / "summary")]) == 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"root": root, "base": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    thread.join()


CUT_LABELS = """
Array.from(document.querySelectorAll('svg.chart')).flatMap(svg => {
  const box = svg.getBoundingClientRect();
  return Array.from(svg.querySelectorAll('text')).map(t => {
    const r = t.getBoundingClientRect();
    const inside = r.left >= box.left - 0.5 && r.right <= box.right + 0.5 && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5;
    return inside ? null : t.textContent;
  }).filter(x => x !== null);
})
"""


def test_dissect_report_loads_every_image_offline(site, browser) -> None:  # noqa: F811
    folder = f"{site['base']}/dissect/conv3/report/"
    visit = Visit(browser, folder + "index.html")
    widths = visit.load_all_images()
    summary = json.loads((site["root"] / "dissect" / "conv3" / "summary.json").read_text())
    assert len(widths) == summary["units"] == 128 and all(w > 0 for w in widths)
    assert [url for url in visit.requests if not url.startswith(folder)] == []
    assert visit.errors == []
    headline = visit.page.inner_text("#headline")
    assert headline.startswith(f"{summary['detectors']} of {summary['units']} units are detectors")
    assert visit.page.evaluate(CUT_LABELS) == []
    visit.page.close()


def test_report_all_labels_are_never_cut_and_bars_follow_the_paper(site, browser) -> None:  # noqa: F811
    visit = Visit(browser, f"{site['base']}/summary/index.html")
    assert visit.errors == [] and all(u.startswith(f"{site['base']}/summary/") for u in visit.requests)
    for kind in ("unique_by_category", "unique_top"):
        columns = visit.page.locator(f"#chart-{kind} g.column")
        totals = [int(columns.nth(i).get_attribute("data-total")) for i in range(columns.count())]
        assert len(totals) == 4 and totals == sorted(totals, reverse=True), kind
    names = visit.page.evaluate(
        "Array.from(document.querySelectorAll('#chart-unique_by_category g.column > text:last-of-type')).map(t => t.textContent)"
    )
    assert sorted(names) == sorted(
        ["demo (random) conv3", *(f"{n} res5c" if k == "original" else n for k, n in NAMES.items())]
    )
    assert visit.page.evaluate(CUT_LABELS) == []
    visit.page.close()


def test_wide_table_scrolls_in_its_box_with_the_names_fixed(site, browser) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 760, "height": 900})
    page.goto(f"{site['base']}/summary/index.html")
    page.wait_for_load_state("load")
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    box = page.locator("#table-box")
    assert page.evaluate("b => b.scrollWidth > b.clientWidth", box.element_handle()), "the table fits: nothing to test"
    first = page.locator("#summary-table tbody tr").nth(2).locator("th.name")
    assert NAMES["lite"] in first.inner_text()
    before = first.bounding_box()
    page.evaluate("b => { b.scrollLeft = b.scrollWidth; }", box.element_handle())
    after = first.bounding_box()
    assert abs(after["x"] - before["x"]) < 1, "the name column scrolled away"
    last = page.locator("#summary-table tbody tr").nth(2).locator("td").last
    box_rect, last_rect = box.bounding_box(), last.bounding_box()
    assert last_rect["x"] + last_rect["width"] <= box_rect["x"] + box_rect["width"] + 1  # the last column is in view
    clipped = page.evaluate(
        "Array.from(document.querySelectorAll('#summary-table th')).filter(th => th.scrollWidth > th.clientWidth + 1).map(th => th.textContent)"
    )
    assert clipped == []
    page.close()
