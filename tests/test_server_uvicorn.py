"""`digitlab serve` as a real uvicorn process on 127.0.0.1: good requests, bad ones, raw broken HTTP, concurrency.

Every loop here is bounded in count and time, and the server process is always terminated (see conftest.py).
"""
from __future__ import annotations

import json
import os
import select
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx
import pytest
from PIL import Image

from helpers import free_port, png_bytes, run_cli

TIMEOUT_S = 15


@pytest.fixture(scope="module")
def digits(mnist):
    """(28x28 list, PNG bytes, label) for the first eight test digits."""
    return [(mnist.test_images[i].tolist(), png_bytes(Image.fromarray(mnist.test_images[i].numpy())),
             int(mnist.test_labels[i])) for i in range(8)]


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT_S) as client:
        yield client


def raw_exchange(port: int, request: bytes, close_after_send: bool = False) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it (or, if asked, hang up at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(request)
        if close_after_send:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST: abrupt
            return b""
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll `condition` until it holds; fail naming `what` if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)


def open_sockets(pid: int) -> int:
    """Sockets the process holds open: its listener and event loop's own, plus one per client connection."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:  # closed while we looked
            pass
    return count


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_serve_prints_its_url(live_server):
    assert f"http://127.0.0.1:{live_server.port}" in live_server.output()


def test_page_health_and_model(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert 'id="prediction"' in http.get("/").text
    assert http.get("/api/model").json()["name"] == "cnn"


def test_good_requests(http, digits):
    for pixels, png, label in digits[:3]:
        r = http.post("/api/predict", json={"pixels": pixels})
        assert r.status_code == 200 and r.json()["label"] == label, r.text
        r = http.post("/api/predict", files={"file": ("d.png", png, "image/png")})
        assert r.status_code == 200 and r.json()["label"] == label, r.text


def test_bad_requests_get_json_errors(http):
    cases = [
        (dict(content=b"x" * 100, headers={"content-type": "text/plain"}), 415),
        (dict(files={"file": ("a.txt", b"plain text", "text/plain")}), 415),
        (dict(files={"file": ("a.png", b"", "image/png")}), 400),
        (dict(content=b'{"pixels": [[NaN]]}', headers={"content-type": "application/json"}), 422),
        (dict(json={"pixels": [[0] * 28] * 27}), 422),
    ]
    for kwargs, status in cases:
        r = http.post("/api/predict", **kwargs)
        assert r.status_code == status and isinstance(r.json()["detail"], str), (kwargs.keys(), r.text)


def test_large_content_length_is_refused_before_the_body(live_server):
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nConnection: close\r\n\r\n")
    response = raw_exchange(live_server.port, head)  # no body sent at all: the answer comes from the headers
    assert status_of(response) == 413 and "limit" in json_body(response)["detail"]


def test_chunked_body_is_cut_off_at_the_limit(live_server):
    """No Content-Length: the server counts bytes as they arrive and answers 413 long before 32 MB are sent
    (loopback socket buffers alone hold several MB, so a smaller total could all be sent before the answer)."""
    total, sent, response = 32 * 1024 * 1024, 0, b""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=TIMEOUT_S) as s:
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB per chunk
        try:
            while sent < total and not select.select([s], [], [], 0)[0]:
                s.sendall(chunk)
                sent += 0x10000
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_all(s)
    assert status_of(response) == 413, response[:300]
    assert sent < total, "the server took the whole 32 MB body"


def test_truncated_and_broken_requests_do_not_hurt_the_server(live_server, http, digits):
    port, pid = live_server.port, live_server.process.pid
    before = open_sockets(pid)
    body = json.dumps({"pixels": digits[0][0]}).encode()
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    raw_exchange(port, head + body[: len(body) // 3], close_after_send=True)  # hang up half-way through the body
    raw_exchange(port, head, close_after_send=True)  # hang up right after the headers
    raw_exchange(port, b"POST /api/predict HTTP/1.1\r\nHost: 12", close_after_send=True)  # ... inside the headers
    multipart = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9000\r\n"
                 b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n--xyz\r\nContent-Disposition: form-data; "
                 b'name="file"; filename="d.png"\r\n\r\n' + digits[0][1][:100])
    raw_exchange(port, multipart, close_after_send=True)  # an upload cut off mid-file
    bad_length = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: abc\r\nConnection: close\r\n\r\n")
    assert status_of(raw_exchange(port, bad_length)) == 400
    assert status_of(raw_exchange(port, b"NONSENSE\r\n\r\n")) == 400
    # the server has noticed every hang-up once it holds no more sockets than before them
    wait_until(lambda: open_sockets(pid) <= before, f"the server still holds {open_sockets(pid)} sockets, "
                                                    f"{before} before the hang-ups")
    r = http.post("/api/predict", json={"pixels": digits[0][0]})
    assert r.status_code == 200 and r.json()["label"] == digits[0][2]


def test_concurrent_requests_get_their_own_answers(http, digits):
    def ask(i: int) -> tuple[int, int]:
        pixels, png, label = digits[i % len(digits)]
        if i % 2:
            r = http.post("/api/predict", files={"file": ("d.png", png, "image/png")})
        else:
            r = http.post("/api/predict", json={"pixels": pixels})
        assert r.status_code == 200, r.text
        return r.json()["label"], label

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, range(24), timeout=60))
    assert len(answers) == 24
    right = sum(got == want for got, want in answers)
    assert right == 24, answers


def test_refusals_are_logged_without_a_traceback(live_server, http):
    """The access log records refusals by status, and nothing this module sent, here or in any test before,
    made the server log a traceback."""
    wide = png_bytes(Image.new("L", (5000, 10)))  # over the 4096-pixel side limit
    refusals = {413: dict(files={"file": ("wide.png", wide, "image/png")}),
                415: dict(content=b"x", headers={"content-type": "text/plain"}),
                422: dict(json={"pixels": [[0] * 28] * 27})}
    for status, kwargs in refusals.items():
        assert http.post("/api/predict", **kwargs).status_code == status
    assert live_server.process.poll() is None and http.get("/healthz").json() == {"status": "ok"}
    wait_until(lambda: all(f'/api/predict HTTP/1.1" {status} ' in live_server.output() for status in refusals),
               "the access log lines of the refusals")
    log = live_server.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_bad_run_is_one_line_error(tmp_path):
    r = run_cli("serve", str(tmp_path / "no-such-run"), "--port", str(free_port()), timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_port_in_use_is_one_line_error(live_server, trained_run):
    r = run_cli("serve", str(trained_run), "--port", str(live_server.port), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{live_server.port}" in r.stderr


def test_access_log_shortens_long_urls(live_server):
    """A 63 KB URL (under the 64 KiB header cap) is logged as its first 200 characters and "...", not whole."""
    marker = f"long-url-{time.monotonic_ns()}"
    url = f"/{marker}/" + "a" * 63_000
    response = raw_exchange(live_server.port, f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                                              .encode())
    assert status_of(response) == 404
    wait_until(lambda: marker in live_server.output(), "the access log line of the long URL")
    line = next(line for line in live_server.output().splitlines() if marker in line)
    assert f'"GET {url[:200]}... HTTP/1.1" 404' in line and len(line) < 400, line[:500]


def test_access_log_escapes_control_characters():
    """httptools refuses raw control characters in a URL, so this is the filter alone, on the record uvicorn
    makes: a URL carrying a newline or a terminal escape stays on one line, escaped."""
    import logging

    from digitlab.serve.access_log import UrlFilter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/a\r\nINFO: forged\x1b[2J\x9b", "1.1", 404), None)
    assert UrlFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /a\\x0d\\x0aINFO: forged\\x1b[2J\\x9b HTTP/1.1" 404'
