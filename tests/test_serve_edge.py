"""The connection layer and HTTP hygiene of `digitlab serve`: idle and half-sent connections, the
header deadline and caps, HEAD probes, page headers, Host checks, cross-origin refusals, CORS, /metrics.

Findings that live in the server's configuration run against a real `python -m digitlab serve` (shipped model)
or a real uvicorn in a thread (serve.server.make_server), on 127.0.0.1; the rest use the in-process TestClient.
Every loop is bounded in count and time, and every server is stopped.
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from digitlab.predict import Predictor
from digitlab.serve import ServeSettings, create_app
from helpers import REPO, free_port, run_cli, server_in_thread

sys.path.insert(0, str(REPO / "benchmarks"))
import attack  # noqa: E402  (benchmarks/attack.py: the attacks this module replays, one definition of each)

TIMEOUT_S = 20
START_TIMEOUT_S = 180  # loading the model in two workers takes seconds, a minute on a busy machine
HEADER_TIMEOUT_S = 5.0  # ConnectionLimits' default, the one `digitlab serve` uses
PREDICT = "/api/predict"
PIPELINE_ATTACK_S = 15  # how long the pipelining attack runs
MAX_GROWTH_MB = 300  # what the serving process may grow by under it
HALF_HEADERS = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.from_run(runtime="onnx")


@pytest.fixture(scope="module")
def client(shipped) -> Iterator[TestClient]:
    with TestClient(create_app(shipped)) as c:
        yield c


@pytest.fixture(scope="module")
def zero_pixels() -> dict:
    """A real MNIST test digit as JSON pixels (a 7), for predictions that must succeed."""
    from digitlab.data import load_dataset

    return {"pixels": load_dataset("mnist", progress=False).test_images[0].tolist()}


def start_serve(log: Path) -> tuple[str, subprocess.Popen]:
    """`python -m digitlab serve` (shipped model, default options) on a free port, its output in `log`; returns its
    URL and process once /healthz answers (within START_TIMEOUT_S)."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise AssertionError(f"no /healthz within {START_TIMEOUT_S} s:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return url, process
        except OSError:
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server lingers past 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """start_serve's server, shared by the module; yields its URL and process."""
    log = tmp_path_factory.mktemp("edge") / "serve.log"
    url, process = start_serve(log)
    try:
        yield url, process
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        stop(process)


@pytest.fixture(scope="module")
def serve(serve_process) -> str:
    """The URL of serve_process."""
    return serve_process[0]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def rss_mb(pid: int) -> float:
    """The resident memory of one process, from /proc (the serving process: HTTP lives there, not in workers)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_for_eof(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends on `sock` until it closes it; fails if it is still open after `timeout_s`."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for {timeout_s} s")


def raw(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """One raw request on its own connection, read until the server closes it: (status, headers, body). The
    request goes in 64 KiB pieces, and no more is sent once the server has answered (or hung up)."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=TIMEOUT_S) as s:
        try:
            for i in range(0, len(request), 65536):
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(request[i:i + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = wait_for_eof(s, TIMEOUT_S)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition, 0 if absent (parsing it all checks the format)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ---- idle and half-sent connections (real server)


def test_idle_and_half_header_sockets_neither_block_requests_nor_stay_open(serve, zero_pixels):
    """64 silent connections and 64 that stopped inside their headers: before, uvicorn's limit_concurrency=64
    counted them and every other request got 503 for as long as they stayed open. Now requests pass, and the
    header deadline closes all 128 (the half-sent ones with a 408)."""
    idle = [socket.create_connection(("127.0.0.1", port_of(serve)), timeout=TIMEOUT_S) for _ in range(64)]
    half = [socket.create_connection(("127.0.0.1", port_of(serve)), timeout=TIMEOUT_S) for _ in range(64)]
    opened = time.monotonic()
    try:
        for s in half:
            s.sendall(HALF_HEADERS)
        with httpx.Client(base_url=serve, timeout=TIMEOUT_S) as http:
            for _ in range(3):
                assert http.get("/healthz").status_code == 200
                r = http.post(PREDICT, json=zero_pixels)
                assert r.status_code == 200 and r.json()["label"] == 7, r.text
        answers = [wait_for_eof(s, HEADER_TIMEOUT_S + 10) for s in half + idle]
        closed_after = time.monotonic() - opened
    finally:
        for s in idle + half:
            s.close()
    assert all(a == b"" for a in answers[64:]), "a silent connection was sent something"
    for answer in answers[:64]:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert "headers took longer" in json.loads(answer.partition(b"\r\n\r\n")[2])["detail"]
    assert closed_after >= HEADER_TIMEOUT_S - 0.5, f"closed after {closed_after:.1f} s, before the deadline"
    with httpx.Client(base_url=serve, timeout=TIMEOUT_S) as http:
        text = http.get("/metrics").text
    assert metric(text, "digitlab_rejections_total", reason="header_timeout") >= 128


def test_headers_larger_than_the_cap_are_refused(serve):
    """httptools has no limit of its own on the size of a request's headers."""
    with socket.create_connection(("127.0.0.1", port_of(serve)), timeout=TIMEOUT_S) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.sendall((b"X-Pad: " + b"a" * 4089 + b"\r\n") * 20)  # 80 KiB of unfinished headers; the cap is 64 KiB
        answer = wait_for_eof(s, TIMEOUT_S)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_headers_larger_than_the_cap_in_one_read_are_refused(serve):
    """80 headers of 1 KiB (80 KiB) sent at once, ending the request: the cap held only across reads (the bytes
    of headers still incomplete after a read), so headers completed within the read that passed it got through."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-H: " + b"v" * 1017 + b"\r\n") * 80 + b"\r\n"
    status, _, body = raw(serve, request)
    assert status == 431 and "65,536 bytes" in json.loads(body)["detail"], (status, body[:200])


def test_more_header_fields_than_the_cap_are_refused(serve):
    """10,000 headers of 8 bytes (80 KB) in one write: each header costs the event loop a parser callback, so the
    count is capped at 100 (Apache's default), well before the size cap would stop them."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-H: v\r\n" * 10_000 + b"\r\n"
    status, _, body = raw(serve, request)
    assert status == 431 and "more than 100 header fields" in json.loads(body)["detail"], (status, body[:200])


def test_one_byte_chunked_bodies_do_not_block_healthz(serve, zero_pixels):
    """Four predictions whose 300,000-byte bodies arrive as 300,000 chunks of 1 byte each: with uvicorn on h11
    (pure Python) each cost ~2 s of event-loop time, and /healthz waited seconds behind them. Now the parser is
    httptools, and a body is refused (413) at its 1,025th chunk, before the rest is parsed."""
    body = json.dumps(zero_pixels).encode()
    body = body[:-1] + b" " * (300_000 - len(body)) + b"}"
    framed = b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    answers: list[tuple[int, bytes]] = []

    def attack() -> None:
        status, _, body = raw(serve, head + framed)
        answers.append((status, body))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    worst = 0.0
    with httpx.Client(base_url=serve, timeout=TIMEOUT_S) as http:
        http.get("/healthz")  # the probe's connection is open before the attack starts
        for t in attackers:
            t.start()
        deadline = time.monotonic() + 60
        while any(t.is_alive() for t in attackers) and time.monotonic() < deadline:
            start = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            worst = max(worst, time.perf_counter() - start)
    for t in attackers:
        t.join(TIMEOUT_S)
    assert [status for status, _ in answers] == [413] * 4, answers
    assert all("1,024 chunks" in json.loads(body)["detail"] for _, body in answers)
    assert worst < 1.0, f"/healthz took {worst:.2f} s while the chunked bodies arrived"


def test_a_body_that_stops_arriving_is_408_after_the_read_timeout(serve):
    """Past its headers a request is the app's: Limits.read_timeout_s (10 s) bounds its body under httptools too,
    and the connection is closed after the answer."""
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"pixels\": ")
    started = time.monotonic()
    status, _, body = raw(serve, head)
    took = time.monotonic() - started
    assert status == 408 and "body took longer" in json.loads(body)["detail"], (status, body)
    assert 9 < took < 13, f"answered and closed after {took:.1f} s; the read timeout is 10 s"


def test_pipelined_requests_that_are_never_read_do_not_grow_the_server(serve_process, zero_pixels):
    """4 connections with a 4 KiB receive buffer, each sending GET /healthz a thousand times per write and never
    reading an answer (benchmarks/attack.py's flood_pipelined): uvicorn queued every request it parsed and read on
    after each answer, and the server grew by 1.4 GB in 12 s. Now a connection is not read while requests wait on
    it or its unsent answers fill the write buffer, and one that sends more than the pipelining cap at once is
    closed: over PIPELINE_ATTACK_S the server grows by at most MAX_GROWTH_MB, and a prediction sent every 0.1 s
    meanwhile is answered within 1 s."""
    url, process = serve_process
    stop, floods = threading.Event(), []
    flooder = threading.Thread(target=lambda: floods.append(attack.flood_pipelined(port_of(url), stop)))
    before = peak = rss_mb(process.pid)
    worst = 0.0
    flooder.start()
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
            deadline = time.monotonic() + PIPELINE_ATTACK_S
            while time.monotonic() < deadline and peak - before <= MAX_GROWTH_MB:  # stop at once on a failure
                start = time.perf_counter()
                r = http.post(PREDICT, json=zero_pixels)
                worst = max(worst, time.perf_counter() - start)
                assert r.status_code == 200 and r.json()["label"] == 7, r.text
                peak = max(peak, rss_mb(process.pid))
                stop.wait(0.1)  # the pace of a user's predictions, not a wait for an event
    finally:
        stop.set()
        flooder.join(TIMEOUT_S)
    assert floods and floods[0].sent > 1_000_000, f"the attack sent too little to mean anything: {floods}"
    assert peak - before <= MAX_GROWTH_MB, f"the server grew from {before:,.0f} to {peak:,.0f} MB ({floods[0]})"
    assert worst < 1.0, f"a prediction took {worst:.2f} s during the attack"


# ---- stopping (a server of each test's own)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigterm_stops_the_server_as_ctrl_c_does(tmp_path, sig, zero_pixels):
    """uvicorn handles both signals while it runs, then raises the one it got again once it has shut down:
    SIGINT's default handler made that a KeyboardInterrupt, which `digitlab serve` takes as a normal stop (pool
    closed, a summary printed, exit 0); SIGTERM's killed the process on the spot, summary and clean-up skipped."""
    log = tmp_path / "serve.log"
    url, process = start_serve(log)
    try:
        assert httpx.post(url + PREDICT, json=zero_pixels, timeout=TIMEOUT_S).status_code == 200
        process.send_signal(sig)
        code = process.wait(timeout=30)
    finally:
        stop(process)
    output = log.read_text()
    assert code == 0, f"exit {code}:\n{output[-2000:]}"
    assert "digitlab: served 1 requests in 1 model calls" in output and "Traceback" not in output, output[-2000:]


# ---- the cap on open connections (a real uvicorn in a thread, configured as `digitlab serve` configures it)


@pytest.fixture()
def small_server(shipped) -> Iterator[tuple[str, object]]:
    """make_server with 8 connections at most and a long header deadline, so only the cap closes anything."""
    from digitlab.serve.server import make_server
    from digitlab.serve.settings import ConnectionLimits, ServeSettings

    port = free_port()
    connections = ConnectionLimits(max_connections=8, header_timeout_s=60, keep_alive_s=60)
    server = make_server(shipped, ServeSettings(connections=connections), port=port, log_level="warning")
    with server_in_thread(server):
        yield f"http://127.0.0.1:{port}", server


def test_open_connections_are_capped_by_closing_the_longest_idle(small_server):
    """21 idle connections against a cap of 8: each one past the cap closes the connection idle the longest (in
    the order they connected: `first`, then the others), and a new request is still answered (closing one more)."""
    url, server = small_server
    port = port_of(url)
    first = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    others: list[socket.socket] = []
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
            assert http.get("/healthz").status_code == 200  # the server has accepted `first` by now
        others = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in range(20)]
        for s in [first, *others[:12]]:
            assert wait_for_eof(s, TIMEOUT_S) == b"", "an idle connection past the cap was not closed"
        deadline = time.monotonic() + TIMEOUT_S
        while len(server.server_state.connections) > 8:
            assert time.monotonic() < deadline, f"{len(server.server_state.connections)} connections stay open"
            time.sleep(0.01)
        assert httpx.get(url + "/healthz", timeout=TIMEOUT_S).status_code == 200  # closes one more idle socket
        text = httpx.get(url + "/metrics", timeout=TIMEOUT_S).text
        assert metric(text, "digitlab_rejections_total", reason="connection_cap") == 14
    finally:
        for s in [first, *others]:
            s.close()


# ---- HEAD, page headers (in process)


@pytest.mark.quick
def test_head_probes(client):
    for path in ("/", "/healthz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
        assert int(r.headers["content-length"]) > 0  # the length GET would send
    assert client.head("/healthz").headers["content-type"] == "application/json"


@pytest.mark.quick
def test_every_html_answer_carries_the_page_headers(client):
    for path in ("/", "/static/index.html", "/docs"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "default-src 'self'" in r.headers.get("content-security-policy", ""), path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers.get("x-content-type-options") == "nosniff", path
    assert "content-security-policy" not in client.get("/healthz").headers  # JSON needs none


# ---- Host header (real server: its defaults come from --host)


def test_wrong_host_is_400_and_the_server_own_names_pass(serve):
    port = port_of(serve)
    for host in (b"evil.example", b"evil.example:%d" % port, b"127.0.0.2", b""):
        status, headers, body = raw(serve, b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert status == 400 and headers["content-type"] == "application/json", (host, status)
        assert "--allowed-host" in json.loads(body)["detail"]
    for host in (b"127.0.0.1:%d" % port, b"localhost:%d" % port, b"LOCALHOST", b"[::1]:%d" % port):
        status, _, _ = raw(serve, b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status == 200, host


@pytest.mark.quick
def test_allowed_hosts_option(shipped):
    from digitlab.serve.http_policy import HttpPolicy

    settings = ServeSettings(http=HttpPolicy(allowed_hosts=("digits.example", "*.lan")))
    with TestClient(create_app(shipped, settings), base_url="http://digits.example") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("http://box.lan:8000/healthz").status_code == 200
        assert c.get("http://localhost/healthz").status_code == 400
        assert c.get("http://lan/healthz").status_code == 400


def test_bad_allowed_host_or_cors_origin_is_a_one_line_error():
    for flag, value in (("--allowed-host", "http://a.org"), ("--allowed-host", "a.org:80"),
                        ("--cors-origin", "a.org"), ("--cors-origin", "https://a.org/path")):
        r = run_cli("serve", flag, value, "--port", str(free_port()), timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and flag in r.stderr, r.stderr


# ---- cross-origin requests and CORS


def test_cross_origin_post_is_403_before_the_body(serve):
    """The headers announce a body that never comes: the 403 is sent without waiting for it."""
    port = port_of(serve)
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 100000\r\n" % port)
    for extra in (b"Origin: http://evil.example\r\n", b"Origin: null\r\n", b"Origin: http://127.0.0.1:1\r\n",
                  b"Sec-Fetch-Site: cross-site\r\n"):
        started = time.monotonic()
        status, _, body = raw(serve, head + extra + b"\r\n")
        assert status == 403 and "cross-origin" in json.loads(body)["detail"], (extra, status)
        assert time.monotonic() - started < HEADER_TIMEOUT_S, "the server waited for the body"
    own = b"Origin: http://127.0.0.1:%d\r\nSec-Fetch-Site: same-origin\r\n" % port
    status, _, _ = raw(serve, head.replace(b"100000", b"0") + own + b"Connection: close\r\n\r\n")
    assert status == 400  # past the guard: the (empty) form has no file


@pytest.mark.quick
def test_no_cors_headers_unless_configured(shipped, client, zero_pixels):
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}
    r = client.options(PREDICT, headers=preflight)
    assert not any(k.startswith("access-control-") for k in r.headers), dict(r.headers)
    r = client.post(PREDICT, json=zero_pixels, headers={"origin": "http://app.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers

    from digitlab.serve.http_policy import HttpPolicy

    with TestClient(create_app(shipped, ServeSettings(http=HttpPolicy(cors_origins=("http://app.example",))))) as c:
        r = c.options(PREDICT, headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post(PREDICT, json=zero_pixels, headers={"origin": "http://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post(PREDICT, json=zero_pixels, headers={"origin": "http://other.example"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


# ---- the in-flight limit (the middleware alone, around an app that holds its requests)


def test_requests_in_flight_are_limited_but_probes_pass():
    from digitlab.serve.http_policy import InFlightLimit

    release = asyncio.Event()

    async def held(scope, receive, send):  # predictions wait for `release`; anything else answers at once
        if scope["path"] == PREDICT:
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> list[int]:
        app = InFlightLimit(held, limit=2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = [asyncio.create_task(http.post(PREDICT)) for _ in range(2)]
            while app.active < 2:
                await asyncio.sleep(0)
            third = await http.post(PREDICT)
            probe = await http.get("/healthz")  # answered while both slots are still taken
            release.set()
            answers = [probe] + [await t for t in first]
            assert third.json()["detail"].startswith("the server is handling 2 requests")
            return [third.status_code] + [a.status_code for a in answers]

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S)) == [503, 200, 200, 200]


# ---- /metrics


@pytest.mark.quick
def test_metrics_parse_and_count(client):
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    healthz = metric(before.text, "digitlab_http_requests_total", route="/healthz", method="GET", status="200")
    refused = metric(before.text, "digitlab_rejections_total", reason="unsupported_type")
    client.get("/healthz")
    client.post(PREDICT, content=b"x", headers={"content-type": "text/plain"})
    after = client.get("/metrics").text
    assert metric(after, "digitlab_http_requests_total", route="/healthz", method="GET", status="200") == healthz + 1
    assert metric(after, "digitlab_rejections_total", reason="unsupported_type") == refused + 1
    assert metric(after, "digitlab_http_request_duration_seconds_count", route="/healthz") >= 1
    for gauge in ("digitlab_queue_depth", "digitlab_inference_in_flight", "digitlab_http_requests_in_flight"):
        assert any(f.name == gauge for f in text_string_to_metric_families(after)), gauge
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.quick
def test_metrics_gauges_read_what_app_state_holds(shipped):
    app = create_app(shipped)
    app.state.queue_depth = lambda: 5  # as a worker pool sets it
    with TestClient(app) as c:
        assert metric(c.get("/metrics").text, "digitlab_queue_depth") == 5


def test_serve_command_documents_its_new_flags():
    r = run_cli("serve", "--help", timeout=60)
    assert r.returncode == 0 and "--allowed-host" in r.stdout and "--cors-origin" in r.stdout

