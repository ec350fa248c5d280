"""The HTTP connection layer under uvicorn: httptools' parser, with the bounds uvicorn lacks.

    protocol = bounded_http_protocol(ConnectionLimits(), on_close=metrics.connection_closed)
    uvicorn.run(app, http=protocol, limit_concurrency=None, ...)

uvicorn (0.54) closes a keep-alive connection that stays silent after a response, but nothing closes one that
has sent part of a request's headers, or nothing at all since it connected: every such socket is held until the
client hangs up, and its `limit_concurrency` counts them, so 64 of them made every other request 503. This
subclass of uvicorn's own httptools protocol (the parser and the ASGI cycle stay uvicorn's) adds:

- a header deadline: a connection has `header_timeout_s` from when it opens, or from its previous answer, to
  complete the headers of its next request; otherwise it is closed (408 if it had sent part of them);
- a header size cap: `max_header_bytes` of request line and headers (httptools itself has none; h11 has 16 KiB),
  answered 431;
- a cap on the chunks of a chunked body: `max_body_chunks`, answered 413. Each chunk costs a parser callback on
  the event loop (~0.5 us in httptools, ~1 us with uvicorn's handler, ~7 us in h11), so 300,000 one-byte chunks
  held the loop for 0.3 s (2 s in h11) and stalled every other request; real clients send far fewer;
- a cap on open connections: past `max_connections`, the connection that has been idle (waiting for a request)
  the longest is closed to make room; if none is idle, the new one is refused, so file descriptors stay bounded.
"""
from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def default_max_connections() -> int:
    """2,048, or half the process's file-descriptor limit if that is lower (the rest: the listener, worker pipes,
    model files, logs)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(2048, soft // 2)) if soft != resource.RLIM_INFINITY else 2048


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 5.0  # to complete a request's headers, from connecting or from the previous answer
    keep_alive_s: float = 5.0  # an idle keep-alive connection (nothing sent after an answer) is closed after this
    max_header_bytes: int = 64 * 1024  # request line + headers; larger is 431
    max_body_chunks: int = 1024  # chunks in one chunked body (2 MiB in 1,024 chunks: 2 KiB each); more is 413
    max_connections: int = 2048  # open connections; past it the longest-idle one is closed, or the new one refused
    backlog: int = 2048  # connections the kernel queues before they are accepted


def json_response(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 JSON error that closes the connection, written straight to a transport."""
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class TooManyChunks(Exception):
    """Raised from the parser's chunk callback to stop parsing a body at once."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, caps on header size and body chunks, and a cap on
    open connections. Configured through class attributes by bounded_http_protocol(), since uvicorn creates one
    instance per connection with its own fixed arguments."""

    limits = ConnectionLimits()
    on_close: Callable[[str], None] = staticmethod(lambda reason: None)  # told why the guard closed a connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_headers = True  # the bytes arriving belong to a request's headers (counted against the cap)
        self.header_bytes = 0
        self.idle_since = time.monotonic()
        super().connection_made(transport)
        if self.over_cap() and not self.make_room():
            self.on_close("connection_cap")
            transport.write(json_response(503, "Service Unavailable", "the server has too many open connections"))
            transport.close()
            return
        self.await_headers()

    def over_cap(self) -> bool:
        """More connections open than the cap, not counting those already closing (counted only past it)."""
        return (len(self.connections) > self.limits.max_connections
                and sum(not c.transport.is_closing() for c in self.connections) > self.limits.max_connections)

    def make_room(self) -> bool:
        """Close the connection idle the longest (waiting for a request, not answering one); False if none is."""
        idle = [c for c in self.connections if c is not self and isinstance(c, BoundedHttpProtocol) and c.is_idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        self.on_close("connection_cap")
        oldest.close()
        return True

    def is_idle(self) -> bool:
        """Between requests: waiting for the next one's headers, nothing of it received."""
        return self.header_timer is not None and self.header_bytes == 0 and not self.transport.is_closing()

    def await_headers(self) -> None:
        """Start the clock for the next request's headers."""
        self.cancel_header_timer()
        self.header_bytes = 0
        self.idle_since = time.monotonic()
        self.header_timer = self.loop.call_later(self.limits.header_timeout_s, self.headers_too_slow)

    def cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_too_slow(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        self.on_close("header_timeout")
        if self.header_bytes:  # a request was begun: say why it ends; a silent connection is just closed
            self.transport.write(json_response(
                408, "Request Timeout", f"the request headers took longer than {self.limits.header_timeout_s:g} s"))
        self.close()

    def close(self) -> None:
        self.cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.in_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        # headers still incomplete past the cap (checked after parsing, so a request whose headers end inside
        # this read is never refused for the body that follows them): at most the cap plus one read is held;
        # this holds for a pipelined request's headers too, which arrive while the one before is answered
        if self.in_headers and not self.transport.is_closing() and self.header_bytes > self.limits.max_header_bytes:
            self.on_close("header_too_large")
            if self.cycle is None or self.cycle.response_complete:  # not in the middle of another answer
                self.transport.write(json_response(
                    431, "Request Header Fields Too Large",
                    f"the request line and headers are larger than {self.limits.max_header_bytes:,} bytes"))
            self.close()

    def on_headers_complete(self) -> None:
        self.cancel_header_timer()
        self.in_headers = False
        self.body_chunks = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_headers, self.header_bytes = True, 0  # whatever comes next is the next request's headers
        super().on_message_complete()

    def on_chunk_header(self) -> None:
        """httptools calls this once per chunk of a chunked body; past the cap, parsing stops here (the raise
        makes feed_data fail, and uvicorn answers through send_400_response, below)."""
        self.body_chunks += 1
        if self.body_chunks > self.limits.max_body_chunks:
            raise TooManyChunks

    def send_400_response(self, msg: str) -> None:
        if getattr(self, "body_chunks", 0) <= self.limits.max_body_chunks:
            return super().send_400_response(msg)
        self.on_close("too_many_chunks")
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app stops waiting for the body; nothing more is sent for it
            self.cycle.message_event.set()
        if not self.cycle or not self.cycle.response_started:
            self.transport.write(json_response(
                413, "Content Too Large", f"the body came in more than {self.limits.max_body_chunks:,} chunks"))
        self.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer unless a pipelined request was started or the connection is closing;
        # any byte received cancels that timer, so the header deadline bounds a client that dribbles
        if self.timeout_keep_alive_task is not None and not self.transport.is_closing():
            self.await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        super().connection_lost(exc)


def bounded_http_protocol(limits: ConnectionLimits, on_close: Callable[[str], None] | None = None) -> type:
    """A BoundedHttpProtocol class with these limits, for uvicorn.run(http=...)."""
    attrs: dict = {"limits": limits}
    if on_close is not None:
        attrs["on_close"] = staticmethod(on_close)
    return type("DigitlabHttpProtocol", (BoundedHttpProtocol,), attrs)
