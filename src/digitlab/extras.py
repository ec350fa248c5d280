"""Optional dependencies (pyproject's extras), imported only by the commands that use them.

    ort = require("onnx", "onnxruntime", "predicting with ONNX Runtime")
    attr = require("explain", "captum.attr", "explaining a prediction")   # digitlab explain, POST /api/explain

A missing extra is a DigitlabError whose fix fits how digitlab was installed: from a source checkout (an
editable install, or the package running from a tree with digitlab's pyproject.toml) the extra is installed
with `pip install -e '.[onnx]'` in that checkout, since `pip install 'digitlab[onnx]'` would fetch a second
digitlab from the index over it; otherwise from the index.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlparse

from digitlab.errors import DigitlabError

PACKAGE_DIR = Path(__file__).resolve().parent


class MissingExtraError(DigitlabError):
    """An optional dependency of digitlab is not installed."""


def require(extra: str, module: str, purpose: str) -> ModuleType:
    """Import `module`, which the `extra` extra installs; a MissingExtraError with the install command if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module
        raise MissingExtraError(f"{purpose} needs the {extra} extra ({missing} is missing): "
                                f"{install_hint(extra)}") from None


def install_hint(extra: str, package_dir: Path = PACKAGE_DIR, path: list[str] | None = None) -> str:
    """The command that installs `extra` for this install of digitlab (`package_dir`, found on `path`)."""
    checkout = source_checkout(package_dir, sys.path if path is None else path)
    if checkout is not None:
        return f"run `pip install -e '.[{extra}]'` in {checkout}"
    return f"pip install 'digitlab[{extra}]'"


def source_checkout(package_dir: Path, path: list[str]) -> Path | None:
    """The source tree digitlab runs from, or None if it was installed from an index (or a wheel)."""
    package_dir = Path(package_dir).resolve()
    root = package_dir.parent.parent  # <checkout>/src/digitlab
    if package_dir.parent.name == "src" and _is_digitlab_project(root / "pyproject.toml"):
        return root
    # The dist-info beside the package first: that is the install running, whatever else is on the path.
    for dist in importlib.metadata.distributions(name="digitlab", path=[str(package_dir.parent), *path]):
        return _editable_location(dist)
    return None


def _editable_location(dist: importlib.metadata.Distribution) -> Path | None:
    """Where an editable install's source lives, from its PEP 610 direct_url.json."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        return None
    url = info.get("url", "")
    if not info.get("dir_info", {}).get("editable") or not url.startswith("file:"):
        return None
    return Path(unquote(urlparse(url).path))


def _is_digitlab_project(pyproject: Path) -> bool:
    try:
        text = pyproject.read_text()
    except OSError:
        return False
    return 'name = "digitlab"' in text
