"""A bounded load test of a real `digitlab serve`: many clients at once, real MNIST test digits, and several
serving configurations compared in one run.

    python benchmarks/load_test.py          # shipped model, ONNX Runtime; 5 configurations x concurrency 16 and 64
    python benchmarks/load_test.py --configs "--workers 1 --max-batch 1" "" --concurrency 16 --requests 1000
    python benchmarks/load_test.py --runtimes onnx torch --run runs/<run>

For each runtime and configuration (extra `digitlab serve` options; "" is the default) it starts
`python -m digitlab serve [RUN] --host 127.0.0.1 --port P --runtime R --threads T CONFIG` on a free port, waits
for /healthz (the server listens once its workers are ready), then, for each `--concurrency`, sends a few warm-up
requests and runs that many clients, one keep-alive HTTP/1.1 connection each (a new one if the server closes it),
until `--requests` have been answered or `--seconds` have passed, whichever comes first; it always stops the
server. Requests alternate between JSON pixels ({"pixels": 28x28}) and PNG uploads (multipart `file`) of MNIST
test digits drawn with a seed; whole requests are encoded before the clock starts. The clients are a small HTTP/1.1
client on asyncio's protocols (Connection, below: status line, Content-Length or chunked, then json.loads of the
body to check the label), not httpx: httpx.AsyncClient spent about 2 ms of CPU per request, as much as the server,
on the same cores; this one about 0.2 ms. It prints one markdown row per configuration and concurrency:
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
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.data import load_dataset

from machine import cpu_name
from server_process import cpu_seconds, start_serve

WARMUP = 20


#### The server


def start_server(run: str | None, runtime: str, threads: int, config: list[str],
                 log: Path) -> tuple[subprocess.Popen, str]:
    """`digitlab serve` in a subprocess on 127.0.0.1, returned with its URL once /healthz answers."""
    return start_serve([*([run] if run else []), "--runtime", runtime, "--threads", str(threads), *config], log,
                       stop_server)


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
    content_type: str

    def encode(self, netloc: str) -> bytes:
        """The whole HTTP/1.1 request (keep-alive, the default), as sent to the server at `netloc`."""
        return (f"POST /api/predict HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n").encode() + self.body


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
            out.append(Request("json", label, body, "application/json"))
        else:
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            body, ctype = multipart(png.getvalue())
            out.append(Request("png", label, body, ctype))
    return out


def multipart(png: bytes, boundary: str = "digitlab-load-test") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"digit.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


#### The load: a small HTTP/1.1 client on asyncio's protocols (httpx took as much CPU per request as the server)


class ClientError(Exception):
    """No usable answer: the connection closed or failed, or the answer was not HTTP/1.1 this client reads."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests one at a time. It reads just enough of each
    answer to know where it ends (status line, Content-Length or chunked, Connection: close) and hands back the
    status and body; the caller parses the body (the JSON answer) itself, as any client would."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ClientError(f"connection closed ({exc})" if exc else "connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            try:
                answer = parse_response(self.buffer)
            except ClientError as e:
                self.waiter.set_exception(e)
                return
            if answer is not None:
                self.waiter.set_result(answer)

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, whether the server will close the connection)."""
        if self.closed:
            raise ClientError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def parse_response(buffer: bytearray) -> tuple[int, bytes, bool] | None:
    """The first complete answer in `buffer`, removed from it; None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientError(f"not an HTTP/1.1 status line: {head[0][:80]!r}")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    start = end + 4
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start:start + length])
        del buffer[:start + length]
    elif headers.get("transfer-encoding") == "chunked":
        body, consumed = dechunk(buffer, start)
        if body is None:
            return None
        del buffer[:consumed]
    else:
        raise ClientError("an answer without Content-Length or chunked encoding")
    return int(parts[1]), body, headers.get("connection") == "close"


def dechunk(buffer: bytearray, at: int) -> tuple[bytes | None, int]:
    """A chunked body starting at `at`: (body, end offset), or (None, 0) while incomplete (no trailers sent)."""
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None, 0
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if size == 0:
            return (bytes(body), line_end + 4) if len(buffer) >= line_end + 4 else (None, 0)
        if len(buffer) < line_end + 2 + size + 2:
            return None, 0
        body += buffer[line_end + 2:line_end + 2 + size]
        at = line_end + 2 + size + 2


@dataclass
class Outcome:
    latency_s: float
    status: int  # 0: no answer (connection error or client timeout)
    correct: bool


async def connect(host: str, port: int) -> Connection:
    _transport, conn = await asyncio.get_running_loop().create_connection(Connection, host, port)
    return conn


async def client(host: str, port: int, requests: list[tuple[bytes, int]], counter: list[int], limit: int,
                 deadline: float, timeout_s: float, outcomes: list[Outcome]) -> None:
    """One client: one connection (a new one after the server closes it or an error), one request at a time."""
    conn: Connection | None = None
    try:
        while time.perf_counter() < deadline:
            n = counter[0]
            if n >= limit:
                return
            counter[0] += 1  # one event loop: no other client runs between the read and this write
            raw, label = requests[n % len(requests)]
            start = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    if conn is None or conn.closed:
                        conn = await connect(host, port)
                    status, body, closing = await conn.request(raw)
                correct = status == 200 and json.loads(body)["label"] == label
                if closing:
                    conn.close()
                    conn = None
            except (OSError, ClientError, TimeoutError, ValueError, KeyError):
                status, correct = 0, False
                if conn is not None:
                    conn.close()
                    conn = None
            outcomes.append(Outcome(time.perf_counter() - start, status, correct))
    finally:
        if conn is not None:
            conn.close()


async def load(url: str, requests: list[Request], total: int, concurrency: int, seconds: float,
               timeout_s: float) -> tuple[list[Outcome], float]:
    netloc = url.removeprefix("http://")
    host, port = netloc.rsplit(":", 1)
    prepared = [(req.encode(netloc), req.label) for req in requests]  # encoded before the clock starts
    for raw, _label in prepared[:WARMUP]:  # warm up: first requests load lazily built parts of the stack
        conn = await connect(host, int(port))
        try:
            async with asyncio.timeout(timeout_s):
                status, body, _ = await conn.request(raw)
        finally:
            conn.close()
        if status != 200:
            raise SystemExit(f"a warm-up request was answered {status}: {body[:300]!r}")
    outcomes: list[Outcome] = []
    counter = [0]
    start = time.perf_counter()
    await asyncio.gather(*(client(host, int(port), prepared, counter, total, start + seconds, timeout_s, outcomes)
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
            f"{server_cpu:.1f} / {client_cpu:.1f} | {per_request(server_cpu, outcomes)} / "
            f"{per_request(client_cpu, outcomes)} |")


def per_request(cpu_s: float, outcomes: list[Outcome]) -> str:
    return f"{1000 * cpu_s / len(outcomes):.2f}" if outcomes else "-"


DEFAULT_CONFIGS = ["--workers 0", "--workers 1 --max-batch 1", "--workers 2 --max-batch 1", "--max-batch 4", ""]


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
          "p50 ms | p90 ms | p99 ms | correct | CPU s server / load generator | "
          "CPU ms per request server / load generator |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n" + "\n".join(counters))
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
