"""A `digitlab serve` subprocess as the serving benchmarks see it: a free loopback port, its /healthz wait, and
its process tree (server, forkserver, workers) read from /proc. Imported by attack.py and load_test.py (run as
`python benchmarks/X.py`, their folder is on sys.path); each keeps its own way of stopping the server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Callable
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(serve_args: list[str], log: Path, stop: Callable[[subprocess.Popen], None],
                new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """`python -m digitlab serve SERVE_ARGS --host 127.0.0.1 --port <free>` with its output in `log`, returned
    with its URL once /healthz answers; a server that does not is stopped with `stop` and is a SystemExit.
    new_session: its own process group, so that the caller can signal the server and its workers at once."""
    port = free_port()
    cmd = [sys.executable, "-m", "digitlab", "serve", *serve_args, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=new_session,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    if wait_until_healthy(process, url, log, START_TIMEOUT_S):
        return process, url
    stop(process)
    raise SystemExit(f"digitlab serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


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
