"""Run the app under uvicorn: `digitlab serve [RUN]` calls run_server(predictor, host, port).

The connection layer is uvicorn's httptools protocol with a header deadline, a header size cap and a cap on
open connections (serve/protocol.py), so idle or half-sent connections are closed, not counted against requests.
uvicorn's own `limit_concurrency` is off: it counted connections, so 64 idle sockets made every request 503.
Requests in flight are limited by the app (serve/http_policy.py, 503 beyond HttpPolicy.max_in_flight), and the
app's Limits bound each request's body, time and image.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import torch

from digitlab.errors import DigitlabError
from digitlab.predict import Predictor
from digitlab.serve.app import create_app
from digitlab.serve.http_policy import HttpPolicy, default_allowed_hosts
from digitlab.serve.limits import Limits

if TYPE_CHECKING:
    import uvicorn

    from digitlab.serve.protocol import ConnectionLimits

EVENT_LOOP = "asyncio"  # uvloop measured no faster here (docs/benchmarks.md), so not one more dependency


def check_can_listen(host: str, port: int) -> None:
    """Fail early, in one line, if host:port cannot be bound (taken, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does, so TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise DigitlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
               limits: Limits = Limits(), log_level: str = "info", policy: HttpPolicy | None = None,
               connections: ConnectionLimits | None = None) -> None:
    """Serve `predictor` until interrupted; torch uses `threads` CPU threads per inference (an ONNX Runtime
    predictor was given its own when created: Predictor.from_run(..., runtime="onnx", threads=...)).
    `policy` defaults to answering only Host headers naming `host` or this machine's loopback names."""
    torch.set_num_threads(max(1, threads))
    server = make_server(predictor, host, port, limits, log_level, policy, connections)
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run: Ctrl+C during start-up or shutdown is a normal stop
        pass
    if not server.started:
        raise DigitlabError(f"the server did not start on {host}:{port} (its log above says why)")


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
                log_level: str = "info", policy: HttpPolicy | None = None,
                connections: ConnectionLimits | None = None) -> uvicorn.Server:
    """The uvicorn server run_server runs (call .run(), or set .should_exit to stop it from another thread)."""
    import uvicorn

    from digitlab.serve.protocol import ConnectionLimits, default_max_connections, guarded_protocol  # httptools

    policy = policy or HttpPolicy(allowed_hosts=default_allowed_hosts(host))
    connections = connections or ConnectionLimits(max_connections=default_max_connections())
    app = create_app(predictor, limits, policy)
    protocol = guarded_protocol(connections, on_close=app.state.metrics.reject)
    return uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=protocol, loop=EVENT_LOOP, limit_concurrency=None,
        backlog=connections.backlog, timeout_keep_alive=connections.keep_alive_s, timeout_graceful_shutdown=5,
        server_header=False))
