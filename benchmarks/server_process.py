"""A `digitlab serve` subprocess as the serving benchmarks see it: a free loopback port, its /healthz wait, and
its process tree (server, forkserver, workers) read from /proc. Imported by attack.py and load_test.py (run as
`python benchmarks/X.py`, their folder is on sys.path); each keeps its own way of stopping the server."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> bool:
    """True once GET /healthz answers; False after timeout_s. A server that exits first is a SystemExit with
    the end of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"digitlab serve exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return True
        except OSError:  # not listening yet (an HTTP error status is an OSError too)
            time.sleep(0.2)
    return False


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, then the parent's pid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now, from /proc/<pid>/stat's parent ids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(proc_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU time so far of `root` and its descendants alive now (the server and its workers)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = proc_stat(pid)
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            pass
    return total
