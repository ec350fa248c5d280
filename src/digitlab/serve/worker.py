"""A serving worker process: loads the model once, then runs jobs (serve/jobs.py) in micro-batches until told to
stop or its parent goes away. Started by serve/pool.py's ProcessPool; nothing here runs in the serving process.

What crosses the two one-way pipes is in serve/messages.py: Job and Stop come in; Ready or Failed goes out once,
then Started before each job is looked at, and Answers as soon as they exist. The worker says Started and only
then checks the deadline, skipping a job that has passed it: so when the parent, at a job's deadline, has not
seen its Started, the job will never run (no kill needed); when it has, the worker may be computing it and is
killed.

The model is pinned: the parent hashes the checkpoint file when the pool starts (model_sha256), and a worker
hashes the file before and after loading it; one that finds other bytes (the run was retrained in place) says
Failed(changed=True) instead of serving a second model beside the first.

Batching happens here, in the worker: it blocks for one job, prepares it (decode + preprocess, the costly part),
then takes more jobs, preparing each: those already waiting in its pipe at once, new arrivals until `batch_wait_s`
after the batch began; it stops at `max_batch` jobs or once the batch has spent PREPARE_BUDGET_S preparing, or
`batch_wait_s` if that is longer (a slow upload closes its batch instead of holding the others back longer than
the wait the operator chose; CPU time, so a busy machine does not close batches early), and runs the model once
on all of them. Under load the jobs are already waiting, so the wait costs nothing; a lone request waits at most
`batch_wait_s`. An expensive job (explain) is never in a batch: one arriving while a batch forms closes it and
runs alone after it, its answer sent the moment it is done, so predictions never wait for an explanation that
happens to share their batch.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import os
import resource
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from digitlab.errors import ConfigError, DigitlabError
from digitlab.serve.jobs import JobError, WorkerContext, job_kind
from digitlab.serve.limits import Limits
from digitlab.serve.messages import Answer, Answers, Failed, Job, Ready, Started, Stop

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
EXPENSIVE_NICE = 5  # the niceness expensive jobs (explain) run at, in a thread of their own
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


class ModelChanged(DigitlabError):
    """The checkpoint file holds other bytes than when the pool started."""


def checkpoint_file(spec: ModelSpec) -> Path:
    """The one file a ModelSpec's model is read from (a run folder's best or last checkpoint, or the shipped
    weights); a RunError naming what is missing."""
    from digitlab.checkpoint import resolve_checkpoint
    from digitlab.predict import DEFAULT_WEIGHTS

    return resolve_checkpoint(spec.run if spec.run is not None else DEFAULT_WEIGHTS, spec.checkpoint)


def model_sha256(spec: ModelSpec) -> str:
    """The sha256 of the checkpoint file: what the pool pins its workers to when it starts."""
    digest = hashlib.sha256()
    with open(checkpoint_file(spec), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_pinned(spec: ModelSpec, limits: Limits, pinned: str | None) -> tuple[WorkerContext, str]:
    """load_context, and the file's sha256, checked against `pinned` (None: whatever is there) before and after
    loading: a file replaced while it was read is caught by the second check (digitlab writes checkpoints by
    renaming a finished file over the old one, so the bytes read are one version or the other)."""
    before = model_sha256(spec)
    _check_pin(spec, pinned, before)
    ctx = load_context(spec, limits)
    after = model_sha256(spec)
    _check_pin(spec, pinned, after)
    return ctx, after


def _check_pin(spec: ModelSpec, pinned: str | None, found: str) -> None:
    if pinned is not None and found != pinned:
        raise ModelChanged(f"{checkpoint_file(spec)} changed since the server started (sha256 {found[:12]}, "
                           f"serving {pinned[:12]}); restart the server to serve the new model")


def load_context(spec: ModelSpec, limits: Limits) -> WorkerContext:
    """The predictor, loaded here from its file, with `spec.threads` CPU threads, warmed up by one call."""
    import torch

    from digitlab.predict import Predictor

    torch.set_num_threads(max(1, spec.threads))
    predictor = Predictor.from_path(spec.run, spec.checkpoint, runtime=spec.runtime, threads=spec.threads,
                                    vetted_sha256=spec.vetted_sha256)
    check_servable(predictor, spec.run)
    predictor.probabilities(np.zeros((1, 28, 28), np.uint8))  # the first call builds lazily made parts
    return WorkerContext(predictor, limits, predictor.describe())


def check_servable(predictor, source: str | None) -> None:
    """The page's canvas and /api/predict's pixels are 28x28 grey, and uploads are made MNIST-like: a model of
    another shape is refused in one line when the server starts, not with a reshape error at its first request."""
    shape = predictor.info.shape
    if not shape.is_mnist:
        height, width = shape.image_size
        raise ConfigError(f"{source or 'the model'} reads {shape.num_classes} classes of {shape.in_chans}x{height}x"
                          f"{width} images; digitlab serve answers models of MNIST's shape (10 classes of 1x28x28 "
                          "images): use `digitlab predict` or digitlab.Predictor for this one")


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
                results: Connection, pinned: str | None = None) -> None:
    """The worker process's entry point; `pinned`: the checkpoint's sha256 when the pool started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group; the parent stops us
    try:
        ctx, sha256 = load_pinned(spec, limits, pinned)
    except Exception as e:  # reported to the parent, which turns it into a one-line error
        message = str(e) if isinstance(e, DigitlabError) else f"{type(e).__name__}: {e}"
        results.send(Failed(message, changed=isinstance(e, ModelChanged)))
        return
    gc.collect()
    tune_allocator()
    limit_memory(settings.memory_mb)
    results.send(Ready(os.getpid(), ctx.model_info, sha256))
    try:
        serve(ctx, jobs, results, settings)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away: nothing is left to answer


def serve(ctx: WorkerContext, jobs: Connection, results: Connection, settings: WorkerSettings) -> None:
    """Answer jobs until Stop arrives or the pipe closes: expensive ones alone, the others in batches."""
    held: Job | None = None  # an expensive job that closed the batch before it: it runs next
    while True:
        message = held or jobs.recv()
        held = None
        if isinstance(message, Stop):
            return
        if job_kind(message.kind).expensive:
            run_alone(ctx, message, results)
            continue
        held, stop = run_batch(ctx, message, jobs, results, settings)
        if stop:
            return


def run_alone(ctx: WorkerContext, job: Job, results: Connection) -> None:
    """One expensive job, answered as soon as it is done; it runs in a thread of lower CPU priority."""
    ready: list[tuple] = []
    prepare(ctx, job, ready, results)
    if ready:
        results.send(Answers(expensive_thread().submit(run, ctx, ready).result(), [1]))


@functools.cache
def expensive_thread() -> ThreadPoolExecutor:
    """The thread expensive jobs run in, niced by EXPENSIVE_NICE: on a machine short of CPU, the server process
    and the workers answering predictions go first. A thread of its own because niceness cannot be lowered
    again without privileges, and the worker's main thread must keep its own for the predictions it batches."""
    return ThreadPoolExecutor(1, thread_name_prefix="digitlab-expensive", initializer=lower_priority)


def lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXPENSIVE_NICE)  # this thread only, on Linux
    except (OSError, AttributeError):
        pass


def run_batch(ctx: WorkerContext, first: Job, jobs: Connection, results: Connection,
              settings: WorkerSettings) -> tuple[Job | None, bool]:
    """Gather a batch after `first` (see the module's docstring), run it, send its answers. Returns an expensive
    job that arrived meanwhile (it runs next, alone), and whether Stop arrived."""
    ready: list[tuple] = []
    began, cpu = time.monotonic(), time.process_time()
    prepare(ctx, first, ready, results)
    preparing = time.process_time() - cpu  # CPU time: on a busy machine, wall time would close batches early
    held, stop = None, False
    budget = max(PREPARE_BUDGET_S, settings.batch_wait_s)  # never closes a batch sooner than its wait would
    while len(ready) < settings.max_batch and preparing < budget:
        if not jobs.poll(max(0.0, began + settings.batch_wait_s - time.monotonic())):  # waiting: taken at once
            break
        message = jobs.recv()
        if isinstance(message, Stop):
            stop = True
            break
        if job_kind(message.kind).expensive:
            held = message
            break
        cpu = time.process_time()
        prepare(ctx, message, ready, results)
        preparing += time.process_time() - cpu  # a slow upload closes its batch rather than delay the others
    if ready:
        answers = run(ctx, ready)
        results.send(Answers(answers, calls_of(ready)))
    return held, stop


def calls_of(ready: list[tuple]) -> list[int]:
    """Items per model call: one call per job kind in the batch, as run() makes them."""
    kinds = [kind for _, kind, _ in ready]
    return [kinds.count(kind) for kind in dict.fromkeys(kinds)]


def prepare(ctx: WorkerContext, job: Job, ready: list[tuple], results: Connection) -> bool:
    """Prepare one job onto `ready` as (job_id, kind, item); a refusal is answered at once. True if prepared."""
    results.send(Started(job.id))  # first: see the module's docstring
    if time.monotonic() >= job.deadline:
        results.send(Answers([Answer(job.id, "expired")]))
        return False
    try:
        ready.append((job.id, job.kind, job_kind(job.kind).prepare(ctx, job.payload)))
        return True
    except JobError as e:
        answer = Answer(job.id, "error", e)
    except MemoryError:
        answer = Answer(job.id, "error", JobError(413, "the request needs more memory than a worker may use"))
    except Exception as e:  # a bug: logged here with its traceback, answered 500 without one
        traceback.print_exc(file=sys.stderr)
        answer = Answer(job.id, "crash", type(e).__name__)
    results.send(Answers([answer]))
    return False


def run(ctx: WorkerContext, ready: list[tuple]) -> list[Answer]:
    """One `run` call per job kind among the prepared jobs; an answer for each."""
    done: list[Answer] = []
    for kind in dict.fromkeys(k for _, k, _ in ready):
        part = [(job_id, item) for job_id, k, item in ready if k == kind]
        try:
            answers = job_kind(kind).run(ctx, [item for _, item in part])
            done.extend(Answer(job_id, "error" if isinstance(answer, JobError) else "ok", answer)  # one refused
                        for (job_id, _), answer in zip(part, answers))
        except JobError as e:
            done.extend(Answer(job_id, "error", e) for job_id, _ in part)
        except MemoryError:
            error = JobError(413, "the request needs more memory than a worker may use")
            done.extend(Answer(job_id, "error", error) for job_id, _ in part)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            done.extend(Answer(job_id, "crash", type(e).__name__) for job_id, _ in part)
    return done
