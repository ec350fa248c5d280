"""The interface both pools implement, ProcessPool (serve/pool.py: worker processes) and InlinePool
(serve/inline_pool.py: threads here), so that the app and the server are written against one typed seam.

    def create_app(..., pool: WorkerPool | None = None)
    isinstance(pool, WorkerPool)   # runtime_checkable: the methods are there (not their signatures)
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from digitlab.serve.pool_settings import PoolStats


@dataclass(frozen=True)
class Health:
    """Whether the pool can answer a request now; `reason` says why not (GET /healthz shows it)."""

    ok: bool
    reason: str = "ok"


@runtime_checkable
class WorkerPool(Protocol):
    """Runs jobs (serve/jobs.py) by kind; every method but submit is called on the event loop's thread only."""

    model_info: dict  # what is loaded: GET /api/model
    stats: PoolStats  # counters since start: /metrics, the server's last line

    def start(self) -> "WorkerPool":
        """Ready to answer (blocks until the model is loaded)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver answers on `loop` (the server's)."""

    def close(self) -> None:
        """Stop; jobs still waiting get 503."""

    async def submit(self, kind: str, payload: Any) -> bytes:
        """One job's JSON answer, or a JobError (4xx, 503)."""

    def queue_depth(self) -> int:
        """Jobs waiting."""

    def in_flight(self) -> int:
        """Jobs being computed."""

    def ready_workers(self) -> int:
        """Workers able to take a job now."""

    def health(self) -> Health:
        """Whether a request sent now can be answered."""
