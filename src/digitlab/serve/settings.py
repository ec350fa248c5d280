"""Everything `digitlab serve` can be told, in one frozen object, passed from the CLI to the pool and the app.

    settings = ServeSettings(model=ModelSpec("runs/<run>"), pool=PoolSettings(workers=2),
                             limits=Limits(inference_timeout_s=5), http=HttpPolicy(cors_origins=("https://x.org",)))
    settings.check()                        # a ConfigError naming the first value out of range
    pool = start_pool(settings)             # serve/server.py: worker processes load settings.model
    run_server(settings, port=8000, pool=pool)

Its sections are the classes that use them, each where it is used, so a module reads only its own part:
    model        ModelSpec (serve/worker.py): the run folder or file each worker loads, runtime, threads
    pool         PoolSettings (serve/pool_settings.py): workers, batching, queue sizes, worker memory
    limits       Limits (serve/limits.py): body size, image size, body read time, the answer's deadline
    http         HttpPolicy (serve/http_policy.py): Host names answered, CORS origins, requests in flight
    connections  ConnectionLimits (here): what one HTTP connection may hold (serve/http_connection.py)
Where to listen (host, port) and the log level are run_server's arguments, not settings: the same settings
serve on any address.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field

from digitlab.serve.http_policy import HttpPolicy
from digitlab.serve.limits import Limits
from digitlab.serve.pool_settings import PoolSettings
from digitlab.serve.worker import ModelSpec


def default_max_connections() -> int:
    """2,048, or half the process's file-descriptor limit if that is lower (the rest: the listener, worker pipes,
    model files, logs)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(2048, soft // 2)) if soft != resource.RLIM_INFINITY else 2048


@dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP connection may hold and for how long (serve/http_connection.py says why each exists)."""

    header_timeout_s: float = 5.0  # to complete a request's headers, from connecting or from the previous answer
    keep_alive_s: float = 5.0  # an idle keep-alive connection (nothing sent after an answer) is closed after this
    max_header_bytes: int = 64 * 1024  # request line + headers; larger is 431
    max_headers: int = 100  # header fields in one request (Apache's default too); more is 431
    max_body_chunks: int = 1024  # chunks in one chunked body (2 MiB in 1,024 chunks: 2 KiB each); more is 413
    # open connections; past it the longest-idle one is closed, or the new one refused
    max_connections: int = field(default_factory=default_max_connections)
    backlog: int = 2048  # connections the kernel queues before they are accepted
    max_pipelined: int = 16  # requests one read may queue behind the one being answered; more: closed after them
    write_buffer_bytes: int = 64 * 1024  # unsent answers a connection may buffer; past it, it is not read
    write_stall_s: float = 15.0  # a connection whose write buffer stays full this long is dropped


@dataclass(frozen=True)
class ServeSettings:
    """The one settings object of serving; every section has its defaults, so ServeSettings() serves the
    shipped model as `digitlab serve` does without flags (the Host names answered aside: see run_server)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    pool: PoolSettings = field(default_factory=PoolSettings)
    limits: Limits = field(default_factory=Limits)
    http: HttpPolicy = field(default_factory=HttpPolicy)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)

    def check(self) -> None:
        """A ConfigError naming the first setting out of range (the pool's numbers come from flags)."""
        self.pool.check()
