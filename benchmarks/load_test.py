"""A bounded load test of a real `digitlab serve`: many clients at once, real MNIST test digits, and several
serving configurations compared in one run.

    python benchmarks/load_test.py          # shipped model, ONNX Runtime; 4 configurations x concurrency 16 and 64
    python benchmarks/load_test.py --configs "--workers 1 --max-batch 1" "" --concurrency 16 --requests 1000
    python benchmarks/load_test.py --runtimes onnx torch --run runs/<run>

For each runtime and configuration (extra `digitlab serve` options; "" is the default) it starts
`python -m digitlab serve [RUN] --host 127.0.0.1 --port P --runtime R --threads T CONFIG` on a free port, waits
for /healthz (the server listens once its workers are ready), then, for each `--concurrency`, sends a few warm-up
requests and runs that many clients (httpx.AsyncClient, one connection each, keep-alive) until `--requests` have
been answered or `--seconds` have passed, whichever comes first; it always stops the server. Requests alternate
between JSON pixels ({"pixels": 28x28}) and PNG uploads (multipart `file`) of MNIST test digits drawn with a
seed; bodies are encoded before the clock starts. It prints one markdown row per configuration and concurrency:
requests, errors (any status but 200, or no answer), 5xx, wall time, requests/s, latency p50/p90/p99 (send to
full answer, as the client sees it), the share of requests answered with the true label, and the CPU seconds the
server (all its processes) and this load generator each used during the timed part: the load generator runs on
the same machine as the server and competes with it for the CPU. Last, what each server said when it stopped
(requests served, model calls, the largest batch).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from digitlab.data import load_dataset

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
WARMUP = 20


#### The server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and all its descendants alive now (the server's workers), from
    /proc/<pid>/stat."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                kids.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    tree, total = [pid], 0.0
    for p in tree:
        tree.extend(kids.get(p, []))
        try:
            fields = _stat(p)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, then the parent's pid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str | None, runtime: str, threads: int, config: list[str],
                 log: Path) -> tuple[subprocess.Popen, str]:
    """`digitlab serve` in a subprocess on 127.0.0.1, returned with its URL once /healthz answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "digitlab", "serve", *([run] if run else []), "--host", "127.0.0.1",
           "--port", str(port), "--runtime", runtime, "--threads", str(threads), *config]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"digitlab serve exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"digitlab serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # as Ctrl+C: the server stops its workers and prints its counters
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


#### The requests


@dataclass
class Request:
    kind: str  # "json" or "png"
    label: int
    body: bytes
    headers: dict = field(default_factory=dict)


def make_requests(count: int, seed: int) -> list[Request]:
    """`count` distinct test digits (seeded), alternately as JSON pixels and as PNG uploads, encoded once."""
    ds = load_dataset("mnist", progress=False)
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(ds.test_labels), size=min(count, len(ds.test_labels)), replace=False)
    out = []
    for n, i in enumerate(indices):
        image, label = ds.test_images[i].numpy(), int(ds.test_labels[i])
        if n % 2 == 0:
            body = json.dumps({"pixels": image.tolist()}).encode()
            out.append(Request("json", label, body, {"content-type": "application/json"}))
        else:
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            body, ctype = multipart(png.getvalue())
            out.append(Request("png", label, body, {"content-type": ctype}))
    return out


def multipart(png: bytes, boundary: str = "digitlab-load-test") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"digit.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


#### The load


@dataclass
class Outcome:
    latency_s: float
    status: int  # 0: no answer (connection error or client timeout)
    correct: bool


async def client(http: httpx.AsyncClient, url: str, requests: list[Request], counter: list[int], limit: int,
                 deadline: float, outcomes: list[Outcome]) -> None:
    while time.perf_counter() < deadline:
        n = counter[0]
        if n >= limit:
            return
        counter[0] += 1  # one event loop: no other client runs between the read and this write
        req = requests[n % len(requests)]
        start = time.perf_counter()
        try:
            r = await http.post(url + "/api/predict", content=req.body, headers=req.headers)
            status, correct = r.status_code, r.status_code == 200 and r.json()["label"] == req.label
        except httpx.HTTPError:
            status, correct = 0, False
        outcomes.append(Outcome(time.perf_counter() - start, status, correct))


async def load(url: str, requests: list[Request], total: int, concurrency: int, seconds: float,
               timeout_s: float) -> tuple[list[Outcome], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as http:
        for req in requests[:WARMUP]:  # warm up: first requests load lazily built parts of the stack
            (await http.post(url + "/api/predict", content=req.body, headers=req.headers)).raise_for_status()
        outcomes: list[Outcome] = []
        counter = [0]
        start = time.perf_counter()
        await asyncio.gather(*(client(http, url, requests, counter, total, start + seconds, outcomes)
                               for _ in range(concurrency)))
        return outcomes, time.perf_counter() - start


def summarise(name: str, outcomes: list[Outcome], wall_s: float, server_cpu: float, client_cpu: float) -> str:
    ms = np.array([o.latency_s for o in outcomes]) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]) if len(ms) else (float("nan"),) * 3
    errors = sum(o.status != 200 for o in outcomes)
    server_errors = sum(o.status >= 500 for o in outcomes)
    correct = sum(o.correct for o in outcomes) / max(1, len(outcomes))
    return (f"| {name} | {len(outcomes):,} | {errors:,} | {server_errors:,} | {wall_s:.1f} | "
            f"{len(outcomes) / wall_s:.1f} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {correct:.2%} | "
            f"{server_cpu:.1f} / {client_cpu:.1f} |")


DEFAULT_CONFIGS = ["--workers 0", "--workers 1 --max-batch 1", "--workers 2 --max-batch 1", ""]


def describe_config(config: str) -> str:
    return {"": "default", "--workers 0": "--workers 0 (threads in the server: the old design)"}.get(config, config)


def served_line(log: Path) -> str:
    """The counters the server printed when it stopped: requests, model calls, largest batch."""
    found = re.findall(r"digitlab: (served .*)", log.read_text(errors="replace"))
    return found[-1] if found else "(no counters printed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder or .safetensors to serve; none: the shipped model")
    parser.add_argument("--runtimes", nargs="+", default=["onnx"], choices=["onnx", "torch"])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="`digitlab serve` options per configuration, each one quoted string; '' is the default")
    parser.add_argument("--requests", type=int, default=5000, help="stop after this many answered requests")
    parser.add_argument("--seconds", type=float, default=120, help="... or after this long, per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], help="clients sending at once")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout per request, seconds")
    parser.add_argument("--seed", type=int, default=0, help="which test digits")
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1 or args.seconds <= 0:
        parser.error("--requests, --concurrency and --seconds must be positive")

    requests = make_requests(min(args.requests, 2000), args.seed)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, shared by the "
          f"server and this load generator; load average (1 min) before: {os.getloadavg()[0]:.2f}")
    print(f"model: {args.run or 'shipped'}; {args.requests:,} requests or {args.seconds:g} s per row, "
          f"concurrency {', '.join(map(str, args.concurrency))}, server --threads {args.threads}; half JSON pixels, "
          f"half PNG uploads of {len(requests):,} distinct MNIST test digits (seed {args.seed})\n")
    rows, counters = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            for n, config in enumerate(args.configs):
                log = Path(tmp) / f"serve-{runtime}-{n}.log"
                process, url = start_server(args.run, runtime, args.threads, shlex.split(config), log)
                name = f"{runtime}, {describe_config(config)}"
                try:
                    for concurrency in args.concurrency:
                        server_cpu, client_cpu = cpu_seconds(process.pid), time.process_time()
                        outcomes, wall = asyncio.run(load(url, requests, args.requests, concurrency, args.seconds,
                                                          args.timeout))
                        server_cpu = cpu_seconds(process.pid) - server_cpu
                        client_cpu = time.process_time() - client_cpu
                        rows.append(summarise(f"{name} | {concurrency}", outcomes, wall, server_cpu, client_cpu))
                        print(rows[-1], flush=True)
                finally:
                    stop_server(process)
                counters.append(f"{name}: {served_line(log)}")
    print("\n| runtime, configuration | concurrency | requests | errors (not 200) | 5xx | wall s | requests/s | "
          "p50 ms | p90 ms | p99 ms | correct | CPU s server / load generator |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n" + "\n".join(counters))
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
