"""InlinePool: the pool's interface (serve/pool_api.py) without worker processes, for tests, embedding and
`--workers 0`."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio

from digitlab.serve.jobs import JobError, WorkerContext, job_kind
from digitlab.serve.pool_api import Health
from digitlab.serve.pool_settings import PoolBusy, PoolStats, PoolTimeout
from digitlab.serve.settings import ServeSettings


class InlinePool:
    """The pool's interface in this process: jobs run in threads, `limits.threads` at a time, the model under a
    lock, no batching. For tests and embedding (create_app(predictor)); a job past its deadline is answered 503
    but its thread cannot be stopped, so `digitlab serve` uses ProcessPool. Expensive jobs (explain) waiting or
    running are capped at `explain_queue_size`, as ProcessPool's queue of them is."""

    def __init__(self, predictor, settings: ServeSettings | None = None):
        settings = settings or ServeSettings()
        limits = self.limits = settings.limits
        self.queue_size, self.explain_queue_size = settings.pool.queue_size, settings.pool.explain_queue_size
        self._expensive = 0
        self.model_info = predictor.describe()
        self.stats = PoolStats()
        self._context = WorkerContext(predictor, limits, self.model_info)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(max(1, limits.threads))
        self._waiting = 0
        self._running = 0

    def start(self) -> "InlinePool":
        return self

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def close(self) -> None:
        pass

    def queue_depth(self) -> int:
        return self._waiting

    def in_flight(self) -> int:
        return self._running

    def ready_workers(self) -> int:
        return 1  # the model is loaded in this process

    def health(self) -> Health:
        return Health(True)

    async def submit(self, kind: str, payload: Any) -> bytes:
        job = job_kind(kind)
        if job.expensive and self._expensive >= self.explain_queue_size:
            self.stats.rejected += 1
            raise PoolBusy("server busy: too many explanations are waiting; try again shortly")
        if self._waiting >= self.queue_size:
            self.stats.rejected += 1
            raise PoolBusy()
        self.stats.submitted += 1
        self._waiting += 1
        self._expensive += job.expensive
        try:
            with anyio.fail_after(self.limits.inference_timeout_s):
                return await anyio.to_thread.run_sync(self._run, job, payload, limiter=self._limiter,
                                                      abandon_on_cancel=True)
        except TimeoutError:
            self.stats.timeouts += 1
            raise PoolTimeout(self.limits.inference_timeout_s) from None
        finally:
            self._waiting -= 1
            self._expensive -= job.expensive

    def _run(self, job, payload: Any) -> bytes:
        self._running += 1  # counters from threads: approximate, for reading only
        try:
            item = job.prepare(self._context, payload)
            with self._lock:
                answer = job.run(self._context, [item])[0]
            self.stats.model_calls += 1
            self.stats.batched += 1
            self.stats.largest_batch = 1
            if isinstance(answer, JobError):  # a run function refused this item (serve/jobs.py)
                raise answer
            return answer
        finally:
            self._running -= 1
            self.stats.completed += 1
