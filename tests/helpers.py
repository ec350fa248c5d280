"""Shared test helpers: where the real datasets are, and a way to run the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
