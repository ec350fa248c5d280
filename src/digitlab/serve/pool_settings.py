"""What both pools share and their users read without importing a pool: PoolSettings, PoolStats and the refusals."""
from __future__ import annotations

from dataclasses import dataclass, field

from digitlab.serve.jobs import JobError
from digitlab.serve.worker import WorkerSettings


def default_workers() -> int:
    """Two worker processes where there are two CPUs or more (one on a single CPU): the serving process itself
    needs a core for HTTP, so more workers than CPUs only queue on the CPU instead of here."""
    from digitlab.cpus import cpu_count

    return min(2, cpu_count())


@dataclass(frozen=True)
class PoolSettings:
    workers: int = field(default_factory=default_workers)  # processes; 0: InlinePool (threads in this process)
    max_batch: int = 16  # jobs per model call; 1: no batching
    batch_wait_ms: float = 2.0  # how long a worker waits for more jobs to fill a batch
    queue_size: int = 64  # jobs waiting for a worker; more are refused with 503
    explain_queue_size: int = 4  # expensive jobs (explain) waiting, in a queue of their own; more are refused
    explain_workers: int = 0  # workers that may hold an expensive job at once; 0: half of them, at least one
    memory_mb: int = 1024  # address space a worker may add after loading its model; 0: no cap
    start_timeout_s: float = 300.0  # loading the model in every worker, at start

    def check(self) -> None:
        """A ConfigError naming the first setting out of range."""
        from digitlab.errors import ConfigError

        for name, value, low in (("workers", self.workers, 0), ("max_batch", self.max_batch, 1),
                                 ("batch_wait_ms", self.batch_wait_ms, 0), ("queue_size", self.queue_size, 1),
                                 ("explain_queue_size", self.explain_queue_size, 1),
                                 ("explain_workers", self.explain_workers, 0),
                                 ("memory_mb", self.memory_mb, 0)):
            if not value >= low or value == float("inf"):  # NaN and infinity too
                raise ConfigError(f"--{name.replace('_', '-')} must be a number of at least {low}, got {value}")

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(self.max_batch, self.batch_wait_ms / 1000, self.memory_mb)


@dataclass
class PoolStats:
    """Counters since start, read by /metrics and the tests; only the event loop's thread writes them."""

    submitted: int = 0
    completed: int = 0  # answered by a worker, refusals (4xx) included
    rejected: int = 0  # refused at once: queue full ("server busy")
    timeouts: int = 0  # past the deadline, queued or running
    restarts: int = 0  # workers started to replace one that was killed or died
    crashes: int = 0  # workers that died on their own (not killed for a deadline)
    load_failures: int = 0  # workers that could not load the model (or found another file than at start)
    unresponsive: int = 0  # workers killed for holding jobs a whole deadline without a word (stopped, wedged)
    unavailable: int = 0  # refused at once: no worker could load the model
    model_calls: int = 0  # calls of a job kind's `run` (one model call per batch and kind)
    batched: int = 0  # jobs those calls took together
    largest_batch: int = 0


class PoolBusy(JobError):
    def __init__(self, detail: str = "server busy: too many requests are waiting; try again shortly"):
        super().__init__(503, detail)


class PoolTimeout(JobError):
    def __init__(self, deadline_s: float):
        super().__init__(503, f"the prediction took longer than {deadline_s:g} s")


class PoolUnavailable(JobError):
    """No worker can serve (the model cannot be loaded): refused at once rather than held to the deadline."""

    def __init__(self, detail: str):
        super().__init__(503, detail)


class WorkerCrash(RuntimeError):
    """A job raised an unexpected exception in its worker (logged there): the app answers 500."""
