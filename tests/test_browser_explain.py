"""The drawing page's "why" panel in headless Chromium against a real `digitlab serve` of the shipped model: draw
a 7 with the mouse, wait for its explanation, and read the panel: the heat map over what the model sees has
coloured pixels, it names the predicted class, and every layer's activations are drawn.

Set DIGITLAB_SCREENSHOT_DIR=docs to save the page as docs/explain-page.png (for docs/explain.md).
"""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import start_server, stop_server
from test_browser import SEVEN, browser, draw, open_page  # noqa: F401  (browser: the module's Chromium fixture)

pytestmark = pytest.mark.browser

HEAT_INK = ("Array.from(document.getElementById('heat').getContext('2d').getImageData(0, 0, 28, 28).data)"
            ".reduce((n, v, i, d) => n + (i % 4 === 0 && (Math.abs(d[i] - d[i + 2]) > 60) ? 1 : 0), 0)")


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    from digitlab.predict import DEFAULT_WEIGHTS

    server = start_server(DEFAULT_WEIGHTS, tmp_path_factory.mktemp("why") / "serve.log")
    try:
        yield server
    finally:
        stop_server(server)


def test_why_panel_explains_a_drawn_seven(browser, shipped_server, tmp_path):  # noqa: F811
    with open_page(browser, shipped_server.url, "digitnet") as page:
        assert page.evaluate(HEAT_INK) == 0  # nothing drawn: a black heat map
        assert draw(page, [SEVEN]) == "7"
        page.locator("body[data-explained='1']").wait_for(state="attached")
        assert page.text_content("#why-label").strip() == "7"
        assert page.get_attribute("#why-label", "data-label") == "7"
        coloured = page.evaluate(HEAT_INK)  # red (for) or blue (against): |R - B| large; grey pixels are not
        assert coloured > 15, coloured
        names = page.locator("#layers .layer-name").all_text_contents()
        assert len(names) == 16 and names[0].startswith("features.0.0 Conv2d"), names  # DigitNet w16: 16 layers
        cut = page.evaluate("[...document.querySelectorAll('#layers .layer-name')]"
                            ".filter(n => n.scrollWidth > n.clientWidth || n.title !== n.textContent)"
                            ".map(n => n.textContent)")
        assert cut == [], cut  # every name shown in full (wrapped where long), and in its title
        assert page.locator("#layers canvas").count() == 15 * 8 + 1  # 8 channels a layer, the logits one image
        assert "Integrated Gradients" in page.text_content("#why-note")

        shot = tmp_path / "explain-page.png"
        page.evaluate("Promise.all(document.getAnimations().map(a => a.finished)).then(() => true)")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("DIGITLAB_SCREENSHOT_DIR"):
            shutil.copyfile(shot, os.path.join(os.environ["DIGITLAB_SCREENSHOT_DIR"], "explain-page.png"))

        page.select_option("#method", "gradcam")  # another method explains the same drawing again
        page.locator("#why-note", has_text="Grad-CAM: red pixels speak for 7").wait_for()
        assert page.evaluate(HEAT_INK) > 15

        page.click("#clear")  # Clear empties the panel
        assert page.text_content("#why-label").strip() == "–" and page.evaluate(HEAT_INK) == 0
        assert page.locator("#layers .layer").count() == 0
