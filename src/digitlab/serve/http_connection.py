"""The HTTP connection layer under uvicorn: httptools' parser, with the bounds uvicorn lacks.

    protocol = bounded_http_protocol(settings.connections, on_close=metrics.reject)
    uvicorn.run(app, http=protocol, limit_concurrency=None, ...)

uvicorn (0.54) closes a keep-alive connection that stays silent after a response, but nothing closes one that
has sent part of a request's headers, or nothing at all since it connected: every such socket is held until the
client hangs up, and its `limit_concurrency` counts them, so 64 of them made every other request 503. This
subclass of uvicorn's own httptools protocol (the parser and the ASGI cycle stay uvicorn's) adds:

- a header deadline: a connection has `header_timeout_s` from when it opens, or from its previous answer, to
  complete the headers of its next request; otherwise it is closed (408 if it had sent part of them);
- a header size cap: `max_header_bytes` of request line and headers (httptools itself has none; h11 has 16 KiB),
  answered 431: counted on the bytes of headers still incomplete after a read, and on the headers the parser
  hands over, so that neither headers that never end nor 10,000 that end within one read pass it;
- a cap on the number of header fields: `max_headers`, answered 431. Each costs a parser callback (~2-4 us with
  uvicorn's handler), so 8,000 tiny ones under the size cap held the loop for ~20-50 ms per request;
- a cap on the chunks of a chunked body: `max_body_chunks`, answered 413. Each chunk costs a parser callback on
  the event loop (~0.5 us in httptools, ~1 us with uvicorn's handler, ~7 us in h11), so 300,000 one-byte chunks
  held the loop for 0.3 s (2 s in h11) and stalled every other request; real clients send far fewer;
- a cap on open connections: past `max_connections`, the connection that has been idle (waiting for a request)
  the longest is closed to make room; if none is idle, the new one is refused, so file descriptors stay bounded;
- bounded pipelining: uvicorn queues a request that arrives while the one before is answered, but reads on after
  every answer, and httptools parses a whole read (up to 256 KiB: 6,000 small GETs) at once; a client that
  pipelines without reading its answers grew the server by 1.4 GB in 12 s. Here a connection is not read while
  a request waits on it, while its unsent answers fill the write buffer (`write_buffer_bytes`), or while a body
  waits for the app (uvicorn's 64 KiB); a read holding more than `max_pipelined` waiting requests stops being
  parsed, and the connection closes after answering those (real clients pipeline a few, if any);
- a write-stall deadline: a connection whose write buffer stays full for `write_stall_s` (its client reads
  none of its answers) is dropped, buffered answers and all.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitlab.serve.settings import ConnectionLimits


def json_response(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 JSON error that closes the connection, written straight to a transport."""
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class StopParsing(Exception):
    """Raised from a parser callback to stop parsing the read at once: httptools turns it into an
    HttpParserCallbackError, and uvicorn then calls send_400_response, which answers `reason` instead."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GatedFlowControl(FlowControl):
    """uvicorn's flow control, which resumes reading after every answer and whenever the app asks for more body;
    this one resumes only when `may_read()` says the connection has room for what it would read."""

    def __init__(self, transport: asyncio.Transport, may_read: Callable[[], bool]):
        super().__init__(transport)
        self.may_read = may_read

    def resume_reading(self) -> None:
        if self.may_read():
            super().resume_reading()


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, caps on header size and body chunks, and a cap on
    open connections. Configured through class attributes by bounded_http_protocol(), since uvicorn creates one
    instance per connection with its own fixed arguments."""

    limits = ConnectionLimits()
    on_close: Callable[[str], None] = staticmethod(lambda reason: None)  # told why the guard closed a connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_timer: asyncio.TimerHandle | None = None
        self.write_stall_timer: asyncio.TimerHandle | None = None
        self.in_headers = True  # the bytes arriving belong to a request's headers (counted against the cap)
        self.header_bytes = 0
        self.stopped: str | None = None  # why parsing stopped (StopParsing), until send_400_response answers it
        self.idle_since = time.monotonic()
        super().connection_made(transport)
        self.flow = GatedFlowControl(transport, self.may_read)
        transport.set_write_buffer_limits(high=self.limits.write_buffer_bytes)
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
            self.refuse_headers()

    def on_message_begin(self) -> None:
        self.parsed_header_bytes = 0  # of this request, as the parser hands them over, within a read or across
        self.header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            self.stop_parsing("too_many_headers")
        self.count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def count_header_bytes(self, size: int) -> None:
        """The cap on complete headers: data_received's count sees only bytes still unparsed after a read, so
        10,000 headers that end within one read would pass it; past the cap, parsing stops here."""
        self.parsed_header_bytes += size
        if self.parsed_header_bytes > self.limits.max_header_bytes:
            self.stop_parsing("header_too_large")

    def refuse_headers(self, detail: str = "") -> None:
        """431, unless another answer is under way on this connection, and the connection is closed."""
        if self.cycle is None or self.cycle.response_complete:
            detail = detail or f"the request line and headers are larger than {self.limits.max_header_bytes:,} bytes"
            self.transport.write(json_response(431, "Request Header Fields Too Large", detail))
        self.close()

    def refuse_header_count(self) -> None:
        self.refuse_headers(f"the request has more than {self.limits.max_headers:,} header fields")

    def may_read(self) -> bool:
        """Whether the connection has room for what a read brings: no request waiting behind the one being
        answered, its answers sent (the write buffer under its mark), no body piling up that the app has not
        taken, and the parser still in use."""
        cycle = self.cycle
        return (self.stopped is None and not self.pipeline and not self.flow.write_paused
                and (cycle is None or cycle.response_complete or len(cycle.body) <= HIGH_WATER_LIMIT))

    def stop_parsing(self, reason: str) -> None:
        """Stop parsing this read here; send_400_response then answers `reason`."""
        self.stopped = reason
        raise StopParsing(reason)

    def on_headers_complete(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete  # so this request would wait
        if answering and len(self.pipeline) >= self.limits.max_pipelined:
            self.stop_parsing("pipeline_cap")
        self.cancel_header_timer()
        self.in_headers = False
        self.body_chunks = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_headers, self.header_bytes = True, 0  # whatever comes next is the next request's headers
        super().on_message_complete()

    def on_chunk_header(self) -> None:
        """httptools calls this once per chunk of a chunked body; past the cap, parsing stops here."""
        self.body_chunks += 1
        if self.body_chunks > self.limits.max_body_chunks:
            self.stop_parsing("too_many_chunks")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools could not parse, or to a StopParsing raised above."""
        answers = {"too_many_chunks": self.refuse_chunks, "pipeline_cap": self.close_after_queued,
                   "header_too_large": self.refuse_headers, "too_many_headers": self.refuse_header_count}
        if self.stopped is None:
            return super().send_400_response(msg)
        self.on_close(self.stopped)
        answers[self.stopped]()

    def close_after_queued(self) -> None:
        """Past the pipelining cap: the requests already queued are answered, nothing more is read (the parser
        stopped mid-read), and the connection closes after the last answer."""
        self.flow.pause_reading()
        last = self.pipeline[0][0] if self.pipeline else self.cycle  # queued on the left, started from the right
        last.keep_alive = False

    def refuse_chunks(self) -> None:
        """Past the chunk cap: 413, unless an answer is already under way, and the connection is closed."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app stops waiting for the body; nothing more is sent for it
            self.cycle.message_event.set()
        if not self.cycle or not self.cycle.response_started:
            self.transport.write(json_response(
                413, "Content Too Large", f"the body came in more than {self.limits.max_body_chunks:,} chunks"))
        self.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # resumes reading (if may_read), then starts the next queued request
        self.flow.resume_reading()  # so reading resumes once that request was the last one waiting
        # uvicorn armed its keep-alive timer unless a pipelined request was started or the connection is closing;
        # any byte received cancels that timer, so the header deadline bounds a client that dribbles
        if self.timeout_keep_alive_task is not None and not self.transport.is_closing():
            self.await_headers()

    def pause_writing(self) -> None:
        """The transport's write buffer passed `write_buffer_bytes`: read nothing more until the client has read
        some of its answers, and drop the connection if it reads none for `write_stall_s`."""
        super().pause_writing()
        self.flow.pause_reading()
        if self.write_stall_timer is None:
            self.write_stall_timer = self.loop.call_later(self.limits.write_stall_s, self.write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.cancel_write_stall_timer()
        self.flow.resume_reading()  # if may_read: nothing else holds reading back

    def write_stalled(self) -> None:
        """Dropped (abort, not close: close waits for a buffer this client will not read)."""
        self.write_stall_timer = None
        self.on_close("write_stall")
        self.cancel_header_timer()
        self.transport.abort()

    def cancel_write_stall_timer(self) -> None:
        if self.write_stall_timer is not None:
            self.write_stall_timer.cancel()
            self.write_stall_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        self.cancel_write_stall_timer()
        super().connection_lost(exc)


def bounded_http_protocol(limits: ConnectionLimits, on_close: Callable[[str], None] | None = None) -> type:
    """A BoundedHttpProtocol class with these limits, for uvicorn.run(http=...)."""
    attrs: dict = {"limits": limits}
    if on_close is not None:
        attrs["on_close"] = staticmethod(on_close)
    return type("DigitlabHttpProtocol", (BoundedHttpProtocol,), attrs)
