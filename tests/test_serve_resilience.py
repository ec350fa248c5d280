"""The worker pool under abuse and mishap (serve/pool.py, worker.py, jobs.py): an explain flood leaves predictions
their own capacity; a body of many stray JSON keys is refused cheaply and briefly; a retrained run is not served
beside the model the server started with; a pool whose workers cannot load the model says so at /healthz and
refuses at once, backing off its restarts; a stopped worker is replaced; both pools implement one interface; a
job past its deadline costs only itself (the jobs its worker held are answered); an explanation past its deadline
is answered 503 and let finish on a worker that is not killed; /metrics counts restarts and unresponsive workers.

Pools run in this process on the fixture model (a small CNN), each test's on its own copy of the run folder where
the test changes it. Every wait is on an event (an answer, the pool's state, a /proc entry), bounded in time.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from fastapi.testclient import TestClient

from digitlab.serve import Limits, ModelSpec, PoolSettings, ProcessPool, ServeSettings
from digitlab.serve.jobs import JobError
from digitlab.serve.pool_settings import PoolBusy, PoolTimeout, PoolUnavailable

from test_serve_pool import huge_png, state, wait_until  # noqa: F401 (huge_png: a fixture)


def pixels_body(mnist, i: int) -> bytes:
    return json.dumps({"pixels": mnist.test_images[i].tolist()}).encode()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Let the event loop run (the pool reads its workers there) until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.02)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The fixture run, copied: a test may retrain it in place or move it away."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


#### 1. the explain flood


def test_explain_flood_leaves_predictions_their_capacity(trained_run, mnist):
    """30 explanations (Integrated Gradients with layers) submitted at once, then 8 predictions, on 2 workers: one
    explanation runs and 4 wait in their own queue, the other 25 are refused at once with 503; the predictions
    go to the worker that holds no explanation and are all answered before the last explanation is, none
    refused, no worker killed. Before, the explanations filled both workers' batches and the predictions were
    answered after them."""
    pool = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=2, explain_queue_size=4),
                                     Limits(inference_timeout_s=120))).start()
    finished: list[str] = []

    async def ask(kind: str, payload: tuple) -> str:
        try:
            await pool.submit(kind, payload)
            outcome = "ok"
        except PoolBusy:
            outcome = "busy"
        finished.append(f"{kind} {outcome}")
        return outcome

    async def flood() -> tuple[list[str], list[str]]:
        explains = [asyncio.create_task(ask("explain", (("pixels", pixels_body(mnist, i)), "ig", None, True)))
                    for i in range(30)]
        await asyncio.sleep(0)  # every explanation is submitted (each task runs to its first wait) ...
        predicts = [asyncio.create_task(ask("predict", ("pixels", pixels_body(mnist, i), False))) for i in range(8)]
        return await asyncio.gather(*explains), await asyncio.gather(*predicts)  # ... before any prediction

    try:
        explained, predicted = asyncio.run(flood())
        assert predicted == ["ok"] * 8, predicted
        assert explained.count("ok") == 5 and explained.count("busy") == 25, explained
        last_prediction = max(i for i, f in enumerate(finished) if f.startswith("predict"))
        last_explanation = max(i for i, f in enumerate(finished) if f == "explain ok")
        assert last_prediction < last_explanation, finished
        assert pool.stats.restarts == 0 and pool.stats.timeouts == 0, pool.stats
    finally:
        pool.close()


#### 2. a JSON body of many stray keys


def many_keys_body(keys: int = 200_000) -> bytes:
    """The 28x28 grid and `keys` more keys (~1.9 MB): each one an error to pydantic."""
    extra = ",".join(f'"{i:x}":0' for i in range(keys))
    return b'{"pixels":' + json.dumps([[0] * 28] * 28).encode() + b"," + extra.encode() + b"}"


def test_many_stray_keys_are_refused_cheaply_with_a_short_answer(predictor):
    """/api/predict with 200,000 extra keys: 422 naming the first, the first 10 listed and the count, in a few KB
    (was 16 MB), after at most 0.5 s of CPU in the code that checks it (was 2 s: pydantic reported every key)."""
    from digitlab.serve import create_app
    from digitlab.serve.jobs import JobError, prepare_pixels

    body = many_keys_body()
    assert len(body) < 2 * 1024 * 1024
    cpu = time.process_time()
    with pytest.raises(JobError) as refused:
        prepare_pixels(body)
    cpu = time.process_time() - cpu
    assert refused.value.status == 422 and cpu < 0.5, (refused.value.detail, cpu)
    with TestClient(create_app(predictor)) as client:
        r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and len(r.content) < 5_000, (r.status_code, len(r.content))
    answer = r.json()
    assert answer["error_count"] == 200_000 and len(answer["errors"]) == 10, answer
    assert answer["detail"] == "0: Extra inputs are not permitted (and 199,999 more)", answer["detail"]


@pytest.mark.parametrize("body, detail", [
    ({"pixels": [[0] * 28] * 28, "x": 1}, "x: Extra inputs are not permitted"),
    ({"pixels": [[0] * 28] * 29}, "pixels: List should have at most 28 items"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 5000]}, "pixels[27]: List should have at most 28 items"),
    ({"pixels": [[0] * 28] * 27}, "pixels: List should have at least 28 items"),  # pydantic's own
])
def test_odd_shapes_are_named_as_pydantic_names_them(predictor, body, detail):
    from digitlab.serve import create_app

    with TestClient(create_app(predictor)) as client:
        r = client.post("/api/predict", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text


#### 3. a run retrained under a running server


def retrain_in_place(run: Path) -> None:
    """Another model in the run's best.safetensors, written as digitlab writes checkpoints (a rename)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    best = run / "best.safetensors"
    with safe_open(str(best), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * -1.0
    save_file(tensors, str(run / "next.safetensors"), metadata=meta)
    os.replace(run / "next.safetensors", best)


def test_a_replacement_worker_refuses_a_retrained_model(run_copy, mnist):
    """The pool pins the checkpoint's sha256 at start: after the run is retrained in place, a worker replacing a
    dead one finds other bytes and refuses to serve them, and the pool says so (health, a 503 at once) instead
    of answering with two models while /api/model names the first."""
    pool = ProcessPool(ServeSettings(ModelSpec(str(run_copy)), PoolSettings(workers=1),
                                     Limits(inference_timeout_s=30))).start()
    described = dict(pool.model_info)

    async def scenario() -> None:
        assert json.loads(await pool.submit("predict", ("pixels", pixels_body(mnist, 0), False)))["label"] == 7
        retrain_in_place(run_copy)
        [pid] = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: pool.stats.load_failures >= 1, "the replacement's refusal")
        health = pool.health()
        assert not health.ok and "changed since the server started" in health.reason, health
        started = time.monotonic()
        with pytest.raises(PoolUnavailable):
            await pool.submit("predict", ("pixels", pixels_body(mnist, 0), False))
        assert time.monotonic() - started < 1

    try:
        asyncio.run(scenario())
        assert pool.model_info == described and pool.ready_workers() == 0
    finally:
        pool.close()


#### 4. no worker able to load the model


def metric(text: str, name: str) -> float:
    lines = [x for x in text.splitlines() if x.startswith(name + " ")]
    assert len(lines) == 1, f"/metrics has {len(lines)} {name} series"
    return float(lines[0].split()[1])


def test_no_loadable_model_is_reported_refused_at_once_and_retried_with_backoff(run_copy, mnist, caplog):
    """The run folder moved away and the worker killed: /healthz answers 503 with the reason, a prediction is
    refused at once (not at its 30 s deadline), /metrics shows no ready worker, the crash and the load failures,
    the failures are logged once (not twice a second) while the retries back off (1 s, 2 s, ...); once the
    folder is back, a worker loads it and the server answers again."""
    from digitlab.serve import create_app

    pool = ProcessPool(ServeSettings(ModelSpec(str(run_copy)), PoolSettings(workers=1),
                                     Limits(inference_timeout_s=30))).start()
    moved = run_copy.with_name("moved")
    caplog.set_level(logging.ERROR, logger="digitlab.serve")
    with TestClient(create_app(pool=pool)) as client:
        assert client.get("/healthz").status_code == 200
        run_copy.rename(moved)
        [pid] = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: client.get("/healthz").status_code == 503, "/healthz answering 503", 60)
        assert "does not exist" in client.get("/healthz").json()["detail"]
        started = time.monotonic()
        r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
        assert r.status_code == 503 and time.monotonic() - started < 2, (r.text, time.monotonic() - started)
        wait_until(lambda: pool.stats.load_failures >= 3, "three failed loads", 60)
        text = client.get("/metrics").text
        assert metric(text, "digitlab_workers_ready") == 0
        assert metric(text, "digitlab_worker_crashes_total") == 1
        assert metric(text, "digitlab_worker_load_failures_total") >= 3
        failures = [r for r in caplog.records if "could not load the model" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in caplog.records]
        moved.rename(run_copy)
        wait_until(lambda: client.get("/healthz").status_code == 200, "a worker ready again", 60)
        r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
        assert r.status_code == 200 and r.json()["label"] == 7, r.text
        assert metric(client.get("/metrics").text, "digitlab_workers_ready") == 1


def test_restart_delays_back_off_to_a_minute():
    from digitlab.serve.pool import restart_delay

    assert [restart_delay(n) for n in (1, 2, 3, 4, 7, 8, 100)] == [1, 2, 4, 8, 60, 60, 60]


#### 5. a stopped worker


def test_a_stopped_worker_is_replaced(trained_run, mnist):
    """One of two workers stopped (SIGSTOP): the predictions handed to it get their 503 at the 2 s deadline and
    it is killed and replaced (it held jobs a whole deadline without a word); the next round is all answered.
    Before, it was never replaced and kept taking half the jobs."""
    pool = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=2),
                                     Limits(inference_timeout_s=2))).start()
    stopped = pool.worker_pids()[0]

    async def round_of(n: int) -> list[str]:
        async def one(i: int) -> str:
            try:
                await pool.submit("predict", ("pixels", pixels_body(mnist, i), False))
                return "ok"
            except PoolBusy:
                return "busy"
            except Exception as e:
                return type(e).__name__

        return await asyncio.gather(*(one(i) for i in range(n)))

    async def scenario() -> tuple[list[str], list[str]]:
        first = await round_of(8)
        await until(lambda: pool.ready_workers() == 2, "a ready replacement")
        return first, await round_of(8)

    os.kill(stopped, signal.SIGSTOP)
    try:
        first, second = asyncio.run(scenario())
    finally:
        if state(stopped) not in (None, "Z"):
            os.kill(stopped, signal.SIGCONT)
        pool.close()
    assert "PoolTimeout" in first and second == ["ok"] * 8, (first, second)
    assert pool.stats.unresponsive == 1 and stopped not in pool.worker_pids(), pool.stats


#### 6. one interface


def test_both_pools_implement_the_pool_interface(predictor, trained_run):
    from digitlab.serve import InlinePool
    from digitlab.serve.pool_api import Health, WorkerPool

    inline = InlinePool(predictor)
    processes = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=1)))  # not started
    assert isinstance(inline, WorkerPool) and isinstance(processes, WorkerPool)
    assert inline.health() == Health(True) and inline.ready_workers() == 1
    assert not processes.health().ok and processes.ready_workers() == 0


#### 7. a job past its deadline


def started_on(pool: ProcessPool, payload) -> int | None:
    """The pid of the worker that has said Started for the job carrying `payload`, None until one has: the pool's
    own record (nothing outside it knows when a worker takes a job up)."""
    for worker in pool._workers:
        if worker is not None and not worker.dead:
            if any(job.payload is payload and job.started for job in worker.in_flight.values()):
                return worker.pid
    return None


async def outcome(pending) -> object:
    """A job's JSON answer (decoded), or the exception it ended with."""
    try:
        return json.loads(await pending)
    except Exception as e:
        return e


def test_a_late_job_costs_only_itself(trained_run, mnist, huge_png):
    """One worker holds, in this order: a body it refuses (422), a prediction, the 4096x4096 PNG (taken into one
    batch: it gathers one for up to 0.5 s), and three more predictions queued behind them. The worker is stopped
    (SIGSTOP) once it has started the PNG, so the PNG passes its deadline while running: it alone gets the 503,
    and its worker is killed and replaced. The refusal was answered before the kill (answers are sent per job),
    the prediction it had started is tried again, the three it had not started are queued again, and all four
    get their own label. The refusal and the PNG have a 3 s deadline, the predictions 60 s (the pool reads the
    deadline at each submission: as if they had arrived long after the PNG), so that how soon the replacement
    loads the model never decides. Before, the refusal waited for its batch's end, was lost with the worker
    and got a 503."""
    long = Limits(inference_timeout_s=60)
    pool = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=1, batch_wait_ms=500),
                                     long)).start()
    [worker] = pool.worker_pids()
    late = ("upload", huge_png, False)
    bodies = [("pixels", pixels_body(mnist, i), False) for i in range(4)]

    async def scenario() -> tuple[list[int], list]:
        warm = await asyncio.gather(*(pool.submit("predict", b) for b in bodies))
        expected = [json.loads(a)["label"] for a in warm]  # the model's own labels
        short = replace(long, inference_timeout_s=3)
        pool.limits = short
        refused = asyncio.create_task(outcome(pool.submit("predict", ("pixels", b'{"pixels": [[0]]}', False))))
        await asyncio.sleep(0)  # submitted first ...
        pool.limits = long
        started = asyncio.create_task(outcome(pool.submit("predict", bodies[0])))
        await asyncio.sleep(0)  # ... then the prediction batched with the PNG ...
        pool.limits = short
        png = asyncio.create_task(outcome(pool.submit("predict", late)))
        await until(lambda: started_on(pool, late) is not None, "the worker starting the PNG")
        os.kill(worker, signal.SIGSTOP)  # the PNG runs past its deadline, whatever the machine's speed
        pool.limits = long
        queued = [asyncio.create_task(outcome(pool.submit("predict", b))) for b in bodies[1:]]
        await until(lambda: pool.queue_depth() == 0, "the three predictions handed to the stopped worker")
        return expected, await asyncio.gather(refused, png, started, *queued)

    try:
        expected, (refused, png, *predicted) = asyncio.run(scenario())
    finally:
        if state(worker) not in (None, "Z"):
            os.kill(worker, signal.SIGCONT)
        pool.close()
    assert isinstance(refused, JobError) and refused.status == 422, refused
    assert isinstance(png, PoolTimeout), png
    assert [p.get("label") if isinstance(p, dict) else p for p in predicted] == expected, predicted
    assert pool.stats.timeouts == 1 and pool.stats.restarts == 1 and pool.stats.crashes == 0, pool.stats
    assert worker not in pool.worker_pids()


def test_an_explanation_past_its_deadline_is_let_finish_on_its_worker(trained_run, mnist, huge_png):
    """An explanation (of the 4096x4096 PNG) whose worker is stopped (SIGSTOP) once it has started it: it gets its
    503 at the 5 s deadline, its worker is not killed (an explanation's work is bounded, and it may run two more
    deadlines), the other worker answers predictions meanwhile, and once continued the worker finishes it and
    serves on: the same two pids, no restart, predictions and a new explanation answered. Before, the worker was
    killed at the deadline and replaced (the model loaded again)."""
    pool = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=2),
                                     Limits(inference_timeout_s=5))).start()
    pids = pool.worker_pids()
    explain = (("upload", huge_png), "ig", None, True)
    stopped: list[int] = []

    def predictions() -> list:
        return [outcome(pool.submit("predict", ("pixels", pixels_body(mnist, i), False))) for i in range(4)]

    async def scenario() -> tuple[object, list, list, object]:
        late = asyncio.create_task(outcome(pool.submit("explain", explain)))
        await until(lambda: started_on(pool, explain) is not None, "a worker starting the explanation")
        stopped.append(started_on(pool, explain))
        os.kill(stopped[0], signal.SIGSTOP)
        meanwhile = await asyncio.gather(*predictions())
        answer = await late
        if state(stopped[0]) not in (None, "Z"):
            os.kill(stopped[0], signal.SIGCONT)
        await until(lambda: pool.in_flight() == 0, "the explanation finished after its 503", 30)
        after = await asyncio.gather(*predictions())
        again = await outcome(pool.submit("explain", (("pixels", pixels_body(mnist, 0)), "ig", None, True)))
        return answer, meanwhile, after, again

    try:
        answer, meanwhile, after, again = asyncio.run(scenario())
    finally:
        if stopped and state(stopped[0]) not in (None, "Z"):
            os.kill(stopped[0], signal.SIGCONT)
        pool.close()
    assert isinstance(answer, PoolTimeout), answer
    assert pool.stats.restarts == 0 and pool.worker_pids() == pids, (pool.stats, pids, pool.worker_pids())
    assert pool.stats.timeouts == 1 and pool.stats.crashes == 0, pool.stats
    labels = [int(mnist.test_labels[i]) for i in range(4)]
    for answers in (meanwhile, after):
        assert all(isinstance(a, dict) for a in answers), answers
        assert sum(a["label"] == w for a, w in zip(answers, labels)) >= 3, (answers, labels)
    assert isinstance(again, dict) and again["maps"], again


#### 8. workers' lives in /metrics


def test_metrics_count_restarts_and_unresponsive_workers(trained_run, mnist):
    """/metrics: no restart at first; the first worker stopped (SIGSTOP) and given a prediction (both idle, the
    first takes it) holds it a whole 2 s deadline without a word: 503, the worker killed as unresponsive and
    replaced (restarts 1, unresponsive 1); the second worker killed (SIGKILL): a crash, replaced (restarts 2,
    crashes 1, unresponsive still 1); then the server answers again."""
    from digitlab.serve import create_app

    pool = ProcessPool(ServeSettings(ModelSpec(str(trained_run)), PoolSettings(workers=2),
                                     Limits(inference_timeout_s=2))).start()
    body = {"pixels": mnist.test_images[0].tolist()}
    with TestClient(create_app(pool=pool)) as client:
        def counts() -> tuple[float, float, float]:
            text = client.get("/metrics").text
            return tuple(metric(text, f"digitlab_worker_{name}_total") for name in ("restarts", "unresponsive",
                                                                                    "crashes"))

        assert counts() == (0, 0, 0)
        first, second = pool.worker_pids()
        os.kill(first, signal.SIGSTOP)
        try:
            r = client.post("/api/predict", json=body)
        finally:
            if state(first) not in (None, "Z"):
                os.kill(first, signal.SIGCONT)
        assert r.status_code == 503, r.text
        wait_until(lambda: first not in pool.worker_pids() and pool.ready_workers() == 2, "a ready replacement")
        assert counts() == (1, 1, 0)
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: second not in pool.worker_pids() and pool.ready_workers() == 2, "a second replacement")
        assert counts() == (2, 1, 1)
        r = client.post("/api/predict", json=body)
        assert r.status_code == 200 and r.json()["label"] == 7, r.text
