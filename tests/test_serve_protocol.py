"""A body sent very slowly cannot hold a request slot or a connection for long (header-read, body and
keep-alive timeouts), against a real uvicorn in a thread configured as `digitlab serve` configures it
(serve.server.make_server), with short limits so that each test takes seconds.

A client that keeps a request alive by dribbling its body (a byte every DRIP_S, never idle long enough for an
idle timeout) must still be cut off: the app's body deadline (Limits.read_timeout_s) counts from the first read
of the body, not from the last byte; a route that answers without reading the body leaves the dribbled rest to
the connection's header deadline (ConnectionLimits.header_timeout_s), which starts again at the answer.
Every loop is bounded in count and time, and the server is stopped.
"""
from __future__ import annotations

import json
import select
import socket
import time
from typing import Iterator

import pytest
import uvicorn

from digitlab.predict import Predictor
from digitlab.serve.limits import Limits
from digitlab.serve.settings import ConnectionLimits, ServeSettings
from digitlab.serve.server import make_server
from helpers import free_port, server_in_thread

READ_TIMEOUT_S = 1.5  # the app's body deadline here (10 s in `digitlab serve`)
HEADER_TIMEOUT_S = 1.5  # the connection's header deadline here (5 s in `digitlab serve`)
DRIP_S = 0.1  # one body byte this often: far faster than any idle timeout would notice
DECLARED = 100_000  # the Content-Length the client announces and never sends
GIVE_UP_S = 15  # the client stops dripping after this long: a server that never cuts it off fails here
WRITE_STALL_S = 1.5  # how long a connection's write buffer may stay full here (15 s in `digitlab serve`)
MAX_PIPELINED = 16  # ConnectionLimits' default
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[int, uvicorn.Server]]:
    """make_server around the shipped model, with the short deadlines above; yields its port and the server."""
    port = free_port()
    settings = ServeSettings(limits=Limits(read_timeout_s=READ_TIMEOUT_S), connections=ConnectionLimits(
        header_timeout_s=HEADER_TIMEOUT_S, keep_alive_s=HEADER_TIMEOUT_S, write_stall_s=WRITE_STALL_S))
    server = make_server(Predictor.from_run(runtime="onnx"), settings, port=port, log_level="warning")
    with server_in_thread(server):
        yield port, server


@pytest.fixture(scope="module")
def server(running) -> int:
    return running[0]


def drip(port: int, head: bytes) -> tuple[bytes, float, float | None]:
    """Send `head`, then one body byte every DRIP_S until the server closes the connection (or GIVE_UP_S pass).
    Returns what the server sent, when its answer began and when it closed (seconds after `head`; None: never)."""
    received, answered, closed = b"", None, None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        start = time.monotonic()
        while time.monotonic() - start < GIVE_UP_S:
            if select.select([s], [], [], DRIP_S)[0]:  # waits at most DRIP_S, less when the server speaks
                chunk = s.recv(65536)
                if not chunk:
                    closed = time.monotonic() - start
                    break
                received += chunk
                answered = answered if answered is not None else time.monotonic() - start
                continue
            try:
                s.sendall(b"0")
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - start
                break
    return received, answered or float("inf"), closed


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_dripped_body_is_cut_off_at_the_body_deadline(server):
    """POST /api/predict announcing 100 KB and sending a byte every 0.1 s: 408 at the body deadline (counted
    from the start of the body, whatever keeps arriving), and the connection closed right after."""
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DECLARED}\r\n\r\n").encode()
    answer, answered, closed = drip(server, head)
    assert closed is not None, f"the server still read the dripped body after {GIVE_UP_S} s"
    status, body = status_and_body(answer)
    assert status == 408 and "body took longer" in body["detail"], answer[:300]
    assert READ_TIMEOUT_S - 0.2 < answered < READ_TIMEOUT_S + 3, f"408 after {answered:.1f} s"
    assert closed - answered < 1, f"closed {closed - answered:.1f} s after the 408"


@pytest.mark.parametrize("method,path,status", [("GET", "/", 200), ("POST", "/healthz", 405)])
def test_a_dripped_body_that_no_route_reads_ends_at_the_header_deadline(server, method, path, status):
    """A route that answers without reading the body (the page; a wrong method): the answer comes at once, and
    the dripped rest of the body is cut off by the header deadline, which starts again at the answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {DECLARED}\r\n\r\n".encode()
    answer, answered, closed = drip(server, head)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert answered < 1, f"answered after {answered:.1f} s"
    assert closed is not None, f"the connection was still open after {GIVE_UP_S} s of dripping"
    assert closed - answered < HEADER_TIMEOUT_S + 3, f"closed {closed - answered:.1f} s after the answer"


def read_to_eof(s: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took; fails after
    `timeout_s`."""
    s.settimeout(timeout_s)
    received, start = b"", time.monotonic()
    while chunk := s.recv(65536):
        received += chunk
        assert time.monotonic() - start < timeout_s, f"the connection was still open after {timeout_s} s"
    return received, time.monotonic() - start


def test_pipelining_past_the_cap_is_answered_up_to_it_then_closed(server):
    """40 GET /healthz in one write: the first is answered while MAX_PIPELINED wait behind it; parsing stops at
    the next, those are answered, the last with `connection: close`, and the server hangs up (before, uvicorn
    queued all 40, however many a read held)."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(HEALTHZ * 40)
        answer, took = read_to_eof(s, HEADER_TIMEOUT_S + 5)
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 1 + MAX_PIPELINED and all(a.startswith(b"200 ") for a in answers), answer[:300]
    assert b"connection: close" in answers[-1] and not any(b"connection: close" in a for a in answers[:-1])
    assert took < HEADER_TIMEOUT_S, f"closed {took:.1f} s after the answers, not after the last one"


def stalled_connections(server: uvicorn.Server) -> list:
    """The server's connections whose write buffer is full (uvicorn's flow control says writing is paused)."""
    return [c for c in list(server.server_state.connections) if c.flow is not None and c.flow.write_paused]


def rejections(port: int, reason: str) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        text, _ = read_to_eof(s, 5)
    for line in text.decode().splitlines():
        if line.startswith(f'digitlab_rejections_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_client_that_reads_no_answer_is_not_read_and_is_dropped_at_the_write_stall_deadline(running):
    """Three pipelined requests for Swagger UI's 1.5 MB script from a client with a 4 KiB receive buffer that
    reads nothing: once its unsent answer fills the write buffer, the connection is read no more, and after
    WRITE_STALL_S of that it is dropped with its buffer (before, it was held, and its buffer, for as long as the
    client kept it open)."""
    port, server = running
    before = rejections(port, "write_stall")
    request = b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request * 3)
        start = time.monotonic()
        while not stalled_connections(server):
            assert time.monotonic() - start < 5, "the unread answer never filled the write buffer"
            time.sleep(0.01)
        assert not any(c.transport.is_reading() for c in stalled_connections(server)), "read while stalled"
        while rejections(port, "write_stall") == before:
            assert time.monotonic() - start < WRITE_STALL_S + 5, "the stalled connection was not dropped"
            time.sleep(0.05)
    assert time.monotonic() - start > WRITE_STALL_S - 0.5, "dropped before the deadline"
