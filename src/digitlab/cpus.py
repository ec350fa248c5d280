"""How many CPUs this process may use: what sizes `predict`'s worker pool and `serve`'s default worker count.

Without PyTorch (device.py imports it), so that `digitlab predict` on ONNX Runtime never pays for its import.
"""
from __future__ import annotations

import os


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, under taskset or a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
