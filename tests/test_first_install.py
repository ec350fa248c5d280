"""What a new user meets first: the README's commands, `digitlab --version`, bare `digitlab`, `train --help`'s
defaults, the Python entry points, and the API docs page working with no network."""
from __future__ import annotations

import http.server
import importlib.metadata
import io
import os
import re
import shutil
import threading
import tomllib
from functools import partial
from pathlib import Path

import pytest

from helpers import MNIST_DIR, REPO, FileServer, run_cli

README = (REPO / "README.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def quickstart_install_command() -> str:
    """The README's first command: the pip install in the Quickstart block."""
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return next(line for line in block.splitlines() if line.startswith("pip install"))


def extras_installed(command: str) -> set[str]:
    """The extras a `pip install ... -e ".[a,b]"` installs, with `all`/`dev` expanded through pyproject.toml."""
    match = re.search(r'-e\s+"?\.\[([\w,-]+)\]"?', command)
    todo = set(match.group(1).split(",")) if match else set()
    done: set[str] = set()
    while todo:
        extra = todo.pop()
        done.add(extra)
        for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
            inner = re.fullmatch(r"digitlab\[([\w,-]+)\]", requirement)
            todo |= set(inner.group(1).split(",")) - done if inner else set()
    return done


@pytest.mark.quick
def test_quickstart_installs_what_the_readme_then_uses():
    command = quickstart_install_command()
    assert "digitlab train" in command
    extras = extras_installed(command)
    # The README goes on to `digitlab serve` (web) and `digitlab export` / `predict --onnx` (onnx).
    assert {"web", "onnx"} <= extras, f"the quickstart installs extras {extras or 'none'}: {command}"
    for extra in ("web", "onnx", "all", "dev"):  # each extra is explained where it is installed
        assert f"`{extra}`" in README.split("## What you can do", 1)[0], f"the quickstart does not explain {extra}"


@pytest.mark.quick
def test_every_digitlab_command_in_the_readme_exists():
    from digitlab.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 (argparse has no API)
    used = set(re.findall(r"^\s*digitlab (\w+)", README, re.M)) | set(re.findall(r"`digitlab (\w+)", README))
    assert used and used <= commands, f"the README uses commands digitlab lacks: {used - commands}"


@pytest.mark.quick
def test_readme_python_example_imports_from_the_package():
    import digitlab

    names = re.findall(r"^from digitlab import (.+)$", README, re.M)
    assert names, "the README has no `from digitlab import` example"
    for name in (n.strip() for line in names for n in line.split(",")):
        assert hasattr(digitlab, name) and name in digitlab.__all__, name


@pytest.mark.quick
def test_preset_config_is_exported():
    from digitlab import preset_config

    assert preset_config("default")["preset"] == "default"


@pytest.mark.quick
def test_test_command_installs_fashion_mnist():
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "bash scripts/test.sh" in README and "dataset-fashion-mnist" in script
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_version_comes_from_the_package_metadata():
    import digitlab

    assert digitlab.__version__ == PYPROJECT["project"]["version"] == importlib.metadata.version("digitlab")
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"digitlab {digitlab.__version__}", proc


@pytest.mark.quick
def test_version_is_written_in_one_place():
    pinned = [str(p.relative_to(REPO)) for p in (REPO / "src").rglob("*.py")
              if re.search(r"""__version__\s*=\s*["']\d+\.\d""", p.read_text())]
    assert not pinned, f"a version literal besides pyproject.toml: {pinned}"


def test_bare_digitlab_lists_the_commands():
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "predict", "serve", "export", "compare", "data"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), f"{command} is not listed:\n{proc.stdout}"


def test_bare_data_lists_its_subcommands():
    proc = run_cli("data")
    assert proc.returncode == 0 and "info" in proc.stdout and "show" in proc.stdout, proc


def help_line(text: str, flag: str) -> str:
    """The whole (wrapped) help entry of one flag, on one line."""
    entry = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -)", text, re.M | re.S)
    assert entry, f"{flag} is not in the help"
    return " ".join(entry.group(0).split())


def test_train_help_shows_the_defaults_a_bare_train_uses():
    from digitlab.config import TrainConfig
    from digitlab.presets import preset_config

    text = run_cli("train", "--help").stdout
    default = preset_config("default")
    assert default["lr"] != TrainConfig().lr  # otherwise this test proves nothing
    assert f"(default: {default['lr']:g} from preset 'default'; TrainConfig: {TrainConfig().lr:g})" in help_line(
        text, "--lr")
    assert "(default: digitnet from preset 'default'; TrainConfig: cnn)" in help_line(text, "--model")
    assert "(default: width=16 from preset 'default'; TrainConfig: none)" in help_line(text, "--model-args")
    assert f"(default: {TrainConfig().seed})" in help_line(text, "--seed")  # not in the preset: TrainConfig's
    assert "preset 'default'" in text.split("\n  --dataset", 1)[0]  # the group says where defaults come from


# ---- data: damaged files and the download's progress bar --------------------------------------------------

def test_damaged_deflate_data_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, folder)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    damaged = bytearray(target.read_bytes())
    damaged[1000:1008] = bytes(b ^ 0xFF for b in damaged[1000:1008])  # zlib: "invalid distance too far back"
    target.write_bytes(bytes(damaged))
    proc = run_cli("data", "info", "--data-dir", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"{target}: cannot be read" in lines[0] and "Traceback" not in proc.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the server's access log would land in the stderr under test
        pass


@pytest.mark.parametrize("stderr_kind, shows_bar", [(io.StringIO, False), (Terminal, True)])
def test_download_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, stderr_kind, shows_bar):
    from digitlab import data

    stem = "t10k-labels-idx1-ubyte"
    handler = partial(QuietHandler, directory=str(MNIST_DIR))
    server = FileServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = data.DatasetSpec("mnist", data.DATASETS["mnist"].classes, data.DATASETS["mnist"].md5,
                            (f"http://127.0.0.1:{server.server_address[1]}/",))
    stderr = stderr_kind()
    monkeypatch.setattr("sys.stderr", stderr)
    try:
        path = data.download(spec, stem, tmp_path, progress=True)
    finally:
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == (MNIST_DIR / f"{stem}.gz").read_bytes()
    assert (f"{stem}.gz" in stderr.getvalue()) is shows_bar, repr(stderr.getvalue())


# ---- the API docs page, offline ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from digitlab.predict import Predictor
    from digitlab.serve import create_app

    with TestClient(create_app(Predictor.from_run())) as c:
        yield c


def asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_docs_page_loads_only_same_origin_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = asset_urls(r.text)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls), urls
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "<script>" not in r.text.replace(" ", ""), "an inline script, which the page's CSP forbids"
    assert "default-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("suffix, kind", [(".js", "javascript"), (".css", "text/css"), (".png", "image/png")])
def test_docs_assets_are_served(client, suffix, kind):
    urls = [u for u in asset_urls(client.get("/docs").text) if u.endswith(suffix)]
    assert urls, f"no {suffix} asset on /docs"
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 50, url


def test_serve_without_the_docs_assets_names_the_web_extra(tmp_path):
    """fastapi-offline (Swagger UI's files) is part of the web extra: without it, serve says so in one line."""
    blocker = tmp_path / "fastapi_offline"
    blocker.mkdir()
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi_offline'\", name='fastapi_offline')\n")
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    proc = run_cli("serve", "--port", "8", env={"PYTHONPATH": pythonpath})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "web extra (fastapi_offline is missing)" in lines[0]


def test_page_footer_links_to_a_docs_page_that_exists(client):
    page = client.get("/").text
    assert 'href="/docs"' in page and client.get("/docs").status_code == 200


@pytest.mark.browser
def test_docs_page_renders_offline_in_chromium(tmp_path):
    """/docs in headless Chromium with every request off the server refused: the operations list renders, the
    page asks for nothing elsewhere and breaks no rule of its CSP (a violation is a console error)."""
    from playwright.sync_api import sync_playwright

    from conftest import start_server, stop_server
    from digitlab.predict import DEFAULT_WEIGHTS
    from test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

    server = start_server(DEFAULT_WEIGHTS, tmp_path / "serve.log")
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.route("**/*", only_the_server)
                page.on("console", lambda m: m.type == "error" and errors.append(m.text))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.url + "/docs")
                page.locator(".opblock-summary-path", has_text="/api/predict").wait_for()
                paths = page.locator(".opblock-summary-path").all_text_contents()
                title = page.locator(".info .title").text_content()
            finally:
                browser.close()
    finally:
        stop_server(server)
    assert {"/api/predict", "/api/model", "/healthz"} <= {p.strip() for p in paths}, paths
    assert "digitlab" in title
    assert not elsewhere, f"/docs asked for files elsewhere: {elsewhere}"
    assert not errors, errors
