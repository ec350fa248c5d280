"""A body sent very slowly cannot hold a request slot or a connection for long (issue 11: "header-read, body and
keep-alive timeouts"), against a real uvicorn in a thread configured as `digitlab serve` configures it
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

from digitlab.predict import Predictor
from digitlab.serve.limits import Limits
from digitlab.serve.http_connection import ConnectionLimits
from digitlab.serve.server import make_server
from helpers import free_port, server_in_thread

READ_TIMEOUT_S = 1.5  # the app's body deadline here (10 s in `digitlab serve`)
HEADER_TIMEOUT_S = 1.5  # the connection's header deadline here (5 s in `digitlab serve`)
DRIP_S = 0.1  # one body byte this often: far faster than any idle timeout would notice
DECLARED = 100_000  # the Content-Length the client announces and never sends
GIVE_UP_S = 15  # the client stops dripping after this long: a server that never cuts it off fails here


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """make_server around the shipped model, with the short deadlines above; yields its port."""
    port = free_port()
    server = make_server(Predictor.from_run(runtime="onnx"), port=port, log_level="warning",
                         limits=Limits(read_timeout_s=READ_TIMEOUT_S),
                         connections=ConnectionLimits(header_timeout_s=HEADER_TIMEOUT_S, keep_alive_s=HEADER_TIMEOUT_S))
    with server_in_thread(server):
        yield port


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
