"""Run the app under uvicorn: `digitlab serve [RUN]` starts a pool of worker processes (start_pool), then
run_server(pool=pool, host=..., port=...). The server listens only once every worker has loaded the model.

uvicorn answers 503 beyond `limit_concurrency` open requests and closes idle keep-alive connections after a few
seconds, so a flood of clients cannot pile up work or sockets; the app's own Limits bound each request.
"""
from __future__ import annotations

import socket

import torch

from digitlab.errors import DigitlabError
from digitlab.predict import Predictor
from digitlab.serve.app import create_app
from digitlab.serve.limits import Limits
from digitlab.serve.pool import InlinePool, PoolSettings, ProcessPool
from digitlab.serve.worker import ModelSpec

LIMIT_CONCURRENCY = 64  # open connections + requests at once; beyond it uvicorn answers 503
TIMEOUT_KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this many seconds


def check_can_listen(host: str, port: int) -> None:
    """Fail early, in one line, if host:port cannot be bound (taken, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does, so TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise DigitlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def start_pool(model: Predictor | ModelSpec | None = None, limits: Limits = Limits(),
               settings: PoolSettings | None = None) -> ProcessPool | InlinePool:
    """The pool that will run the requests, started: worker processes that each load `model` (a ModelSpec; None:
    the shipped model), or, for a Predictor already loaded here or `settings.workers == 0`, threads in this
    process. Blocks until every worker is ready; a model that cannot be loaded is a DigitlabError."""
    settings = settings or PoolSettings()
    settings.check()
    if isinstance(model, Predictor):
        return InlinePool(model, limits, settings.queue_size)
    spec = model or ModelSpec()
    if settings.workers == 0:
        predictor = Predictor.from_run(spec.run, spec.checkpoint, runtime=spec.runtime, threads=spec.threads)
        return InlinePool(predictor, limits, settings.queue_size)
    return ProcessPool(spec, settings, limits).start()


def run_server(model: Predictor | ModelSpec | None = None, host: str = "127.0.0.1", port: int = 8000,
               threads: int = 1, limits: Limits = Limits(), log_level: str = "info", *,
               pool: ProcessPool | InlinePool | None = None, pool_settings: PoolSettings | None = None) -> None:
    """Serve until interrupted: `pool` if given (started; it is closed when the server stops), else one started
    here from `model` (see start_pool). torch uses `threads` CPU threads per inference in this process (an
    InlinePool's predictor); worker processes take theirs from their ModelSpec."""
    import uvicorn

    torch.set_num_threads(max(1, threads))
    pool = pool or start_pool(model, limits, pool_settings)
    try:
        app = create_app(limits=limits, pool=pool)
        uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=LIMIT_CONCURRENCY,
                    timeout_keep_alive=TIMEOUT_KEEP_ALIVE_S, timeout_graceful_shutdown=5, server_header=False)
    finally:
        pool.close()
