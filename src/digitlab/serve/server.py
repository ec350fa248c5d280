"""Run the app under uvicorn: `digitlab serve [RUN]` starts a pool of worker processes (start_pool(settings)),
then run_server(settings, host=..., port=..., pool=pool), one ServeSettings (serve/settings.py) for both. The
server listens only once every worker has loaded the model.

The connection layer is uvicorn's httptools protocol with a header deadline, a header size cap and a cap on
open connections (serve/http_connection.py), so idle or half-sent connections are closed, not counted against
requests.
uvicorn's own `limit_concurrency` is off: it counted connections, so 64 idle sockets made every request 503.
Requests in flight are limited by the app (serve/http_policy.py, 503 beyond settings.http.max_in_flight), and
settings.limits bound each request's body, time and image.
"""
from __future__ import annotations

import dataclasses
import signal
import socket
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from digitlab.errors import ConfigError, DigitlabError
from digitlab.predict import Predictor
from digitlab.serve.access_log import install_url_filter
from digitlab.serve.app import create_app
from digitlab.serve.http_policy import default_allowed_hosts
from digitlab.serve.inline_pool import InlinePool
from digitlab.serve.pool import ProcessPool
from digitlab.serve.settings import ServeSettings
from digitlab.serve.worker import ModelSpec, check_servable

if TYPE_CHECKING:
    import uvicorn

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


def start_pool(settings: ServeSettings | None = None, predictor: Predictor | None = None) -> ProcessPool | InlinePool:
    """The pool that will run the requests, started: worker processes that each load `settings.model`, or, for a
    `predictor` already loaded here or `settings.pool.workers == 0`, threads in this process. Blocks until every
    worker is ready; a model that cannot be loaded is a DigitlabError."""
    settings = settings or ServeSettings()
    settings.check()
    if predictor is not None:
        check_servable(predictor, None)
        return InlinePool(predictor, settings)
    settings = dataclasses.replace(settings, model=vetted(settings.model))
    if settings.pool.workers == 0:
        spec = settings.model
        predictor = Predictor.from_path(spec.run, spec.checkpoint, runtime=spec.runtime, threads=spec.threads,
                                        vetted_sha256=spec.vetted_sha256)
        check_servable(predictor, spec.run)
        return InlinePool(predictor, settings)
    return ProcessPool(settings).start()


def vetted(spec: ModelSpec) -> ModelSpec:
    """`spec`, and for an .onnx file the sha256 of its bytes once onnx_guard has vetted them here, once: each
    worker then loads those bytes without a probe process of its own (other bytes, it vets again)."""
    from digitlab.predict import is_onnx_file

    if not is_onnx_file(spec.run) or spec.vetted_sha256 is not None:
        return spec
    if spec.runtime != "onnx":
        raise ConfigError(f"{spec.run} is an ONNX file: it runs in ONNX Runtime only, not with runtime "
                          f"{spec.runtime!r}")
    from digitlab import onnx_guard
    from digitlab.backends import DEADLINE_S

    digest = onnx_guard.vet(onnx_guard.read_onnx(spec.run), spec.run, DEADLINE_S)
    return dataclasses.replace(spec, vetted_sha256=digest)


def run_server(settings: ServeSettings | None = None, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", *, predictor: Predictor | None = None,
               pool: ProcessPool | InlinePool | None = None) -> None:
    """Serve until interrupted: `pool` if given (started; it is closed when the server stops), else one started
    here from `settings` (see start_pool). torch uses `settings.model.threads` CPU threads per inference in this
    process too (an InlinePool's predictor). Host headers: see make_server."""
    settings = settings or ServeSettings()
    torch.set_num_threads(max(1, settings.model.threads))
    pool = pool or start_pool(settings, predictor)
    try:
        server = make_server(None, settings, host, port, log_level, pool=pool)
        try:
            with sigterm_as_ctrl_c():
                server.run()
        except KeyboardInterrupt:  # as uvicorn.run: Ctrl+C (or SIGTERM) is a normal stop
            pass
        if not server.started:
            raise DigitlabError(f"the server did not start on {host}:{port} (its log above says why)")
    finally:
        pool.close()


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the server as Ctrl+C does. uvicorn handles both while it runs, then raises the one it got
    again once it has shut down: SIGINT's default handler makes that a KeyboardInterrupt (a normal stop: the pool
    is closed, `digitlab serve` prints its summary), but SIGTERM's default kills the process on the spot. Only the
    main thread may set handlers; elsewhere (a server in a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_server(predictor: Predictor | None = None, settings: ServeSettings | None = None,
                host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", *,
                pool: ProcessPool | InlinePool | None = None) -> uvicorn.Server:
    """The uvicorn server run_server runs (call .run(), or set .should_exit to stop it from another thread),
    around `pool`, or around `predictor` in this process's threads. Settings whose `http.allowed_hosts` is None
    answer only Host headers naming `host` or this machine's loopback names (("*",): any)."""
    import uvicorn

    from digitlab.serve.http_connection import bounded_http_protocol  # httptools

    settings = settings or ServeSettings()
    if settings.http.allowed_hosts is None:
        settings = dataclasses.replace(
            settings, http=dataclasses.replace(settings.http, allowed_hosts=default_allowed_hosts(host)))
    connections = settings.connections
    app = create_app(predictor, settings, pool=pool)
    protocol = bounded_http_protocol(connections, on_close=app.state.metrics.reject)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=protocol, loop=EVENT_LOOP, limit_concurrency=None,
        backlog=connections.backlog, timeout_keep_alive=connections.keep_alive_s, timeout_graceful_shutdown=5,
        server_header=False)
    install_url_filter()  # after Config, which configures uvicorn's loggers
    return uvicorn.Server(config)
