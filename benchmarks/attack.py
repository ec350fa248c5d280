"""A bounded attack on a real `digitlab serve`, on loopback only: does the server stay up for everyone else?

    python benchmarks/attack.py                       # shipped model, default serve options; ~1-2 min
    python benchmarks/attack.py --hold 30 -- --runtime torch --threads 2      # after --: flags for `serve`

It starts `python -m digitlab serve [RUN] --host 127.0.0.1 --port <free> [FLAGS]` in its own process group,
waits for /healthz, runs one of the attacks below, and always stops the server (the whole group: worker
processes too); each attack gets a fresh server, so that one's aftermath cannot skew the next:

1. 64 idle sockets and 64 that sent half of a request's headers, held open for --hold seconds (any the server
   closes are reopened at once, as an attacker would), while /healthz and a real prediction (JSON pixels of an
   MNIST test digit) are each sent every ~100 ms on fresh connections: each must answer 200 within 1 s.
2. 8 clients x 8 uploads of a 4096x4096 RGBA PNG (MNIST test digit 0 upscaled, optimize=True: 76 KB that
   decode to 64 MiB): the server's RSS summed over its whole process tree (from /proc), its thread and process
   counts, the CPU time the tree still uses in the second after the last reply, and /healthz p99 meanwhile.
3. 8 clients each sending, --rounds times, a PNG of 160,000 empty private chunks (1.9 MB), a JPEG of 450,000
   empty comment markers (1.8 MB) and a JSON prediction whose 300,000-byte body arrives in 1-byte chunks:
   /healthz p99 meanwhile.
4. 4 connections with a 4 KiB receive buffer, each sending GET /healthz 1,000 times per write and never reading
   an answer (reopened when the server closes them), for --pipeline-s seconds: the growth of the tree's RSS
   (at most --max-growth-mb), and a prediction and /healthz every 100 ms meanwhile, each within 1 s.
5. 8 clients x 25 requests whose 10,000 headers (80 KB, past the 64 KiB cap) arrive in one write: each 431;
   /healthz p99 meanwhile.
6-8. the worker pool's: an explain flood of 100 held connections, the same opened and closed 100 times a second,
   and a 1.9 MB JSON prediction of 200,000 extra keys, each beside 2 clients predicting (benchmarks/pool_attacks.py
   says what each measures).
/healthz is probed every 50 ms in attacks 2, 3 and 5, on a fresh connection each time. It prints one markdown
table (attack, threshold, measured, pass/fail) and exits 1 if any row fails.

The last attack starts no server of its own: two hostile .onnx files (990 constant MatMuls, a Tile to 2.4 GB)
given to `predict --onnx` and `serve`, each of which must refuse them in one line, within seconds and without
the gigabytes (benchmarks/onnx_attacks.py; --no-onnx-files skips it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from digitlab.data import load_dataset

from pool_attacks import attack_explain_flood, attack_many_keys
from onnx_attacks import attack_hostile_onnx
from server_process import TICK, proc_stat, process_tree, start_serve

CLIENT_TIMEOUT_S = 30
HALF_HEADERS = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "


#### The server and its process tree


def start_server(run: str | None, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    return start_serve([*([run] if run else []), *flags], log, stop_server, new_session=True)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers included), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            if not process_tree(process.pid):
                return
        except subprocess.TimeoutExpired:
            pass


@dataclass
class TreeSample:
    rss_mb: float
    threads: int
    processes: int
    cpu_s: float


def sample_tree(root: int) -> TreeSample:
    rss_kb = threads = 0
    cpu = 0.0
    pids = process_tree(root)
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = proc_stat(pid)
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss_kb += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
        cpu += (int(stat[11]) + int(stat[12])) / TICK
    return TreeSample(rss_kb / 1024, threads, len(pids), cpu)


class TreeWatcher:
    """Samples the server's process tree every 100 ms in a thread; keeps the peaks."""

    def __init__(self, root: int):
        self.root, self.samples = root, [sample_tree(root)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append(sample_tree(self.root))

    def __enter__(self) -> "TreeWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


#### Probes


@dataclass
class Probe:
    """Sends one request every `interval_s` on a fresh connection in a thread; records latency and status."""

    url: str
    interval_s: float
    method: str = "GET"
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    check: object = None  # callable(response) -> bool, for predictions
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection for every probe
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    r = http.request(self.method, self.url, content=self.body, headers=self.headers)
                    ok = r.status_code == 200 and (self.check is None or self.check(r))
                    if not ok:
                        self.failures.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as e:
                    self.failures.append(type(e).__name__)
                took = time.perf_counter() - start
                self.latencies.append(took)
                self.stop.wait(max(0.0, self.interval_s - took))

    def __enter__(self) -> "Probe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(CLIENT_TIMEOUT_S + 5)

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99) * 1000) if self.latencies else float("nan")

    def max_ms(self) -> float:
        return max(self.latencies, default=float("nan")) * 1000


#### The attack files


def digit(ds, label: int) -> np.ndarray:
    return ds.test_images[int((ds.test_labels == label).nonzero()[0][0])].numpy()


def png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def huge_png(ds) -> bytes:
    """MNIST test digit 0 upscaled to 4096x4096 RGBA: ~76 KB that decode to 64 MiB of pixels."""
    return png(Image.fromarray(digit(ds, 0)).resize((4096, 4096), Image.NEAREST).convert("RGBA"), optimize=True)


def many_chunk_png(ds, chunks: int = 160_000) -> bytes:
    """A digit's PNG with `chunks` empty private ancillary chunks before its pixels (12 bytes each)."""
    data = png(Image.fromarray(digit(ds, 7)))
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return data[:ihdr_end] + empty * chunks + data[ihdr_end:]


def many_marker_jpeg(ds, markers: int = 450_000) -> bytes:
    """A digit's JPEG with `markers` empty comment (COM) segments after its start marker (4 bytes each)."""
    out = io.BytesIO()
    Image.fromarray(digit(ds, 7)).save(out, format="JPEG", quality=95)
    data = out.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * markers + data[2:]


def one_byte_chunked(pixels: list, size: int = 300_000) -> bytes:
    """A raw HTTP request: JSON pixels padded to `size` bytes, sent as `size` chunks of one byte."""
    body = json.dumps({"pixels": pixels}).encode()
    body = body[:-1] + b" " * (size - len(body)) + b"}"
    framed = b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    return (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framed)


def send_raw(url: str, request: bytes, piece: int = 65536) -> int:
    """Send a raw request on a new connection, `piece` bytes per write; the answer's status (0 if none)."""
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as s:
            try:
                for i in range(0, len(request), piece):
                    if select.select([s], [], [], 0)[0]:  # answered (or hung up) before the end: stop sending
                        break
                    s.sendall(request[i:i + piece])
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = s.recv(64)
            try:
                while s.recv(65536):  # read to the end so the server is not left writing
                    pass
            except ConnectionResetError:  # it hung up on the unsent rest of the request: the answer is in
                pass
    except OSError:
        return 0
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def upload(http: httpx.Client, url: str, name: str, data: bytes, kind: str) -> int:
    try:
        return http.post(url + "/api/predict", files={"file": (name, data, kind)}).status_code
    except httpx.HTTPError:
        return 0


#### Pipelined requests that are never read, and headers sent in one read


PIPELINED_GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class Flood:
    """What flood_pipelined did: bytes the server accepted, connections opened, and those the server closed."""

    sent: int = 0
    opened: int = 0
    closed: int = 0


def flood_pipelined(port: int, stop: threading.Event, sockets: int = 4, per_write: int = 1000,
                    rcvbuf: int = 4096) -> Flood:
    """`sockets` connections with a `rcvbuf`-byte receive buffer, each writing `per_write` pipelined
    GET /healthz per send and never reading an answer, until `stop` is set; a connection the server closes
    is reopened at once, as an attacker would. Run it in a thread."""
    batch = PIPELINED_GET * per_write
    selector = selectors.DefaultSelector()
    flood = Flood()

    def open_one() -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: the window is set then
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        selector.register(s, selectors.EVENT_WRITE, [0])  # data: where in `batch` the next send starts
        flood.opened += 1

    for _ in range(sockets):
        open_one()
    try:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                offset = key.data
                try:
                    sent = key.fileobj.send(batch[offset[0]:])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset or closed by the server
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    flood.closed += 1
                    open_one()
                    continue
                flood.sent += sent
                offset[0] = (offset[0] + sent) % len(batch)
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return flood


#### The attacks


@dataclass
class Row:
    attack: str
    threshold: str
    measured: str
    ok: bool


def hold_bad_sockets(url: str, seconds: float) -> tuple[int, int]:
    """64 idle and 64 half-header connections kept open for `seconds`: any the server closes is reopened.
    Returns (connections opened, closed by the server)."""
    port = int(url.rsplit(":", 1)[1])
    selector = selectors.DefaultSelector()
    opened = closed = 0

    def open_one(half: bool) -> None:
        nonlocal opened
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if half:
            s.sendall(HALF_HEADERS)
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ, half)
        opened += 1

    for i in range(128):
        open_one(half=i >= 64)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/"):  # closed, or answered (408) and about to be
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    closed += 1
                    open_one(key.data)
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return opened, closed


def attack_sockets(url: str, hold_s: float, pixels: list, label: int) -> list[Row]:
    body = json.dumps({"pixels": pixels}).encode()
    health = Probe(url + "/healthz", 0.1)
    predict = Probe(url + "/api/predict", 0.1, "POST", body, {"content-type": "application/json"},
                    check=lambda r: r.json()["label"] == label)
    with health, predict:
        opened, closed = hold_bad_sockets(url, hold_s)
    note = f"{opened} bad connections opened over {hold_s:g} s, {closed} closed by the server"
    rows = []
    for name, probe in (("/healthz", health), ("prediction", predict)):
        ok = not probe.failures and probe.max_ms() < 1000 and len(probe.latencies) > 0
        failed = f", failures: {probe.failures[:3]}" if probe.failures else ""
        rows.append(Row(f"1. 64 idle + 64 half-header sockets: {name}", "every answer 200 within 1 s",
                        f"{len(probe.latencies)} answers, max {probe.max_ms():.0f} ms, p99 {probe.p99_ms():.0f} ms"
                        f"{failed} ({note})", ok))
    return rows


def attack_large_png(url: str, root: int, data: bytes, max_rss_mb: float, max_threads: int,
                     max_processes: int) -> list[Row]:
    statuses: list[int] = []

    def client(_: int) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            for _ in range(8):
                statuses.append(upload(http, url, "digit0.png", data, "image/png"))

    before = sample_tree(root)
    with TreeWatcher(root) as watcher, Probe(url + "/healthz", 0.05) as health:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        cpu_at_reply = sample_tree(root).cpu_s
        time.sleep(1.0)  # the measurement window itself: what the tree computes in the second after
        cpu_after = sample_tree(root).cpu_s - cpu_at_reply
    peak_rss = max(s.rss_mb for s in watcher.samples)
    peak_threads = max(s.threads for s in watcher.samples)
    peak_processes = max(s.processes for s in watcher.samples)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    label = f"2. 8 clients x 8 uploads of a 4096x4096 PNG ({len(data) / 1000:.0f} KB; answers {counts})"
    return [
        Row(f"{label}: server RSS, whole tree", f"< {max_rss_mb:,.0f} MB",
            f"peak {peak_rss:,.0f} MB (before {before.rss_mb:,.0f} MB)", peak_rss < max_rss_mb),
        Row("2. threads, whole tree", f"<= {max_threads}", f"peak {peak_threads} (before {before.threads})",
            peak_threads <= max_threads),
        Row("2. processes, whole tree", f"<= {max_processes}", f"peak {peak_processes} (before {before.processes})",
            peak_processes <= max_processes),
        Row("2. CPU used in the second after the last reply", "< 0.1 CPU s", f"{cpu_after:.2f} CPU s",
            cpu_after < 0.1),
        Row("2. /healthz during the uploads", "p99 < 100 ms, all 200",
            f"p99 {health.p99_ms():.0f} ms, max {health.max_ms():.0f} ms, {len(health.latencies)} probes"
            + (f", failures {health.failures[:3]}" if health.failures else ""),
            health.p99_ms() < 100 and not health.failures),
    ]


def attack_slow_parses(url: str, files: dict[str, bytes], chunked: bytes, rounds: int,
                       kinds: list[str]) -> list[Row]:
    statuses: dict[str, list[int]] = {kind: [] for kind in kinds}
    senders = {"png": lambda http: upload(http, url, "chunks.png", files["png"], "image/png"),
               "jpeg": lambda http: upload(http, url, "markers.jpg", files["jpeg"], "image/jpeg"),
               "chunked": lambda http: send_raw(url, chunked)}

    def client(_: int) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            for _ in range(rounds):
                for kind in kinds:
                    statuses[kind].append(senders[kind](http))

    with Probe(url + "/healthz", 0.05) as health:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
    answers = {k: {s: v.count(s) for s in sorted(set(v))} for k, v in statuses.items()}
    names = {"png": f"160k-chunk PNG {len(files['png']) / 1e6:.1f} MB",
             "jpeg": f"450k-marker JPEG {len(files['jpeg']) / 1e6:.1f} MB", "chunked": "300k 1-byte chunks"}
    return [Row(f"3. 8 clients x {rounds} x ({', '.join(names[k] for k in kinds)}; answers {answers}): /healthz",
                "p99 < 100 ms, all 200",
                f"p99 {health.p99_ms():.0f} ms, max {health.max_ms():.0f} ms, {len(health.latencies)} probes"
                + (f", failures {health.failures[:3]}" if health.failures else ""),
                health.p99_ms() < 100 and not health.failures)]


def attack_pipelining(url: str, root: int, seconds: float, pixels: list, label: int,
                      max_growth_mb: float) -> list[Row]:
    """flood_pipelined for `seconds` (4 connections, a 4 KiB receive buffer, 1,000 GET /healthz per send, never
    read), while a prediction and /healthz are each sent every 100 ms on fresh connections: the growth of the
    tree's RSS during the attack and once the attackers have gone, and the probes' latency."""
    body = json.dumps({"pixels": pixels}).encode()
    health = Probe(url + "/healthz", 0.1)
    predict = Probe(url + "/api/predict", 0.1, "POST", body, {"content-type": "application/json"},
                    check=lambda r: r.json()["label"] == label)
    stop, floods = threading.Event(), []
    flooder = threading.Thread(target=lambda: floods.append(flood_pipelined(int(url.rsplit(":", 1)[1]), stop)))
    before = sample_tree(root)
    with TreeWatcher(root) as watcher, health, predict:
        flooder.start()
        stop.wait(seconds)  # the attack's duration
        stop.set()
        flooder.join(CLIENT_TIMEOUT_S)
    after = sample_tree(root)
    flood = floods[0] if floods else Flood()
    growth = max(s.rss_mb for s in watcher.samples) - before.rss_mb
    note = (f"{flood.sent / 1e6:,.0f} MB sent on {flood.opened} connections, {flood.closed} closed by the server "
            f"over {seconds:g} s")
    rows = [Row(f"4. 4 sockets x 1,000 pipelined GET /healthz per send, never read ({note}): RSS growth, whole tree",
                f"<= {max_growth_mb:,.0f} MB", f"{growth:,.0f} MB (before {before.rss_mb:,.0f} MB, after the "
                f"attackers left {after.rss_mb:,.0f} MB)", growth <= max_growth_mb)]
    for name, probe in (("/healthz", health), ("prediction", predict)):
        ok = not probe.failures and probe.max_ms() < 1000 and len(probe.latencies) > 0
        failed = f", failures: {probe.failures[:3]}" if probe.failures else ""
        rows.append(Row(f"4. {name} during it", "every answer 200 within 1 s",
                        f"{len(probe.latencies)} answers, max {probe.max_ms():.0f} ms, p99 {probe.p99_ms():.0f} ms"
                        f"{failed}", ok))
    return rows


def attack_headers_in_one_read(url: str, headers: int = 10_000, clients: int = 8, rounds: int = 25) -> list[Row]:
    """`clients` x `rounds` requests of `headers` small headers (8 bytes each: 80 KB, past the 64 KiB cap) sent in
    one write, so the headers end within one read: each must be 431; /healthz p99 meanwhile."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-H: v\r\n" * headers + b"\r\n"
    statuses: list[int] = []

    def client(_: int) -> None:
        for _ in range(rounds):
            statuses.append(send_raw(url, request, piece=len(request)))

    with Probe(url + "/healthz", 0.05) as health:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return [Row(f"5. {clients} clients x {rounds} requests of {headers:,} headers ({len(request) / 1000:.0f} KB) "
                "in one write", "every answer 431", str(counts), counts == {431: clients * rounds}),
            Row("5. /healthz during them", "p99 < 100 ms, all 200",
                f"p99 {health.p99_ms():.0f} ms, max {health.max_ms():.0f} ms, {len(health.latencies)} probes"
                + (f", failures {health.failures[:3]}" if health.failures else ""),
                health.p99_ms() < 100 and not health.failures)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder or .safetensors to serve; none: the shipped model")
    parser.add_argument("--hold", type=float, default=15, help="seconds attack 1 holds its sockets (1..300)")
    parser.add_argument("--rounds", type=int, default=2, help="files each client of attack 3 sends, of each kind")
    parser.add_argument("--max-rss-mb", type=float, default=1536, help="attack 2's bound on the tree's RSS")
    parser.add_argument("--max-threads", type=int, default=64, help="attack 2's bound on the tree's threads")
    parser.add_argument("--max-processes", type=int, default=8, help="attack 2's bound on the tree's processes")
    parser.add_argument("--slow-kinds", nargs="+", choices=["png", "jpeg", "chunked"],
                        default=["png", "jpeg", "chunked"], help="what attack 3's clients send")
    parser.add_argument("--pipeline-s", type=float, default=12, help="seconds attack 4 floods (1..300)")
    parser.add_argument("--max-growth-mb", type=float, default=300, help="attack 4's bound on the tree's RSS growth")
    parser.add_argument("--flood-s", type=float, default=30, help="seconds attacks 6 and 7 flood (1..300)")
    parser.add_argument("--flood-clients", type=int, default=100, help="attack 6's explaining clients")
    parser.add_argument("--churn-rate", type=float, default=100, help="attack 7's explanations a second")
    parser.add_argument("--only", type=int, nargs="+", choices=[1, 2, 3, 4, 5, 6, 7, 8],
                        default=[1, 2, 3, 4, 5, 6, 7, 8], help="attacks to run (6-8: benchmarks/pool_attacks.py)")
    parser.add_argument("--onnx-files", action=argparse.BooleanOptionalAction, default=True,
                        help="also give two hostile .onnx files to `predict --onnx` and `serve` (onnx_attacks.py)")
    args, flags = parser.parse_known_args()
    flags = [f for f in flags if f != "--"]
    if not 1 <= args.hold <= 300 or not 1 <= args.rounds <= 10 or not 1 <= args.pipeline_s <= 300:
        parser.error("--hold and --pipeline-s must be in 1..300 seconds and --rounds in 1..10")

    ds = load_dataset("mnist", progress=False)
    seven = digit(ds, 7)
    seven_json = json.dumps({"pixels": seven.tolist()}).encode()
    files = {"png": many_chunk_png(ds), "jpeg": many_marker_jpeg(ds)}
    big, chunked = huge_png(ds), one_byte_chunked(seven.tolist())
    print(f"machine: {os.cpu_count()} logical CPUs, shared by the server and this script; load average (1 min) "
          f"before: {os.getloadavg()[0]:.2f}")
    print(f"server: digitlab serve {args.run or '(shipped model)'} {' '.join(flags) or '(default options)'}\n")
    attacks = {1: lambda url, pid: attack_sockets(url, args.hold, seven.tolist(), 7),
               2: lambda url, pid: attack_large_png(url, pid, big, args.max_rss_mb, args.max_threads,
                                                    args.max_processes),
               3: lambda url, pid: attack_slow_parses(url, files, chunked, args.rounds, args.slow_kinds),
               4: lambda url, pid: attack_pipelining(url, pid, args.pipeline_s, seven.tolist(), 7,
                                                     args.max_growth_mb),
               5: lambda url, pid: attack_headers_in_one_read(url),
               6: lambda url, pid: attack_explain_flood(url, seven_json, 7, "keep-alive", args.flood_clients,
                                                        args.churn_rate, args.flood_s, 6, Row),
               7: lambda url, pid: attack_explain_flood(url, seven_json, 7, "churn", args.flood_clients,
                                                        args.churn_rate, args.flood_s, 7, Row),
               8: lambda url, pid: attack_many_keys(url, pid, seven_json, 7, args.rounds, 8, Row)}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.only):  # a fresh server for each, so that one attack's aftermath cannot skew the next
            log = Path(tmp) / f"serve-{n}.log"
            process, url = start_server(args.run, flags, log)
            try:
                rows += attacks[n](url, process.pid)
                alive = process.poll() is None
                rows.append(Row(f"{n}. server still running after it", "yes", "yes" if alive else "no", alive))
            finally:
                stop_server(process)
            tracebacks = log.read_text(errors="replace").count("Traceback")
            rows.append(Row(f"{n}. tracebacks in the server's log", "0", str(tracebacks), tracebacks == 0))
    if args.onnx_files:  # after the servers: these commands must refuse the files before they would listen
        rows += attack_hostile_onnx(len(attacks) + 1, Row)
    print("| attack | threshold | measured | pass |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row.attack} | {row.threshold} | {row.measured} | {'pass' if row.ok else '**FAIL**'} |")
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
