"""Shared test helpers: where the real datasets are, and a way to run the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def fashion_dir() -> Path:
    """Fashion-MNIST is not shipped in the repo; tests read it from ../shared/data and fail if absent."""
    path = SHARED_DATA
    assert (path / "fashion-mnist").is_dir(), f"Fashion-MNIST not found at {path}/fashion-mnist"
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m digitlab ARGS` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "digitlab", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=full_env)
