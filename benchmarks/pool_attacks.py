"""The worker pool's attacks, run by attack.py (attacks 6-8) against a fresh `digitlab serve` each:

6. an explain flood: `--flood-clients` (100) clients, each on its own keep-alive connection, asking
   /api/explain?method=ig&layers=true over and over for `--flood-s` seconds, beside 2 clients predicting
   (a real test digit as JSON pixels, one request after the other, keep-alive): at least 95% of the predictions
   must be a correct 200, their p99 at most 1 s;
7. the same explanations opened and closed at `--churn-rate` (100) requests a second on fresh connections
   (`Connection: close`, none held), beside the same 2 predicting clients: the same thresholds;
8. a 1.9 MB JSON prediction with 200,000 extra keys, 4 clients x `--rounds` x 4: every answer a 422 of a few KB,
   the server's CPU per request (whole process tree), and the 2 predicting clients meanwhile.

The flooding clients run in a process of their own (asyncio, raw HTTP/1.1), so that their CPU and GIL do not
delay the predicting clients' measurements here; both share the machine with the server. Each attack also
reports the workers the server restarted (from /metrics) and how quickly it refused the explanations it did not
take (503s are the expected answer to a flood: what matters is that they come at once).
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from server_process import cpu_seconds

CLIENT_TIMEOUT_S = 30
EXPLAIN_PATH = "/api/explain?method=ig&layers=true"


@dataclass
class Tally:
    """Answers by status, and how long each took, in seconds."""

    statuses: dict[int, int] = field(default_factory=dict)
    times: dict[int, list[float]] = field(default_factory=dict)

    def add(self, status: int, took: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.times.setdefault(status, []).append(took)

    def p50_ms(self, status: int) -> float:
        times = self.times.get(status)
        return float(np.percentile(times, 50) * 1000) if times else float("nan")


#### the flooding process: raw HTTP/1.1 on asyncio


def request_bytes(path: str, body: bytes, port: int, close: bool) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
            ).encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status of one answer, read to its end, and whether the server closes the connection after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() == "close"


async def keep_asking(port: int, raw: bytes, until: float, tally: Tally) -> None:
    """One client: the same request over and over on a keep-alive connection (a new one if the server closes)."""
    writer = None
    while time.monotonic() < until:
        start = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            status, closing = await asyncio.wait_for(read_answer(reader), CLIENT_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            status, closing = 0, True
        tally.add(status, time.monotonic() - start)
        if closing and writer is not None:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def ask_once(port: int, raw: bytes, tally: Tally) -> None:
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            status, _ = await asyncio.wait_for(read_answer(reader), CLIENT_TIMEOUT_S)
        finally:
            writer.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        status = 0
    tally.add(status, time.monotonic() - start)


async def churn(port: int, raw: bytes, rate: float, until: float, tally: Tally) -> None:
    """`rate` requests a second, each on a new connection that closes after its answer (none held)."""
    tasks, interval, next_at = set(), 1.0 / rate, time.monotonic()
    while next_at < until:
        task = asyncio.create_task(ask_once(port, raw, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT_S + 5)


def flood_process(port: int, body: bytes, mode: str, clients: int, rate: float, seconds: float, results) -> None:
    """The flooding process's entry point: its tally goes back through `results` (a multiprocessing queue)."""
    tally, until = Tally(), time.monotonic() + seconds

    async def main() -> None:
        if mode == "keep-alive":
            raw = request_bytes(EXPLAIN_PATH, body, port, close=False)
            await asyncio.gather(*(keep_asking(port, raw, until, tally) for _ in range(clients)))
        else:
            await churn(port, request_bytes(EXPLAIN_PATH, body, port, close=True), rate, until, tally)

    asyncio.run(main())
    results.put((tally.statuses, tally.times))


#### the predicting clients, in threads here


class Predictors:
    """`clients` threads, each predicting one digit after the other on its own keep-alive connection."""

    def __init__(self, url: str, body: bytes, label: int, clients: int = 2):
        self.url, self.body, self.label = url, body, label
        self.tally, self.wrong = Tally(), 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as http:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    r = http.post("/api/predict", content=self.body, headers={"content-type": "application/json"})
                    status = r.status_code
                    if status == 200 and r.json()["label"] != self.label:
                        self.wrong += 1
                        status = -1  # answered, wrongly
                except httpx.HTTPError:
                    status = 0
                self.tally.add(status, time.monotonic() - start)

    def __enter__(self) -> "Predictors":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S + 5)

    def rows(self, attack: str, min_ok: float, max_p99_s: float, row_type) -> list:
        total = sum(self.tally.statuses.values())
        ok = self.tally.statuses.get(200, 0)
        every = [t for times in self.tally.times.values() for t in times]
        p50, p99 = (float(np.percentile(every, q) * 1000) if every else float("nan") for q in (50, 99))
        share = ok / total if total else 0.0
        return [row_type(f"{attack}: 2 clients predicting meanwhile", f">= {min_ok:.0%} correct 200, p99 <= "
                         f"{max_p99_s * 1000:,.0f} ms", f"{ok:,} of {total:,} correct 200 ({share:.1%}; answers "
                         f"{dict(sorted(self.tally.statuses.items()))}), p50 {p50:,.0f} ms, p99 {p99:,.0f} ms",
                         total > 0 and share >= min_ok and p99 <= max_p99_s * 1000)]


#### /metrics and the process tree


def worker_counters(url: str) -> dict[str, float]:
    """digitlab_worker_* counters and the ready workers, from /metrics (empty where the server has none)."""
    try:
        text = httpx.get(url + "/metrics", timeout=CLIENT_TIMEOUT_S).text
    except httpx.HTTPError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("digitlab_worker_", "digitlab_workers_")) and not name.endswith("_created"):
            out[name.removeprefix("digitlab_")] = float(value)
    return out


#### the attacks


def restarts_row(attack: str, before: dict, after: dict, row_type):
    restarts = after.get("worker_restarts_total", 0) - before.get("worker_restarts_total", 0)
    if "worker_restarts_total" not in after:  # a server from before these counters: its log says it
        return row_type(f"{attack}: workers restarted", "0", "(no counter in /metrics)", False)
    return row_type(f"{attack}: workers restarted", "0", f"{restarts:.0f}", restarts == 0)


def attack_explain_flood(url: str, body: bytes, label: int, mode: str, clients: int, rate: float,
                         seconds: float, number: int, row_type) -> list:
    """Attack 6 (mode "keep-alive": `clients` held connections) or 7 (mode "churn": `rate` a second, none held)."""
    port = int(url.rsplit(":", 1)[1])
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    flooder = context.Process(target=flood_process, args=(port, body, mode, clients, rate, seconds, results))
    before = worker_counters(url)
    with Predictors(url, body, label) as predictors:
        flooder.start()
        statuses, times = results.get(timeout=seconds + CLIENT_TIMEOUT_S + 60)
        flooder.join(30)
    after = worker_counters(url)
    flood = Tally(statuses, times)
    what = (f"{number}. {clients} clients asking {EXPLAIN_PATH} for {seconds:g} s" if mode == "keep-alive" else
            f"{number}. {EXPLAIN_PATH} opened and closed {rate:g} times a second for {seconds:g} s")
    refused = flood.statuses.get(503, 0)
    return [*predictors.rows(what, 0.95, 1.0, row_type),
            row_type(f"{number}. the explanations", "refused ones answered 503 within 1 s (p50)",
                     f"answers {dict(sorted(flood.statuses.items()))}; 200 p50 {flood.p50_ms(200):,.0f} ms, "
                     f"503 p50 {flood.p50_ms(503):,.0f} ms", refused == 0 or flood.p50_ms(503) < 1000),
            restarts_row(f"{number}.", before, after, row_type)]


def many_keys_body(keys: int = 200_000) -> bytes:
    """A 28x28 grid of zeros and `keys` extra keys, short ones (hex), under the 2 MiB body limit."""
    extra = ",".join(f'"{i:x}":0' for i in range(keys))
    return b'{"pixels":' + json.dumps([[0] * 28] * 28).encode() + b"," + extra.encode() + b"}"


def attack_many_keys(url: str, root: int, body: bytes, label: int, rounds: int, number: int, row_type) -> list:
    """Attack 8: the 200,000-key body, 4 clients x `rounds` x 4, beside 2 predicting clients."""
    big = many_keys_body()
    sizes: list[int] = []
    statuses: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as http:
            for _ in range(rounds * 4):
                try:
                    r = http.post("/api/predict", content=big, headers={"content-type": "application/json"})
                    statuses.append(r.status_code)
                    sizes.append(len(r.content))
                except httpx.HTTPError:
                    statuses.append(0)

    cpu = cpu_seconds(root)
    with Predictors(url, body, label) as predictors:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    cpu = cpu_seconds(root) - cpu  # the predictions' CPU too: a few ms each
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    what = f"{number}. {len(big) / 1e6:.1f} MB JSON prediction with 200,000 extra keys, 4 clients x {rounds * 4}"
    per_request = cpu / max(1, len(statuses))
    return [row_type(f"{what}: answers", "every one a 422 of at most 10 KB",
                     f"{counts}, largest {max(sizes, default=0):,} bytes",
                     counts == {422: len(statuses)} and max(sizes, default=0) <= 10_000),
            row_type(f"{number}. server CPU per such request (whole tree)", "<= 0.5 s",
                     f"{per_request:.3f} s ({cpu:.1f} CPU s for {len(statuses)} requests and the predictions "
                     f"beside them)", per_request <= 0.5),
            *predictors.rows(f"{number}.", 0.95, 1.0, row_type)]
