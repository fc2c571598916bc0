"""The report of the widest layer of the paper (2,048 units, resnet152 `layer4`) in a real browser
(Debian's chromium driven by Playwright, pages served from 127.0.0.1): its first screen is drawn, with
the images in view loaded, within 2 s of navigation; only the images near the view are fetched then
(they are `loading="lazy"`); scrolling through the page loads every unit's image.

The first screen counts as drawn when the page holds cards below it and every strip image on it has
loaded; the time is taken in the page (performance.now() at the first frame where that holds) and
asserted because issue 15 asks for that bound (measured here: 0.23–0.38 s; the whole page is parsed
after 1.6–2.3 s). The first cards' images are not lazy: a lazy image waits for layout, which for a
page this long comes after the whole page is parsed.
Skipped when chromium or playwright is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from netdissect.report import read_result_csv, render_layer_report
from tests.test_report_browser import _QuietHandler, browser  # noqa: F401  (the browser fixture)
from tests.test_report_data import make_layer

pytestmark = pytest.mark.browser
UNITS = 2048
FIRST_SCREEN_S = 2.0

# Run in the page before its own scripts: at every frame, until the page has cards below the first
# screen and every strip image on that screen has loaded; then records the time since navigation.
FIRST_SCREEN = """
window.__firstScreen = null;
(function poll() {
  const cards = document.querySelectorAll('article.unit');
  const h = window.innerHeight;
  if (cards.length && cards[cards.length - 1].getBoundingClientRect().top > h) {
    const seen = Array.from(document.querySelectorAll('img.strip')).filter(i => {
      const r = i.getBoundingClientRect();
      return r.bottom > 0 && r.top < h;
    });
    if (seen.length && seen.every(i => i.complete && i.naturalWidth > 0)) {
      window.__firstScreen = performance.now();
      return;
    }
  }
  requestAnimationFrame(poll);
})();
"""

SCROLL_THROUGH = """async () => {
  const frame = () => new Promise(r => requestAnimationFrame(r));
  const step = 3 * window.innerHeight;
  for (let top = 0; top < document.documentElement.scrollHeight + step; top += step) {
    window.scrollTo(0, top);
    await frame();
    await frame();
  }
}"""


@pytest.fixture(scope="module")
def wide_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    layer_dir = root / "layer4"
    layer = make_layer(layer_dir, units=UNITS, images=24, size=40, map_size=4, seed=7)
    result, categories = read_result_csv(layer.result_csv)
    render_layer_report(
        layer_dir / "report",
        result,
        categories,
        {"model": "resnet152", "layer": "layer4", "dataset": "synth"},
        layer.thresholds,
        layer.imgmax,
        layer.maps_for_rows,
        layer.load_image,
        topk=10,  # the default: strips as long as a real report's
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/layer4/report/"
    server.shutdown()
    thread.join()


def strip_requests(requests: list[str]) -> set[str]:
    return {url for url in requests if "/strips/" in url}


def test_first_screen_of_2048_units_is_drawn_fast_and_images_load_lazily(wide_site, browser) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(FIRST_SCREEN)
    page.goto(wide_site + "index.html", wait_until="commit")
    page.wait_for_function("window.__firstScreen !== null", timeout=15000)
    drawn_ms = page.evaluate("window.__firstScreen")
    page.wait_for_load_state("load")
    assert page.evaluate("document.querySelectorAll('#units article.unit').length") == UNITS
    assert drawn_ms <= FIRST_SCREEN_S * 1000, f"first screen drawn after {drawn_ms:.0f} ms"
    fetched = len(strip_requests(requests))
    assert 0 < fetched < UNITS // 4, f"{fetched} of {UNITS} images fetched before any scrolling: not lazy"

    # Scroll through the whole page, three screens at a time (every image comes within the 1,250 px at
    # which Chromium starts a lazy load), two frames at each stop; then every image must have loaded.
    page.evaluate(SCROLL_THROUGH)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('img.strip')).every(i => i.complete && i.naturalWidth > 0)",
        timeout=60000,
    )
    images = page.evaluate("Array.from(document.querySelectorAll('img.strip')).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == UNITS and all(done and width > 0 for done, width in images)
    assert len(strip_requests(requests)) == UNITS
    assert [url for url in requests if not url.startswith(wide_site)] == []
    assert errors == []
    page.close()
