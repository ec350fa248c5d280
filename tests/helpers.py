"""Shared test helpers: where the real datasets are, a way to run the CLI in a subprocess, a free port, MNIST
slices, PNG bytes, and the real-world digit renderer of benchmarks/make_realworld_digits.py."""
from __future__ import annotations

import contextlib
import http.server
import importlib.util
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Iterator

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"  # shipped in the repository
FASHION_HINT = ("install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist, as "
                "scripts/test.sh does) or point DIGITLAB_DATA at a folder holding fashion-mnist/")


def fashion_dir() -> Path:
    """The folder holding Fashion-MNIST's four files, found through digitlab's own search order (DIGITLAB_DATA,
    data/, the user cache, /usr/share/datasets), never downloaded: a test that needs it fails, loudly, without it."""
    from digitlab.data import locate
    from digitlab.errors import DataError

    try:
        paths = locate("fashion-mnist", download_missing=False)
    except DataError as e:
        raise AssertionError(f"Fashion-MNIST is missing: {FASHION_HINT}. {e}") from None
    folders = {p.parent for p in paths.values()}
    assert len(folders) == 1, f"Fashion-MNIST's files are split over {sorted(map(str, folders))}; {FASHION_HINT}"
    return folders.pop()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m digitlab ARGS` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "digitlab", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=full_env)


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; there is a small race until the server binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mnist_slice(dataset, train: int, test: int | None = None):
    """The first `train` training images (and the first `test` test images; all of them if None): the same
    images every run, so a small training in a test is deterministic."""
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if test is not None:
        test_images, test_labels = test_images[:test], test_labels[:test]
    return replace(dataset, train_images=dataset.train_images[:train], train_labels=dataset.train_labels[:train],
                   test_images=test_images, test_labels=test_labels)


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as a PNG file."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, idat: bool = False) -> bytes:
    """A PNG whose header claims width x height 1-bit grey pixels but that carries (almost) no pixel data:
    a decompression bomb's shape. With `idat`, a tiny IDAT chunk too, as a real file would have."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + data + png_chunk(b"IEND", b"")


def import_renderer() -> ModuleType:
    """benchmarks/make_realworld_digits.py as a module (benchmarks/ is not a package), imported once: the tests
    and the benchmark folder share one copy of the code that renders digits as photos, scans and odd files."""
    name = "make_realworld_digits"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time in a folder: what 'changes nothing' is checked against."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A CLI run that failed as users are promised: exit 1, one `digitlab: error:` line naming `fragments`."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@contextlib.contextmanager
def server_in_thread(server) -> Iterator[None]:
    """Run a uvicorn Server (serve.server.make_server) in a thread for the block: entered once it listens (its
    `started` flag, polled for at most 30 s), stopped and joined on the way out."""
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        thread.join(30)


class FileServer(http.server.ThreadingHTTPServer):
    """A local HTTP server for download tests. A client that stops reading (a download refused at its size cap,
    or stopped on purpose) is what those tests provoke, so its broken pipe is not printed as a traceback."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
