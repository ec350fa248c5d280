"""Which HTTP parser and event loop `digitlab serve` runs on, by measurement: h11 or httptools, asyncio or uvloop.

    python benchmarks/http_stack.py                 # shipped model, ~1 min on 2 cores

For each stack it starts uvicorn on a free 127.0.0.1 port in a subprocess (this script with --serve) around
the same app `digitlab serve` runs (shipped model, ONNX Runtime), then measures, always stopping the server:
- chunked: one JSON prediction whose 300,000-byte body arrives as 300,000 chunks of 1 byte (Transfer-Encoding:
  chunked, 1.8 MB on the wire): time to its answer, and the slowest /healthz seen meanwhile (probed every 20 ms);
- 4 chunked: four such requests at once, and the slowest /healthz meanwhile; how many of the 5 chunked
  requests were not answered 200 (408: the body took longer than the app's 10 s to arrive through the parser);
- healthz/s and predict/s: 2,000 GET /healthz, then 1,000 JSON predictions, from 8 keep-alive connections.
It prints one markdown row per stack. The load generator shares the machine's CPUs with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
STACKS = [("h11", "asyncio"), ("httptools", "asyncio"), ("httptools", "uvloop"), ("guarded", "asyncio"),
          ("guarded", "uvloop")]
CHUNKS = 300_000


def serve(http: str, loop: str, port: int) -> None:
    """The app of `digitlab serve` under uvicorn with this parser and loop ("guarded": serve/http_connection.py's)."""
    import uvicorn

    from digitlab.predict import Predictor
    from digitlab.serve import create_app
    from digitlab.serve.http_connection import bounded_http_protocol
    from digitlab.serve.settings import ConnectionLimits

    app = create_app(Predictor.from_run(runtime="onnx"))
    protocol = bounded_http_protocol(ConnectionLimits()) if http == "guarded" else http
    uvicorn.run(app, host="127.0.0.1", port=port, http=protocol, loop=loop, log_level="warning",
                limit_concurrency=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(http: str, loop: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", http, loop, str(port)], cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the {http}/{loop} server did not start")


def chunked_body(pixels: list) -> bytes:
    """A valid JSON body padded with spaces to CHUNKS bytes, framed as CHUNKS one-byte chunks."""
    body = json.dumps({"pixels": pixels}).encode()
    body = body[:-1] + b" " * (CHUNKS - len(body)) + b"}"
    return b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"


def send_chunked(port: int, framed: bytes, statuses: list[int]) -> float:
    """Send the chunked prediction, note its status (a slow parser can make the body miss the app's 10 s)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framed)
        except (BrokenPipeError, ConnectionResetError):  # refused (413) before the whole body was sent
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:  # refused before the end of the body: the server hung up on the rest
            pass
    statuses.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0)
    return time.perf_counter() - start


def worst_health_during(port: int, attack) -> tuple[float, float]:
    """Run attack() (returns seconds) while probing /healthz every 20 ms; (attack s, slowest probe s)."""
    done, ready, worst = threading.Event(), threading.Event(), [0.0]

    def probe() -> None:
        with httpx.Client(timeout=30) as http:
            http.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()  # connected before the attack
            ready.set()
            while True:  # at least one probe during the attack, however short it is
                start = time.perf_counter()
                http.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()
                worst[0] = max(worst[0], time.perf_counter() - start)
                if done.wait(0.02):
                    return

    prober = threading.Thread(target=probe)
    prober.start()
    ready.wait(30)
    try:
        took = attack()
    finally:
        done.set()
        prober.join(60)
    return took, worst[0]


async def rate(port: int, count: int, method: str, path: str, body: bytes | None) -> float:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as http:
        left = [count]

        async def client() -> None:
            while left[0] > 0:
                left[0] -= 1
                r = await http.request(method, path, content=body, headers={"content-type": "application/json"})
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(8)))
        return count / (time.perf_counter() - start)


def measure(http: str, loop: str, pixels: list, framed: bytes) -> str:
    process, port = start(http, loop)
    statuses: list[int] = []
    try:
        one, worst1 = worst_health_during(port, lambda: send_chunked(port, framed, statuses))

        def four() -> float:
            threads = [threading.Thread(target=send_chunked, args=(port, framed, statuses)) for _ in range(4)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return time.perf_counter() - start

        all4, worst4 = worst_health_during(port, four)
        health = asyncio.run(rate(port, 2000, "GET", "/healthz", None))
        predict = asyncio.run(rate(port, 1000, "POST", "/api/predict", json.dumps({"pixels": pixels}).encode()))
    finally:
        process.terminate()
        process.wait(15)
    late = sum(status != 200 for status in statuses)
    return (f"| {http} | {loop} | {one:.2f} | {worst1 * 1000:.0f} | {all4:.2f} | {worst4 * 1000:.0f} | "
            f"{late} of 5 | {health:.0f} | {predict:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=3, metavar=("HTTP", "LOOP", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1], int(args.serve[2]))
    from digitlab.data import load_dataset

    pixels = load_dataset("mnist", progress=False).test_images[0].tolist()
    framed = chunked_body(pixels)
    print(f"{os.cpu_count()} logical CPUs; load average (1 min) before: {os.getloadavg()[0]:.2f}\n")
    print("| parser | loop | 1 chunked s | worst /healthz ms | 4 chunked s | worst /healthz ms | chunked not 200 | "
          "healthz/s | predict/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for http, loop in STACKS:
        try:
            __import__(loop)
        except ImportError:
            print(f"| {http} | {loop} | not installed (pip install {loop}) | | | | | | |")
            continue
        print(measure(http, loop, pixels, framed), flush=True)
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
