"""Screenshot TensorBoard's scalars for a folder of runs, as a person sees them, in headless Chromium.

    python scripts/tensorboard_screenshot.py runs/sweeps/default-sweep -o docs/tensorboard.png --tag accuracy/val

Starts `tensorboard --logdir LOGDIR` on a free loopback port, opens its time-series dashboard filtered to the tag
in Debian's Chromium (driven by Playwright, as the browser tests do), waits for the charts to draw, writes the
PNG, and stops both. It is how docs/experiments.md's TensorBoard figure is made.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir: Path, port: int) -> subprocess.Popen:
    """`tensorboard --logdir LOGDIR` on 127.0.0.1:port, returned once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tensorboard exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("tensorboard did not answer within a minute")


def screenshot(url: str, out: Path, width: int, height: int) -> None:
    """Open `url` in headless Chromium, wait until the charts have drawn, and save the page as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_selector("tb-legacy-runs-selector, runs-selector, .run-name, mat-checkbox", timeout=60_000)
        page.wait_for_selector("line-chart canvas, line-chart svg, .line-chart-container canvas", timeout=60_000)
        page.wait_for_load_state("networkidle")
        tidy(page)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()


def tidy(page) -> None:
    """Close the settings pane TensorBoard opens beside the charts and widen the first chart, where the controls
    exist (their labels differ between TensorBoard versions; a missing one only leaves the view as it is)."""
    for selector in ("button[aria-label='Close side pane']", "button[aria-label='Toggle full size mode']"):
        try:
            page.locator(selector).first.click(timeout=2_000)
        except Exception:  # noqa: BLE001 - a view without this control is still a view
            continue
    page.wait_for_timeout(500)  # the chart redraws at its new size: half a second of animation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, help="folder of run folders (event files inside)")
    parser.add_argument("-o", "--output", type=Path, default=Path("tensorboard.png"))
    parser.add_argument("--tag", default="accuracy/val", help="the scalar tag to show (a regular expression)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    port = free_port()
    server = start_tensorboard(args.logdir, port)
    try:
        query = urllib.parse.urlencode({"tagFilter": args.tag, "smoothing": "0"})
        screenshot(f"http://127.0.0.1:{port}/?{query}#timeseries", args.output, args.width, args.height)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
