"""Where the server's requests are computed: a pool of worker processes with bounded queues and real deadlines.

    pool = ProcessPool(ServeSettings(ModelSpec("runs/<run>"), PoolSettings(workers=2))).start()  # until ready
    body = await pool.submit("predict", ("upload", png_bytes, False))  # JSON bytes, or JobError (4xx/503)
    pool.queue_depth(), pool.in_flight(), pool.ready_workers(), pool.health(), pool.stats  # /metrics, /healthz
    pool.close()                                                   # every worker stopped and reaped

    InlinePool(predictor, settings)    # serve/inline_pool.py: the same interface (serve/pool_api.py) in threads

ProcessPool bounds every resource a request can take:
- CPU and memory: all parsing, decoding, preprocessing and inference run in `workers` processes (forkserver:
  forked from a clean process that has imported torch, Pillow and onnxruntime but started no threads), each of
  which loads the model itself from a ModelSpec (a path, a runtime, a thread count), caps its address space
  (worker.limit_memory) and runs its jobs one batch at a time with `threads` CPU threads.
- Waiting: at most `queue_size` predictions wait in this process for a worker; one more is refused at once with
  503 "server busy" (counted in stats.rejected) instead of queueing behind work that cannot finish in time.
- Expensive jobs (explain: Integrated Gradients with layers costs about a hundred predictions) have their own
  admission: at most `explain_queue_size` wait, in a queue of their own, and at most `explain_workers` workers
  hold one at a time (by default half the workers, at least one, and never the last worker free of them when
  there are two or more). A worker holding one takes no predictions until it has answered it, and the worker
  runs it alone, not in a batch (serve/worker.py). Each kind's time on a worker is followed (a moving average):
  one that would be answered past its deadline behind those ahead of it is refused at once, and one whose
  deadline is nearer than that time is answered 503 instead of being started. One that passes its deadline
  while running gets its 503 and is let finish (up to two more deadlines) rather than killed. So an explain flood
  is refused with quick 503s and costs predictions at most the workers it may hold; before, 100 explain clients
  starved 2 predicting ones entirely, and each explain killed at its deadline cost a worker's restart.
- Time: every job has a deadline (Limits.inference_timeout_s from submission, queueing included), and gets its
  503 then. A job still queued, or handed to a worker that has not started it, is dropped (the worker skips it:
  serve/messages.py says how that is race-free); if the worker has started it, that worker is killed (SIGKILL),
  so nothing computes on after the answer and the process's memory goes back to the system. The jobs it held and
  had not started are queued again (they cost nothing so far); jobs it had started are tried again once
  (MAX_ATTEMPTS), so a crashing input stops there. A worker that holds jobs and has said nothing for half a
  deadline (stopped, or wedged) is killed and replaced at the first of its jobs' deadlines.
- Readiness: the model is pinned by the sha256 of its checkpoint when the pool starts (serve/worker.py); a worker
  that cannot load it, or finds other bytes, is retried after 1, 2, 4 ... up to RESTART_DELAY_MAX_S seconds and
  logged at most once a LOG_EVERY_S per slot. While no worker is ready because loading fails, health() says why
  (GET /healthz answers 503) and submit() refuses at once with 503 instead of holding a request to its deadline.
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
from digitlab.serve.messages import Answer, Answers, Failed, FromWorker, Job, Ready, Started, Stop
from digitlab.serve.pipe_frames import FrameReader
from digitlab.serve.settings import ServeSettings
from digitlab.serve.pool_api import Health
from digitlab.serve.pool_settings import (PoolBusy, PoolStats, PoolTimeout, PoolUnavailable,
                                          WorkerCrash)
from digitlab.serve.worker import ModelSpec, model_sha256, worker_main

log = logging.getLogger("digitlab.serve")

MAX_ATTEMPTS = 2  # a job whose worker died while running it is tried once more, never more (a crashing input stops)
STOP_TIMEOUT_S = 5.0  # how long close() lets workers finish their batch before killing them
RESTART_DELAY_S = 1.0  # after a worker fails to load the model; doubled for each failure in a row ...
RESTART_DELAY_MAX_S = 60.0  # ... up to this
# a worker that holds jobs and has said nothing for this share of the deadline, when one of them expires, is stuck:
# a working one says Started for every job it takes, and a batch stops taking jobs after 25 ms of preparing
SILENT_FRACTION = 0.5
# an expensive job (explain) that has started is let run this many deadlines past its own before its worker is
# killed: its work is bounded, and on a machine short of CPU (it runs niced) it may take several
OVERRUN_DEADLINES = 2
LOG_EVERY_S = 60.0  # a slot that keeps failing is logged at most this often (its first failure at once)
PRELOAD = ["digitlab.serve.worker", "onnxruntime", "onnx", "digitlab.export"]  # imported once, in the forkserver


def restart_delay(failures: int) -> float:
    """Seconds before the next try after `failures` failed loads in a row: 1, 2, 4, ... at most a minute."""
    return min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** max(0, failures - 1))


@dataclass(eq=False)
class _Job:
    id: int
    kind: str
    payload: Any
    future: asyncio.Future
    expensive: bool = False  # its kind is admitted through the expensive queue (serve/jobs.py)
    timer: asyncio.TimerHandle | None = None
    worker: "_Worker | None" = None
    attempts: int = 0  # times a worker started it
    started: bool = False  # the worker has said Started: killing it is the only way to stop the job
    deadline: float = 0.0  # on time.monotonic(), which every process of the machine shares
    given_at: float = 0.0  # when it was handed to a worker

    def message(self) -> Job:
        return Job(self.id, self.kind, self.payload, self.deadline)


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
        self.released = False  # its process object and pipes are closed (reaped)
        self.warm: set[str] = set()  # expensive kinds it has run (their Explainer, say, is made already)
        self.last_heard = time.monotonic()  # its last message
        self.busy_since = time.monotonic()  # when it last went from no job to some
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

    @property
    def holds_expensive(self) -> bool:
        return any(job.expensive for job in self.in_flight.values())

    def give(self, job: _Job) -> None:
        if not self.in_flight:
            self.busy_since = time.monotonic()
        job.worker, job.given_at = self, time.monotonic()
        self.in_flight[job.id] = job
        self.outbox.put(job.message())

    def silent_for(self) -> float:
        """How long it has held jobs without saying anything."""
        return time.monotonic() - max(self.last_heard, self.busy_since)


class ProcessPool:
    """Worker processes, bounded queues and per-job deadlines (see the module's docstring)."""

    def __init__(self, settings: ServeSettings):
        self.spec, self.settings, self.limits = settings.model, settings.pool, settings.limits
        if self.settings.workers < 1:
            raise ValueError("ProcessPool needs at least one worker; use InlinePool for none")
        self.stats = PoolStats()
        self.model_info: dict = {}
        self.pinned: str | None = None  # the checkpoint's sha256 when the pool started
        # jobs handed to one worker and not yet answered: a batch, and one more waiting in its pipe, so that it never
        # idles for a round trip through this process (a job still waiting at its deadline is skipped, not killed)
        self.capacity = self.settings.max_batch + 1
        self._context = _mp_context()
        self._workers: list[_Worker | None] = [None] * self.settings.workers
        self._pending: deque[_Job] = deque()
        self._pending_expensive: deque[_Job] = deque()
        self._failures = [0] * self.settings.workers  # failed loads in a row, per slot
        self._logged_at = [float("-inf")] * self.settings.workers  # when each slot's failure was last logged
        self._load_error: str | None = None  # why the last load failed; None once a worker is ready again
        self._cost: dict[str, float] = {}  # expensive kind -> seconds one takes on its worker (moving average)
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ---- start and stop

    def start(self) -> "ProcessPool":
        """Pin the model's file, start every worker and wait, blocking, until each has loaded it: call before the
        server listens. A worker that cannot load it raises its one-line error here, as a DigitlabError."""
        try:
            self.pinned = model_sha256(self.spec)
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
        if isinstance(message, Failed):
            raise DigitlabError(message.message)
        self._on_ready(worker, message)

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
        self._fail_waiting(PoolBusy("the server is shutting down"))
        workers = [w for w in self._workers if w is not None and not w.released]  # a retired one may be reaped
        for worker in workers:
            self._detach(worker)
            worker.outbox.put(Stop())  # the worker stops after its current batch
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
        """Jobs waiting for a worker, expensive ones included."""
        return len(self._pending) + len(self._pending_expensive)

    def in_flight(self) -> int:
        """Jobs handed to a worker and not yet answered."""
        return sum(len(w.in_flight) for w in self._live())

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._live()]

    def ready_workers(self) -> int:
        return len(self._serving())

    def health(self) -> Health:
        """Whether a request sent now can be answered, and if not, why (GET /healthz). Workers being replaced
        (after a deadline's kill, say) still count as able: their jobs wait in the queue for the few seconds a
        worker takes to load the model, as they would behind a busy one."""
        if self._closed:
            return Health(False, "the server is shutting down")
        if self._serving():
            return Health(True)
        if self._load_error is not None:
            return Health(False, f"no serving worker can load the model: {self._load_error}")
        if not self._live():
            return Health(False, "no serving worker is running")
        return Health(True, "every serving worker is loading the model")

    def expensive_workers(self) -> int:
        """How many workers may hold an expensive job at once."""
        wanted = self.settings.explain_workers or max(1, self.settings.workers // 2)
        return max(1, min(wanted, self.settings.workers))

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if w is not None and not w.dead]

    def _serving(self) -> list[_Worker]:
        return [w for w in self._live() if w.ready]

    # ---- submitting

    async def submit(self, kind: str, payload: Any) -> bytes:
        """Run one job; its JSON answer, or JobError (refusal), PoolBusy, PoolTimeout, PoolUnavailable (503) or
        WorkerCrash."""
        expensive = job_kind(kind).expensive  # an unknown kind fails here, not in a worker
        self._admit(kind, expensive)
        loop = asyncio.get_running_loop()
        self.attach(loop)
        job = _Job(next(self._ids), kind, payload, loop.create_future(), expensive)
        job.timer = loop.call_at(loop.time() + self.limits.inference_timeout_s, self._expire, job)
        job.deadline = time.monotonic() + self.limits.inference_timeout_s
        self._queue_of(job).append(job)
        self.stats.submitted += 1
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: a queued job is dropped, a running one finishes
            if job.worker is None:  # (its deadline still holds: a stuck one is killed all the same)
                self._drop_pending(job)
            raise

    def _admit(self, kind: str, expensive: bool) -> None:
        """Refuse at once what cannot be answered in time: shutting down, no worker able to serve, a full queue,
        an expensive job that would wait behind others past its deadline."""
        if self._closed:
            raise PoolBusy("the server is shutting down")
        if self._load_error is not None and not self._serving():
            self.stats.unavailable += 1
            raise PoolUnavailable(self.health().reason)
        if expensive and (len(self._pending_expensive) >= self.settings.explain_queue_size
                          or self._expected_finish(kind) > self.limits.inference_timeout_s):  # (0 when none ahead)
            self.stats.rejected += 1
            raise PoolBusy("server busy: too many explanations are waiting; try again shortly")
        if not expensive and len(self._pending) >= self.settings.queue_size:
            self.stats.rejected += 1
            raise PoolBusy()

    def _expected_finish(self, kind: str) -> float:
        """Seconds until a new expensive job of `kind` would be answered: those ahead of it shared among the
        workers that may take them, then its own run (0 until one of its kind has been timed)."""
        cost = self._cost.get(kind, 0.0)
        ahead = len(self._pending_expensive) + sum(w.holds_expensive for w in self._serving())
        if not ahead:  # a worker for it is free: it runs at once, and its time is measured again
            return 0.0
        return (ahead / self.expensive_workers() + 1) * cost

    def _late(self, job: _Job) -> bool:
        """An expensive job that waited so long it would be answered past its deadline: refused rather than run for
        nobody. (Where one takes longer than a whole deadline, the one admitted to a free worker still runs: its
        time is measured again, and a less busy machine lets them in again.)"""
        cost = self._cost.get(job.kind, 0.0)
        return cost < self.limits.inference_timeout_s and job.deadline - time.monotonic() < cost

    def _queue_of(self, job: _Job) -> deque[_Job]:
        return self._pending_expensive if job.expensive else self._pending

    def _dispatch(self) -> None:
        """Hand queued jobs to ready workers: expensive ones to idle-most workers within their cap, the others
        to the least busy workers that hold no expensive job, up to `capacity` each."""
        self._dispatch_expensive()
        while self._pending:
            free = [w for w in self._serving() if not w.holds_expensive and len(w.in_flight) < self.capacity]
            if not free:
                return
            job = self._pending.popleft()
            if not job.future.done():
                min(free, key=lambda w: len(w.in_flight)).give(job)

    def _dispatch_expensive(self) -> None:
        while self._pending_expensive:
            serving = self._serving()
            holding = sum(w.holds_expensive for w in serving)
            free = [w for w in serving if not w.holds_expensive and len(w.in_flight) < self.capacity]
            # predictions keep a worker of their own wherever there are two or more
            if holding >= self.expensive_workers() or not free or (len(free) == 1 and len(serving) > 1):
                return
            job = self._pending_expensive.popleft()
            if job.future.done():
                continue
            if self._late(job):
                job.timer.cancel()
                self.stats.timeouts += 1
                self._fail(job, PoolTimeout(self.limits.inference_timeout_s))
                continue
            min(free, key=lambda w: (job.kind not in w.warm, len(w.in_flight))).give(job)  # warm ones first

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
        if messages:
            worker.last_heard = time.monotonic()
        for message in messages:
            if worker.dead:
                return
            self._on_message(worker, message)
        if closed:
            self._lost(worker, closed if isinstance(closed, OSError) else EOFError("its pipe closed"))

    def _on_message(self, worker: _Worker, message: FromWorker) -> None:
        if isinstance(message, Started):
            job = worker.in_flight.get(message.job_id)
            if job is not None:
                job.started = True
                job.attempts += 1
        elif isinstance(message, Answers):
            self._on_answers(worker, message)
        elif isinstance(message, Ready):
            self._on_ready(worker, message)
            self._dispatch()
        elif isinstance(message, Failed):
            self._on_failed(worker, message.message)

    def _on_ready(self, worker: _Worker, ready: Ready) -> None:
        if self.pinned is not None and ready.sha256 != self.pinned:  # the worker checks too; this is the backstop
            self._on_failed(worker, f"a serving worker loaded other bytes (sha256 {ready.sha256[:12]}) than the "
                                    f"server started with ({self.pinned[:12]})")
            return
        worker.ready, worker.pid = True, ready.pid
        self.model_info = self.model_info or ready.model
        self._failures[worker.slot] = 0
        self._load_error = None

    def _on_failed(self, worker: _Worker, reason: str) -> None:
        """A worker could not load the model: try again later, backing off, and say so within bounds."""
        self.stats.load_failures += 1
        self._failures[worker.slot] += 1
        self._load_error = reason
        delay = restart_delay(self._failures[worker.slot])
        self._log_failure(worker.slot, reason, delay)
        self._retire(worker, kill=True)
        if self._loop is not None and not self._closed:
            self._loop.call_later(delay, self._respawn, worker.slot)
        if not self._serving():  # nothing can answer the jobs waiting: they hear so now, not at their deadline
            self._fail_waiting(PoolUnavailable(self.health().reason))

    def _log_failure(self, slot: int, reason: str, delay: float) -> None:
        failures, now = self._failures[slot], time.monotonic()
        if failures > 1 and now - self._logged_at[slot] < LOG_EVERY_S:
            return
        self._logged_at[slot] = now
        tries = f" ({failures} tries in a row)" if failures > 1 else ""
        log.error("digitlab: a serving worker could not load the model%s: %s; trying again in %g s", tries, reason,
                  delay)

    def _on_answers(self, worker: _Worker, message: Answers) -> None:
        self.stats.model_calls += len(message.calls)
        self.stats.batched += sum(message.calls)
        self.stats.largest_batch = max([self.stats.largest_batch, *message.calls])
        for answer in message.answers:
            job = worker.in_flight.pop(answer.job_id, None)
            if job is not None:
                self._settle(job, answer)
        self._dispatch()

    def _settle(self, job: _Job, answer: Answer) -> None:
        job.timer.cancel()
        self.stats.completed += 1
        if job.expensive and answer.status == "ok":  # it ran alone: the time since it was given is its cost
            if job.worker is not None:
                job.worker.warm.add(job.kind)
            took, before = time.monotonic() - job.given_at, self._cost.get(job.kind)
            self._cost[job.kind] = took if before is None else 0.7 * before + 0.3 * took
        if job.future.done():  # its client went away
            return
        if answer.status == "ok":
            job.future.set_result(answer.value)
        elif answer.status == "expired":  # the worker saw the deadline pass just before our timer did
            self.stats.timeouts += 1
            job.future.set_exception(PoolTimeout(self.limits.inference_timeout_s))
        elif answer.status == "error":
            job.future.set_exception(answer.value)
        else:
            job.future.set_exception(WorkerCrash(f"{answer.value} in a serving worker"))

    def _expire(self, job: _Job) -> None:
        """A job's deadline: 503 for it; a worker that started it, or that has said nothing for half a deadline
        while holding jobs, is killed and replaced (its jobs not started go back to the queue). An expensive job
        that has started is let finish, up to OVERRUN_DEADLINES more (_overrun): its time is bounded by the image, the
        worker takes nothing else meanwhile, and a restart (the model loaded again, its Explainer made again)
        costs more than the rest of one explanation."""
        worker = job.worker
        if worker is not None:
            self._on_readable(worker)  # a Started already written must be seen before deciding
            if job.worker is worker and job.id not in worker.in_flight:
                return  # answered meanwhile
            worker = job.worker  # None if that worker died meanwhile and the job was queued again
        if worker is None:
            self._drop_pending(job)
        self.stats.timeouts += 1
        self._fail(job, PoolTimeout(self.limits.inference_timeout_s))
        if worker is None or worker.dead:
            return
        if job.started and job.expensive:  # bounded work: finishing it costs less than a restart would
            job.timer = self._loop.call_later(OVERRUN_DEADLINES * self.limits.inference_timeout_s, self._overrun, job)
            return
        if job.started:
            del worker.in_flight[job.id]
            log.warning("digitlab: killed serving worker %d: a request passed its %g s deadline", worker.pid,
                        self.limits.inference_timeout_s)
        elif worker.silent_for() >= SILENT_FRACTION * self.limits.inference_timeout_s:
            self.stats.unresponsive += 1
            log.warning("digitlab: killed serving worker %d: it held requests for %g s without answering", worker.pid,
                        worker.silent_for())
        else:  # the worker will skip it; it stays counted on the worker until skipped
            return
        self._retire(worker, kill=True)
        self._respawn(worker.slot)

    def _overrun(self, job: _Job) -> None:
        """An expensive job still running OVERRUN_DEADLINES after its own: its worker is killed and replaced."""
        worker = job.worker
        if worker is None or worker.dead or worker.in_flight.pop(job.id, None) is None:
            return
        log.warning("digitlab: killed serving worker %d: a %s request ran %g s past its deadline", worker.pid,
                    job.kind, OVERRUN_DEADLINES * self.limits.inference_timeout_s)
        self._retire(worker, kill=True)
        self._respawn(worker.slot)

    def _lost(self, worker: _Worker, error: BaseException) -> None:
        """The worker's pipe closed without our asking: it died (a crash, the OOM killer, a signal), or what it
        wrote cannot be read; either way it is killed (if still there) and replaced, at once if it had been
        serving, after the load-failure back-off if it died while loading the model."""
        if worker.dead or self._closed:
            return
        self.stats.crashes += 1
        why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if not worker.ready:
            self._on_failed(worker, f"a serving worker exited with code {worker.process.exitcode} while loading the "
                                    f"model ({why})")
            return
        log.error("digitlab: serving worker %d stopped answering (%s); starting another", worker.pid, why)
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
            self._requeue(job)
        worker.in_flight.clear()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.add_reader(worker.process.sentinel, self._reap, worker)

    def _requeue(self, job: _Job) -> None:
        """A job its worker will not answer: first in line again (it waited longest), unless it is answered
        already or has been started MAX_ATTEMPTS times (a job never started cost nothing and always goes back)."""
        job.worker = None
        if job.future.done():
            job.timer.cancel()
        elif job.started and job.attempts >= MAX_ATTEMPTS:
            job.timer.cancel()
            self._fail(job, PoolBusy("the worker handling this request stopped; try again"))
        else:
            job.started = False
            self._queue_of(job).appendleft(job)

    def _reap(self, worker: _Worker) -> None:
        self._loop.remove_reader(worker.process.sentinel)
        worker.process.join(1)
        self._release(worker)

    def _respawn(self, slot: int) -> None:
        if self._closed:
            return
        try:
            worker = self._spawn(slot)
        except Exception as e:  # e.g. out of processes: try again later rather than stay a worker short
            self._failures[slot] += 1
            delay = restart_delay(self._failures[slot])
            self._log_failure(slot, f"could not start a process ({e})", delay)
            self._loop.call_later(delay, self._respawn, slot)
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
            args=(self.spec, self.settings.worker_settings(), self.limits, jobs_r, results_w, self.pinned))
        process.start()
        jobs_r.close()  # the worker holds these ends now: its death closes them, which is how we notice it
        results_w.close()
        return _Worker(slot, process, jobs_w, results_r)

    def _detach(self, worker: _Worker) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(worker.results.fileno())

    def _release(self, worker: _Worker) -> None:
        worker.released = True
        worker.outbox.put(_STOP)  # the sender thread closes the jobs pipe
        worker.results.close()
        try:
            worker.process.close()
        except ValueError:  # still running: close() kills and joins it first
            pass

    def _drop_pending(self, job: _Job) -> None:
        try:
            self._queue_of(job).remove(job)
        except ValueError:
            pass
        if job.timer is not None:
            job.timer.cancel()

    def _fail_waiting(self, error: Exception) -> None:
        """Answer every queued job with `error` now."""
        for waiting in (self._pending, self._pending_expensive):
            for job in waiting:
                if job.timer is not None:
                    job.timer.cancel()
                self._fail(job, error)
            waiting.clear()

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
