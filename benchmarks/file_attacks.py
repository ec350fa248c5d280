"""Hostile files where digitlab reads its data and its run folders: how fast each is refused, at what memory.

    python benchmarks/file_attacks.py            # ~1 min; builds its files in a temporary folder
    python benchmarks/file_attacks.py --gib 1    # a smaller gzip bomb

Each attack runs in a child process (its own peak RSS from wait4, its wall time from the end of its imports to the
outcome), under a
4 GiB address-space limit and a 120 s timeout, so that a regression fails here instead of filling the machine:

1. gzip bomb: MNIST's train-images-idx3-ubyte.gz replaced by a few MB that inflate to --gib GiB of zeros behind a
   true IDX header (it promises the file's 47,040,016 bytes), then by one whose header promises 3 GiB;
   `load_dataset("mnist", DIR)` must refuse it (the other three files are the real ones).
2. A mirror that answers with no Content-Length and zeros without end: `data.download` must stop at the
   published size of the file.
3. Run-folder locks: `.lock` as a symbolic link to a FIFO, a link to /dev/zero, a FIFO itself (each must be
   refused at once), and a lock left by a training killed as pid 1 in a container (pid 1 is alive: it must be
   taken over, nobody holds its flock).

It prints one markdown table (attack, outcome, time, peak RSS; a first row gives the RSS of a process that only
imports digitlab.data, torch included, to subtract) and exits 1 if any attack was not handled.
"""
from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "data" / "mnist"
LIMIT_BYTES = 4 << 30
TIMEOUT_S = 120

CHILD_PRELUDE = f"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
from digitlab.errors import DigitlabError
{{setup}}
start = time.perf_counter()
try:
"""
CHILD_END = """
    outcome = "accepted"
except DigitlabError as e:
    outcome = "refused: " + str(e)
except MemoryError:
    outcome = "MemoryError"
print(f"{time.perf_counter() - start:.6f}\\t{outcome}")
"""


def run_child(body: str, env: dict | None = None, setup: str = "") -> tuple[float, float, str]:
    """Run `body` (indented under a try) in a child Python, after `setup` (imports: their time is not the
    attack's); (seconds from setup's end to the outcome, its own peak RSS in MB, outcome). The child is waited
    for with wait4, whose rusage is that child's alone; a timer kills it at TIMEOUT_S."""
    code = CHILD_PRELUDE.replace("{setup}", setup) + body + CHILD_END
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err,
                                text=True, cwd=REPO, env={**os.environ, **(env or {})})
        timer = threading.Timer(TIMEOUT_S, proc.kill)
        timer.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rss_mb = usage.ru_maxrss / 1024
    if proc.returncode != 0 or "\t" not in stdout:
        return float("nan"), rss_mb, f"crashed or killed ({proc.returncode}): {stderr.strip()[-200:]}"
    seconds, outcome = stdout.strip().split("\t", 1)
    return float(seconds), rss_mb, outcome


def gzip_bomb(path: Path, header: bytes, gib: float) -> int:
    """`header` then `gib` GiB of zeros, gzipped; its size in bytes."""
    chunk = bytes(16 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(int(gib * 64)):
            f.write(chunk)
    return path.stat().st_size


def bomb_attacks(root: Path, gib: float) -> list[tuple[str, float, float, str]]:
    rows = []
    images_header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
    lying_header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1 << 20, 56, 56))
    for name, header in (("true header", images_header), ("header promising 3 GiB", lying_header)):
        folder = root / name.replace(" ", "-") / "mnist"
        folder.mkdir(parents=True)
        for src in MNIST.glob("*.gz"):
            shutil.copy(src, folder / src.name)
        size = gzip_bomb(folder / "train-images-idx3-ubyte.gz", header, gib)
        body = f"    load_dataset('mnist', {str(folder)!r}, progress=False)\n"
        seconds, rss, outcome = run_child(body, {"DIGITLAB_DECODED_CACHE": "0", "XDG_CACHE_HOME": str(root / "c")},
                                          setup="from digitlab.data import load_dataset")
        rows.append((f"1. gzip bomb, {name}: {size / 1e6:.1f} MB -> {gib:g} GiB of zeros", seconds, rss, outcome))
    return rows


class Endless(http.server.BaseHTTPRequestHandler):
    """Zeros without a Content-Length, until the client hangs up."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        chunk = bytes(1 << 16)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def download_attack(root: Path) -> tuple[str, float, float, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    dest = root / "download"
    body = (f"    spec = replace(data.DATASETS['mnist'], mirrors=({url!r},))\n"
            f"    data.download(spec, 'train-images-idx3-ubyte', Path({str(dest)!r}), progress=False)\n")
    try:
        seconds, rss, outcome = run_child(body, setup="from dataclasses import replace\nfrom pathlib import Path\n"
                                                      "from digitlab import data")
    finally:
        server.shutdown()
        server.server_close()
    left = sum(p.stat().st_size for p in dest.iterdir()) if dest.is_dir() else 0
    return (f"2. endless download (no Content-Length); {left} bytes left in the cache", seconds, rss, outcome)


def lock_attacks(root: Path) -> list[tuple[str, float, float, str]]:
    rows = []
    cases = {"link to a FIFO": "fifo", "link to /dev/zero": "/dev/zero", "a FIFO": None, "left by pid 1": "pid1"}
    for name, target in cases.items():
        run = root / f"lock-{len(rows)}"
        run.mkdir()
        lock = run / ".lock"
        if target == "fifo":
            os.mkfifo(run / "fifo")
            lock.symlink_to(run / "fifo")
        elif target == "/dev/zero":
            lock.symlink_to("/dev/zero")
        elif target is None:
            os.mkfifo(lock)
        else:
            lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "token": "killed"}))
        body = f"    lock = RunLock({str(run)!r})\n    lock.acquire(lambda line: None)\n    lock.release()\n"
        seconds, rss, outcome = run_child(body, setup="from digitlab.runs import RunLock")
        rows.append((f"3. run-folder .lock: {name}", seconds, rss, outcome))
    return rows


def handled(attack: str, outcome: str) -> bool:
    """Every attack must be refused with digitlab's error, except the pid-1 lock, which must be taken over."""
    if "pid 1" in attack or "baseline" in attack:
        return outcome == "accepted"
    return outcome.startswith("refused")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=3.0, help="GiB of zeros in the gzip bomb (default 3)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = run_child("    pass\n", setup="import digitlab.data")
        rows = [("0. baseline: a process that only imports digitlab.data (torch included)", *baseline)]
        rows += lock_attacks(root) + [download_attack(root)] + bomb_attacks(root, args.gib)
        rows = [(attack, seconds, rss, outcome.replace(f"{root}/", "")) for attack, seconds, rss, outcome in rows]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; 1-minute load {load:.2f} before, {os.getloadavg()[0]:.2f} after;"
          f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| attack | outcome | time to outcome (after imports) | peak RSS of the process |\n|---|---|---|---|")
    failed = 0
    for attack, seconds, rss, outcome in rows:
        ok = handled(attack, outcome)
        failed += not ok
        shown = outcome if len(outcome) < 140 else outcome[:137] + "..."
        print(f"| {attack} | {'ok' if ok else 'FAIL'}: {shown} | {seconds * 1000:,.1f} ms | {rss:,.0f} MB |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
