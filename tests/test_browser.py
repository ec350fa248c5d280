"""The drawing page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real server:
draw a 7 and a 1 with mouse strokes and read the prediction the page shows.

Set DIGITLAB_SCREENSHOT=docs/screenshot.png to also save the page, with its 7, there (for the README).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000
SEVEN = [(0.22, 0.2), (0.78, 0.2), (0.45, 0.86)]  # a bar across the top, then down to the left


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (starting it is the slow part); each test gets its own context."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live_server):
    """The drawing page in a fresh context (no storage or state from another test); console errors are
    collected in page.errors, and a test that logged any fails when it ends."""
    context = browser.new_context(viewport={"width": 820, "height": 620}, has_touch=True)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.errors = []
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(live_server.url + "/")
        # selector waits, not wait_for_function: the page's CSP forbids the eval() that polling would use
        page.locator("#bars [data-class='9']").wait_for()
        page.locator("#model", has_text="cnn").wait_for()
        yield page
        assert page.errors == [], page.errors
    finally:
        context.close()


def draw(page, strokes: list[list[tuple[float, float]]], finger: bool = False) -> str:
    """Draw strokes given in canvas fractions (0..1) with the mouse or a finger, wait for the answer to the last
    stroke, and return what #prediction shows."""
    box = page.locator("#canvas").bounding_box()
    before = int(page.evaluate("document.body.dataset.settled || '0'"))
    for stroke in strokes:
        points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        (touch_stroke if finger else mouse_stroke)(page, points)
    page.locator(f"body[data-settled='{before + len(strokes)}']").wait_for(state="attached")
    return page.text_content("#prediction").strip()


def mouse_stroke(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=12)
    page.mouse.up()


def touch_stroke(page, points: list[tuple[float, float]], steps: int = 12) -> None:
    """One finger drag through raw touch events (Playwright has no touch-drag call; Chromium's CDP does)."""
    cdp = page.context.new_cdp_session(page)
    x, y = points[0]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        for i in range(1, steps + 1):
            x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def bars(page) -> dict[str, str]:
    return page.evaluate("Object.fromEntries([...document.querySelectorAll('#bars [data-class]')]"
                         ".map(b => [b.dataset.class, b.querySelector('.pct').textContent]))")


def test_drawn_seven_is_read_as_7(page, tmp_path):
    assert draw(page, [SEVEN]) == "7", f"bars: {bars(page)}"
    assert int(page.locator("#bars [data-class='7'] .pct").text_content().rstrip("%").split(".")[0]) > 50
    assert page.locator("#bars [data-class='7']").get_attribute("class") == "bar top"
    ink = page.evaluate("Array.from(document.getElementById('preview').getContext('2d')"
                        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length")
    assert 20 < ink < 400, "the preview should show the 28x28 digit the model saw"
    shot = tmp_path / "screenshot.png"
    # the bars' width transitions have ended (an await in the page, not polling: the CSP forbids eval())
    page.evaluate("Promise.all(document.getAnimations().map(a => a.finished)).then(() => true)")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("DIGITLAB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DIGITLAB_SCREENSHOT"])


def test_clear_resets_the_page(page):
    assert draw(page, [SEVEN]) == "7"
    page.click("#clear")
    assert page.text_content("#prediction").strip() == "–"
    assert set(bars(page).values()) == {"0%"}
    dark = page.evaluate("Array.from(document.getElementById('canvas').getContext('2d')"
                         ".getImageData(0, 0, 280, 280).data).every((v, i) => i % 4 === 3 || v === 0)")
    assert dark, "Clear should leave a black canvas"


def test_drawn_one_is_read_as_1(page):
    page.click("#clear")
    one = [[(0.52, 0.14), (0.48, 0.86)]]  # one stroke down, slightly slanted like most written 1s
    assert draw(page, one) == "1", f"bars: {bars(page)}"


def test_finger_drawn_seven_is_read_as_7(page):
    page.click("#clear")
    assert draw(page, [SEVEN], finger=True) == "7", f"bars: {bars(page)}"
    assert page.evaluate("window.scrollY") == 0, "drawing must not scroll the page"


def test_drawing_and_clearing_log_no_errors(page):
    """Every test fails on console errors when it ends (see `page`); this one does a whole round on its own."""
    for strokes in ([SEVEN], [[(0.52, 0.14), (0.48, 0.86)]]):
        draw(page, strokes)
        page.click("#clear")
    draw(page, [SEVEN], finger=True)
    assert page.errors == []
