"""Where the server's requests are computed: a pool of worker processes with a bounded queue and real deadlines.

    pool = ProcessPool(ServeSettings(ModelSpec("runs/<run>"), PoolSettings(workers=2))).start()  # until ready
    body = await pool.submit("predict", ("upload", png_bytes, False))  # JSON bytes, or JobError (4xx/503)
    pool.queue_depth(), pool.in_flight(), pool.stats               # for /metrics and tests
    pool.close()                                                   # every worker stopped and reaped

    InlinePool(predictor, settings)    # serve/inline_pool.py: the same interface in threads: create_app(predictor)

ProcessPool bounds every resource a request can take:
- CPU and memory: all parsing, decoding, preprocessing and inference run in `workers` processes (forkserver:
  forked from a clean process that has imported torch, Pillow and onnxruntime but started no threads), each of
  which loads the model itself from a ModelSpec (a path, a runtime, a thread count), caps its address space
  (worker.limit_memory) and runs its jobs one batch at a time with `threads` CPU threads.
- Waiting: at most `queue_size` jobs wait in this process for a worker; one more is refused at once with 503
  "server busy" (counted in stats.rejected) instead of queueing behind work that cannot finish in time.
- Time: every job has a deadline (Limits.inference_timeout_s from submission, queueing included), and gets its
  503 then. A job still queued, or handed to a worker that has not started it, is dropped (the worker skips it:
  serve/worker.py says how that is race-free); if the worker has started it, that worker is killed (SIGKILL), so
  nothing computes on after the answer and the process's memory goes back to the system. The other jobs it held
  are queued again (at most MAX_ATTEMPTS times each) and a fresh worker replaces it.
- The event loop only moves bytes: a job is handed to a per-worker sender thread (a pipe write can block while
  the worker computes), and answers are read with loop.add_reader when the worker's pipe is readable, so
  /healthz and the other routes never wait on the pool.

Why batching happens inside each worker, not in a dispatcher here (measured on 2 cores, ONNX Runtime, the shipped
model; docs/benchmarks.md): preparing one image (decode + preprocess) costs about 1 ms, the model 0.55 ms for one
image and 3.8 ms for 16 (0.24 ms each). A parent-side dispatcher would need a second trip through pipes for each
image (prepare in one process, 28x28 back here, into a model process, the answer back) and a process that only
runs the model, idle most of the time, to save 0.3 ms of the 1.5. In the worker the batch forms from jobs already
waiting in its pipe while it prepares the previous ones (the worker takes up to `max_batch`, waiting at most
`batch_wait_ms` for more), each job makes one round trip, and every worker both prepares and infers, so the
model's share of the CPU scales with the workers.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from digitlab.errors import DigitlabError
from digitlab.serve.jobs import job_kind
from digitlab.serve.pipe_frames import FrameReader
from digitlab.serve.settings import ServeSettings
from digitlab.serve.pool_settings import PoolBusy, PoolStats, PoolTimeout, WorkerCrash
from digitlab.serve.worker import ModelSpec, worker_main

log = logging.getLogger("digitlab.serve")

MAX_ATTEMPTS = 2  # a job whose worker died under it is tried once more, never more (a crashing input stops there)
STOP_TIMEOUT_S = 5.0  # how long close() lets workers finish their batch before killing them
PRELOAD = ["digitlab.serve.worker", "onnxruntime", "onnx", "digitlab.export"]  # imported once, in the forkserver


@dataclass(eq=False)
class _Job:
    id: int
    kind: str
    payload: Any
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = None
    worker: "_Worker | None" = None
    attempts: int = 0
    started: bool = False  # the worker has said "start": killing it is the only way to stop the job
    deadline: float = 0.0  # on time.monotonic(), which every process of the machine shares


_STOP = object()


class _Worker:
    """One worker process, its two pipes, and the thread that writes jobs into its pipe."""

    def __init__(self, slot: int, process, jobs, results):
        self.slot, self.process, self.jobs, self.results = slot, process, jobs, results
        self.reader: FrameReader | None = None  # once attached to the event loop
        self.pid: int = process.pid
        self.in_flight: dict[int, _Job] = {}
        self.ready = False
        self.dead = False
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_loop, name=f"digitlab-worker-{slot}-send", daemon=True)
        self.sender.start()

    def _send_loop(self) -> None:
        """Write jobs into the worker's pipe (this thread owns that end, and closes it)."""
        try:
            while (message := self.outbox.get()) is not _STOP:
                self.jobs.send(message)
        except OSError:  # the worker is gone; the pool notices on its results pipe
            pass
        finally:
            self.jobs.close()


class ProcessPool:
    """Worker processes, a bounded queue and per-job deadlines (see the module's docstring)."""

    def __init__(self, settings: ServeSettings):
        self.spec, self.settings, self.limits = settings.model, settings.pool, settings.limits
        if self.settings.workers < 1:
            raise ValueError("ProcessPool needs at least one worker; use InlinePool for none")
        self.stats = PoolStats()
        self.model_info: dict = {}
        # jobs handed to one worker and not yet answered: a batch, and one more waiting in its pipe, so that it never
        # idles for a round trip through this process (a job still waiting at its deadline is skipped, not killed)
        self.capacity = self.settings.max_batch + 1
        self._context = _mp_context()
        self._workers: list[_Worker | None] = [None] * self.settings.workers
        self._pending: deque[_Job] = deque()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ---- start and stop

    def start(self) -> "ProcessPool":
        """Start every worker and wait, blocking, until each has loaded the model: call before the server
        listens. A worker that cannot load it raises its one-line error here, as a DigitlabError."""
        try:
            for slot in range(self.settings.workers):
                self._workers[slot] = self._spawn(slot)
            deadline = time.monotonic() + self.settings.start_timeout_s
            for worker in self._workers:
                self._await_ready(worker, deadline)
        except BaseException:
            self.close()
            raise
        return self

    def _await_ready(self, worker: _Worker, deadline: float) -> None:
        if not worker.results.poll(max(0.0, deadline - time.monotonic())):
            raise DigitlabError(f"a serving worker did not load the model within {self.settings.start_timeout_s:g} s")
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            raise DigitlabError(f"a serving worker exited with code {worker.process.exitcode} while loading "
                                "the model") from None
        if message[0] == "failed":
            raise DigitlabError(message[1])
        self._on_ready(worker, message[1])

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the workers' answers on `loop` (the server's event loop; done by the app at startup)."""
        if self._loop is loop:
            return
        self._loop = loop
        for worker in self._workers:
            if worker is not None and not worker.dead:
                self._listen(worker)

    def close(self) -> None:
        """Stop every worker (let it finish its batch for up to STOP_TIMEOUT_S, then kill it) and reap it;
        jobs still waiting get 503. Safe to call twice, and from outside the loop once it has stopped."""
        if self._closed:
            return
        self._closed = True
        for job in self._pending:
            self._fail(job, PoolBusy("the server is shutting down"))
        self._pending.clear()
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            self._detach(worker)
            worker.outbox.put(None)  # the worker stops after its current batch
            worker.outbox.put(_STOP)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            for job in worker.in_flight.values():
                self._fail(job, PoolBusy("the server is shutting down"))
            self._release(worker)

    # ---- reading what the pool holds

    def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._pending)

    def in_flight(self) -> int:
        """Jobs handed to a worker and not yet answered."""
        return sum(len(w.in_flight) for w in self._workers if w is not None and not w.dead)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w is not None and not w.dead]

    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.ready and not w.dead)

    # ---- submitting

    async def submit(self, kind: str, payload: Any) -> bytes:
        """Run one job; its JSON answer, or JobError (refusal), PoolBusy, PoolTimeout (503) or WorkerCrash."""
        job_kind(kind)  # an unknown kind fails here, not in a worker
        if self._closed:
            raise PoolBusy("the server is shutting down")
        if len(self._pending) >= self.settings.queue_size:
            self.stats.rejected += 1
            raise PoolBusy()
        loop = asyncio.get_running_loop()
        self.attach(loop)
        job = _Job(next(self._ids), kind, payload, loop.create_future())
        job.timer = loop.call_at(loop.time() + self.limits.inference_timeout_s, self._expire, job)
        job.deadline = time.monotonic() + self.limits.inference_timeout_s
        self._pending.append(job)
        self.stats.submitted += 1
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: a queued job is dropped, a running one finishes
            if job.worker is None:  # (its deadline still holds: a stuck one is killed all the same)
                self._drop_pending(job)
            raise

    def _dispatch(self) -> None:
        """Hand queued jobs to the least busy ready workers, up to `capacity` each."""
        while self._pending:
            live = [w for w in self._workers if w is not None and w.ready and not w.dead
                    and len(w.in_flight) < self.capacity]
            if not live:
                return
            worker = min(live, key=lambda w: len(w.in_flight))
            job = self._pending.popleft()
            if job.future.done():
                continue
            job.worker = worker
            job.attempts += 1
            worker.in_flight[job.id] = job
            worker.outbox.put((job.id, job.kind, job.payload, job.deadline))

    # ---- answers, deadlines, deaths

    def _listen(self, worker: _Worker) -> None:
        worker.reader = FrameReader(worker.results.fileno())
        self._loop.add_reader(worker.results.fileno(), self._on_readable, worker)

    def _on_readable(self, worker: _Worker) -> None:
        if worker.dead or worker.reader is None:
            return
        try:
            messages, closed = worker.reader.read()
        except OSError as e:
            messages, closed = [], e
        for message in messages:
            if worker.dead:
                return
            self._on_message(worker, message)
        if closed:
            self._lost(worker, closed if isinstance(closed, OSError) else EOFError("its pipe closed"))

    def _on_message(self, worker: _Worker, message: tuple) -> None:
        if message[0] == "start":
            job = worker.in_flight.get(message[1])
            if job is not None:
                job.started = True
        elif message[0] == "ready":
            self._on_ready(worker, message[1])
            self._dispatch()
        elif message[0] == "failed":
            log.error("digitlab: a serving worker could not load the model: %s", message[1])
            self._retire(worker)
            self._loop.call_later(1.0, self._respawn, worker.slot)
        elif message[0] == "done":
            self._on_done(worker, message[1], message[2])

    def _on_ready(self, worker: _Worker, info: dict) -> None:
        worker.ready, worker.pid = True, info["pid"]
        self.model_info = self.model_info or info["model"]

    def _on_done(self, worker: _Worker, answers: list[tuple], calls: list[int]) -> None:
        self.stats.model_calls += len(calls)
        self.stats.batched += sum(calls)
        self.stats.largest_batch = max([self.stats.largest_batch, *calls])
        for job_id, status, value in answers:
            job = worker.in_flight.pop(job_id, None)
            if job is None:
                continue
            job.timer.cancel()
            self.stats.completed += 1
            if job.future.done():  # its client went away
                continue
            if status == "ok":
                job.future.set_result(value)
            elif status == "expired":  # the worker saw the deadline pass just before our timer did
                self.stats.timeouts += 1
                job.future.set_exception(PoolTimeout(self.limits.inference_timeout_s))
            elif status == "error":
                job.future.set_exception(value)
            else:
                job.future.set_exception(WorkerCrash(f"{value} in a serving worker"))
        self._dispatch()

    def _expire(self, job: _Job) -> None:
        """A job's deadline: 503 for it; if a worker has started it, that worker is killed."""
        worker = job.worker
        if worker is not None:
            self._on_readable(worker)  # a "start" already written must be seen before deciding
            if job.worker is worker and job.id not in worker.in_flight:
                return  # answered meanwhile
            worker = job.worker  # None if that worker died meanwhile and the job was queued again
        if worker is None:
            self._drop_pending(job)
        self.stats.timeouts += 1
        self._fail(job, PoolTimeout(self.limits.inference_timeout_s))
        if worker is None or worker.dead:
            return
        if not job.started:  # the worker will skip it; it stays counted on the worker until skipped
            return
        del worker.in_flight[job.id]
        log.warning("digitlab: killed serving worker %d: a request passed its %g s deadline", worker.pid,
                    self.limits.inference_timeout_s)
        self._retire(worker, kill=True)
        self._respawn(worker.slot)

    def _lost(self, worker: _Worker, error: BaseException) -> None:
        """The worker's pipe closed without our asking: it died (a crash, the OOM killer, a signal), or what it
        wrote cannot be read; either way it is killed (if still there) and replaced."""
        if worker.dead or self._closed:
            return
        self.stats.crashes += 1
        log.error("digitlab: serving worker %d stopped answering (%s); starting another", worker.pid,
                  f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        self._retire(worker, kill=True)
        self._respawn(worker.slot)

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        """Take a worker out of service (killing it if asked), queue its jobs again, reap it when it exits."""
        worker.dead = True
        self._detach(worker)
        if kill:
            worker.process.kill()
        worker.outbox.put(_STOP)
        for job in sorted(worker.in_flight.values(), key=lambda j: j.id, reverse=True):
            job.worker = None
            if job.future.done():
                job.timer.cancel()
            elif job.attempts >= MAX_ATTEMPTS:
                job.timer.cancel()
                self._fail(job, PoolBusy("the worker handling this request stopped; try again"))
            else:
                self._pending.appendleft(job)  # first in line: they waited longest
        worker.in_flight.clear()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.add_reader(worker.process.sentinel, self._reap, worker)

    def _reap(self, worker: _Worker) -> None:
        self._loop.remove_reader(worker.process.sentinel)
        worker.process.join(1)
        self._release(worker)

    def _respawn(self, slot: int) -> None:
        if self._closed:
            return
        try:
            worker = self._spawn(slot)
        except Exception as e:  # e.g. out of processes: try again shortly rather than stay a worker short
            log.error("digitlab: could not start a serving worker (%s); retrying in 1 s", e)
            self._loop.call_later(1.0, self._respawn, slot)
            return
        self._workers[slot] = worker
        self.stats.restarts += 1
        self._listen(worker)
        self._dispatch()

    # ---- processes

    def _spawn(self, slot: int) -> _Worker:
        jobs_r, jobs_w = self._context.Pipe(duplex=False)
        results_r, results_w = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main, name=f"digitlab-worker-{slot}", daemon=True,
            args=(self.spec, self.settings.worker_settings(), self.limits, jobs_r, results_w))
        process.start()
        jobs_r.close()  # the worker holds these ends now: its death closes them, which is how we notice it
        results_w.close()
        return _Worker(slot, process, jobs_w, results_r)

    def _detach(self, worker: _Worker) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(worker.results.fileno())

    def _release(self, worker: _Worker) -> None:
        worker.outbox.put(_STOP)  # the sender thread closes the jobs pipe
        worker.results.close()
        try:
            worker.process.close()
        except ValueError:  # still running: close() kills and joins it first
            pass

    def _drop_pending(self, job: _Job) -> None:
        try:
            self._pending.remove(job)
        except ValueError:
            pass
        if job.timer is not None:
            job.timer.cancel()

    @staticmethod
    def _fail(job: _Job, error: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(error)


def _mp_context():
    """forkserver where the OS has it: workers fork from a small clean process that preloaded the imports (fast
    restarts, no threads or sockets inherited from the server); spawn elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")
