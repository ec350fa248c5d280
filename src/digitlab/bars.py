"""Progress bars (tqdm's) only where someone watches them live: a terminal, or a Jupyter notebook, where tqdm.auto
draws a widget. Written into a log file, a pipe or a CI log, a bar is thousands of carriage returns; the Python
API's `train(progress=True)` default must not do that to a script's redirected output."""
from __future__ import annotations

import sys
from typing import TextIO


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (tqdm.auto's own test): its output is a notebook cell, no tty."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def is_terminal(stream: TextIO | None) -> bool:
    """Whether `stream` is a terminal; a closed or replaced stream without isatty is not."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def wanted(requested: bool, stream: TextIO | None = None) -> bool:
    """Bars when asked for and watched live: in a notebook, or when `stream` (default: stderr, where tqdm writes)
    is a terminal."""
    return requested and (in_notebook() or is_terminal(stream if stream is not None else sys.stderr))
