"""A serving worker process: loads the model once, then runs jobs (serve/jobs.py) in micro-batches until told to
stop or its parent goes away. Started by serve/pool.py's ProcessPool; nothing here runs in the serving process.

Protocol, over two one-way pipes (multiprocessing Connections, pickled plain data only):
    parent -> worker   (job_id, kind, payload, deadline) ... None (stop)
    worker -> parent   ("ready", {"pid", "model", "memory_cap"}) or ("failed", message), once at start; then
                       ("start", job_id) before touching a job, and per batch
                       ("done", [(job_id, "ok", json_bytes) | (job_id, "error", JobError) | (job_id, "crash", name)
                                 | (job_id, "expired", None)], [items per model call])

`deadline` is on time.monotonic(), one clock for every process of the machine. The worker says "start" and only
then checks the deadline, skipping a job that has passed it: so when the parent, at a job's deadline, has not
seen its "start", the job will never run (no kill needed); when it has, the worker is (or may be) computing it
and is killed.

Batching happens here, in the worker: it blocks for one job, prepares it (decode + preprocess, the costly part),
then takes more jobs, preparing each: those already waiting in its pipe at once, new arrivals until `batch_wait_s`
after the batch began; it stops at `max_batch` jobs or once the batch has spent PREPARE_BUDGET_S preparing, or
`batch_wait_s` if that is longer (a slow upload closes its batch instead of holding the others back longer than
the wait the operator chose; CPU time, so a busy machine does not close batches early), and runs the model once
on all of them. Under
load the jobs are already waiting, so the wait costs nothing; a lone request waits at most `batch_wait_s`.
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from digitlab.errors import DigitlabError
from digitlab.serve.jobs import JobError, WorkerContext, job_kind
from digitlab.serve.limits import Limits

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PREPARE_BUDGET_S = 0.025  # a batch takes no more jobs once it has spent this much CPU preparing (~25 small images)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a run folder, .safetensors or exported .onnx file (None: the shipped model), never a
    model object."""

    run: str | None = None
    checkpoint: str = "best"
    runtime: str = "onnx"
    threads: int = 1  # CPU threads per model call, in each worker
    vetted_sha256: str | None = None  # an .onnx file's bytes the parent vetted (server.start_pool): no probe again


@dataclass(frozen=True)
class WorkerSettings:
    max_batch: int = 16  # jobs run through the model in one call
    batch_wait_s: float = 0.002  # how long a batch waits for more jobs once one is prepared
    memory_mb: int = 1024  # address space a worker may add after loading its model (RLIMIT_AS); 0: no cap


def load_context(spec: ModelSpec, limits: Limits) -> WorkerContext:
    """The predictor, loaded here from its file, with `spec.threads` CPU threads, warmed up by one call."""
    import torch

    from digitlab.predict import Predictor

    torch.set_num_threads(max(1, spec.threads))
    predictor = Predictor.from_path(spec.run, spec.checkpoint, runtime=spec.runtime, threads=spec.threads,
                                    vetted_sha256=spec.vetted_sha256)
    predictor.probabilities(np.zeros((1, 28, 28), np.uint8))  # the first call builds lazily made parts
    return WorkerContext(predictor, limits, predictor.describe())


def tune_allocator() -> None:
    """Give memory back after a large image: glibc serves allocations of 1 MiB and more from mmap (returned to the
    system on free; by default its threshold grows to 32 MiB, keeping freed image buffers in the heap), and the
    garbage of loading the model is trimmed. No-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def vm_size() -> int:
    """This process's address space in bytes (VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def limit_memory(extra_mb: int) -> int | None:
    """Cap the address space at what the loaded model takes plus `extra_mb`: a backstop, should a decode or the
    cleaning ever need more than the pixel budget allows, that turns into a MemoryError (413), not a swapping
    machine. Returns the cap in bytes (None: no cap, or no /proc to measure from)."""
    if extra_mb <= 0:
        return None
    try:
        cap = vm_size() + extra_mb * 2**20
    except OSError:
        return None
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def worker_main(spec: ModelSpec, settings: WorkerSettings, limits: Limits, jobs: Connection,
                results: Connection) -> None:
    """The worker process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group; the parent stops us
    try:
        ctx = load_context(spec, limits)
    except Exception as e:  # reported to the parent, which turns it into a one-line error
        results.send(("failed", str(e) if isinstance(e, DigitlabError) else f"{type(e).__name__}: {e}"))
        return
    gc.collect()
    tune_allocator()
    cap = limit_memory(settings.memory_mb)
    results.send(("ready", {"pid": os.getpid(), "model": ctx.model_info, "memory_cap": cap}))
    try:
        serve(ctx, jobs, results, settings)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away: nothing is left to answer


def serve(ctx: WorkerContext, jobs: Connection, results: Connection, settings: WorkerSettings) -> None:
    """Answer batches of jobs until a None arrives or the pipe closes."""
    while True:
        message = jobs.recv()
        if message is None:
            return
        done: list[tuple] = []
        ready: list[tuple] = []
        began, cpu = time.monotonic(), time.process_time()
        prepare(ctx, message, ready, done, results)
        preparing = time.process_time() - cpu  # CPU time: on a busy machine, wall time would close batches early
        stop = False
        budget = max(PREPARE_BUDGET_S, settings.batch_wait_s)  # never closes a batch sooner than its wait would
        while len(ready) + len(done) < settings.max_batch and preparing < budget:
            if not jobs.poll(max(0.0, began + settings.batch_wait_s - time.monotonic())):  # waiting: taken at once
                break
            message = jobs.recv()
            if message is None:
                stop = True
                break
            cpu = time.process_time()
            prepare(ctx, message, ready, done, results)
            preparing += time.process_time() - cpu  # a slow upload closes its batch rather than delay the others
        calls = run(ctx, ready, done)
        results.send(("done", done, calls))
        if stop:
            return


def prepare(ctx: WorkerContext, message: tuple, ready: list[tuple], done: list[tuple], results: Connection) -> None:
    """Prepare one job: onto `ready` as (job_id, kind, item), or its refusal onto `done`."""
    job_id, kind, payload, deadline = message
    results.send(("start", job_id))  # first: see the module's docstring
    if time.monotonic() >= deadline:
        done.append((job_id, "expired", None))
        return
    try:
        ready.append((job_id, kind, job_kind(kind).prepare(ctx, payload)))
    except JobError as e:
        done.append((job_id, "error", e))
    except MemoryError:
        done.append((job_id, "error", JobError(413, "the request needs more memory than a worker may use")))
    except Exception as e:  # a bug: logged here with its traceback, answered 500 without one
        traceback.print_exc(file=sys.stderr)
        done.append((job_id, "crash", type(e).__name__))


def run(ctx: WorkerContext, ready: list[tuple], done: list[tuple]) -> list[int]:
    """One `run` call per job kind in the batch; returns how many items each call took."""
    calls = []
    for kind in dict.fromkeys(k for _, k, _ in ready):
        part = [(job_id, item) for job_id, k, item in ready if k == kind]
        try:
            answers = job_kind(kind).run(ctx, [item for _, item in part])
            done.extend((job_id, "error" if isinstance(answer, JobError) else "ok", answer)  # one item refused
                        for (job_id, _), answer in zip(part, answers))
        except JobError as e:
            done.extend((job_id, "error", e) for job_id, _ in part)
        except MemoryError:
            error = JobError(413, "the request needs more memory than a worker may use")
            done.extend((job_id, "error", error) for job_id, _ in part)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            done.extend((job_id, "crash", type(e).__name__) for job_id, _ in part)
        calls.append(len(part))
    return calls
