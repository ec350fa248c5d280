"""What a ProcessPool (serve/pool.py) and its worker processes (serve/worker.py) say to each other over their two
one-way pipes: small frozen dataclasses, pickled by multiprocessing's Connection. Plain data only (bytes, str,
numbers, dicts, JobError), so a message means the same in both processes and a field is named where it is read.

    parent -> worker   Job ... Stop
    worker -> parent   Ready or Failed, once, after loading the model; then per job Started, and Answers

A worker says Started(job_id) before it looks at a job, and only then checks the job's deadline (skipping it when
passed): so a job whose Started the parent has not seen at its deadline will never run, and one whose Started it
has seen may be running (see serve/pool.py). Answers go back as soon as they exist: a refusal when the job is
prepared, a batch's answers after its one model call, an expensive job's (explain) right after it ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "crash", "expired"]


@dataclass(frozen=True)
class Job:
    """One request for a worker; `deadline` is on time.monotonic(), one clock for every process of the machine."""

    id: int
    kind: str
    payload: Any
    deadline: float


@dataclass(frozen=True)
class Stop:
    """Finish the batch in hand, then exit."""


@dataclass(frozen=True)
class Ready:
    pid: int
    model: dict  # Predictor.describe(): what GET /api/model answers
    sha256: str  # of the checkpoint file the worker loaded


@dataclass(frozen=True)
class Failed:
    """The worker could not load the model, or found a file other than the one the pool was started with."""

    message: str  # one line, for the log and /healthz
    changed: bool = False  # the checkpoint's content differs from the one pinned at start


@dataclass(frozen=True)
class Started:
    job_id: int


@dataclass(frozen=True)
class Answer:
    job_id: int
    status: Status
    value: Any = None  # "ok": the JSON body (bytes); "error": a JobError; "crash": the exception's type name


@dataclass(frozen=True)
class Answers:
    """Answers that are ready together, and the size of each model call that made them (for the counters)."""

    answers: list[Answer]
    calls: list[int] = field(default_factory=list)


ToWorker = Job | Stop
FromWorker = Ready | Failed | Started | Answers
