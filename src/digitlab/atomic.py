"""Writes a kill or a full disk never leaves half done: write ``<file>.tmp``, fsync it, rename it over the file.

Used for everything digitlab writes into a run folder (config.json, metrics.csv, checkpoints) and for exports.
Callers reach these functions through the module (``atomic.write_tmp``), so tests/digitlab_wrapped.py can
instrument every write of a run in one place.
"""
from __future__ import annotations

import os
from pathlib import Path

from digitlab.errors import RunError


def write_tmp(path: Path, write) -> Path:
    """Call write(tmp_path) and fsync the result; the caller renames it into place.

    A failed write (no space left, no permission) removes the partial .tmp file and raises a RunError.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {e.strerror or e}; the previous file, if any, is kept") from None
    return tmp


def commit(*pairs: tuple[Path, Path]) -> None:
    """Rename each (tmp, final) pair in order, then fsync the folder so the renames are durable."""
    for tmp, final in pairs:
        os.replace(tmp, final)
    dir_fd = os.open(pairs[0][1].parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: readers see the old file or the new one, never a mix."""
    commit((write_tmp(path, lambda tmp: tmp.write_text(text)), path))
