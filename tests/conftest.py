"""Shared fixtures: MNIST read once per session, a small model trained once per session, a real
`digitlab serve` on 127.0.0.1, and a real PostgreSQL server (tests/postgres_server.py). Plain helpers (free port,
MNIST slices, PNG bytes, the renderer) are in helpers.py. A test marked slow may run for SLOW_TIMEOUT_S instead of
pyproject.toml's timeout."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, free_port
from postgres_server import PostgresServer

SERVER_START_TIMEOUT_S = 60
SLOW_TIMEOUT_S = 1200  # a slow test trains on real MNIST; on a busy 2-core machine a full epoch takes minutes


def pytest_collection_modifyitems(items):
    """A test marked slow gets SLOW_TIMEOUT_S unless it sets its own @pytest.mark.timeout."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST (data/mnist in the repo), read once per session; a missing dataset fails, never skips.
    Shared by every test that asks: take slices (helpers.mnist_slice), never change its tensors in place."""
    from digitlab.data import load_dataset

    assert (REPO / "data" / "mnist" / "train-images-idx3-ubyte.gz").is_file(), "MNIST missing from data/mnist"
    return load_dataset("mnist", progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A CNN trained for 300 steps on MNIST (about 10 s of one core, 97% test accuracy): good enough to read a
    7 drawn in a browser, and independent of the model shipped in the package. One thread: on a busy machine
    torch's threads wait on each other and training gets many times slower."""
    from digitlab import make_config, train

    out = tmp_path_factory.mktemp("run") / "cnn"
    cfg = make_config({"model": "cnn", "epochs": 1, "max_steps": 300, "batch_size": 128, "optimizer": "adam",
                       "device": "cpu", "threads": 1, "out": str(out)})
    result = train(cfg, progress=False, log=lambda *_: None)
    assert result.best_accuracy > 0.95, f"the fixture model reached only {result.best_accuracy:.2%}"
    return out


@pytest.fixture(scope="session")
def predictor(trained_run):
    from digitlab.predict import Predictor

    return Predictor.from_run(trained_run)


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(run: Path, log: Path) -> LiveServer:
    """`python -m digitlab serve RUN --port P` in a subprocess, returned once /healthz answers."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", str(run), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    server = LiveServer(f"http://127.0.0.1:{port}", port, process, log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"digitlab serve exited with {process.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise AssertionError(f"digitlab serve did not answer /healthz within {SERVER_START_TIMEOUT_S} s:\n"
                         f"{server.output()}")


def stop_server(server: LiveServer) -> None:
    """Terminate (then kill, if it lingers) the server process."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def live_server(trained_run, tmp_path_factory):
    """A real uvicorn serving the fixture model, terminated when the module's tests are done."""
    server = start_server(trained_run, tmp_path_factory.mktemp("server") / "serve.log")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL (postgresql://postgres@127.0.0.1:PORT/digitlab) of a real PostgreSQL server started for this
    session (tests/postgres_server.py; about 1 s to start), as a user gives it to `digitlab sweep --storage` to
    share a study between processes (SQLAlchemy, under Optuna, needs postgres_server.with_driver(url) to use
    psycopg). Every test that asks shares it, so each uses study names of its own; to see the database go away,
    take `private_postgres` instead. Without PostgreSQL installed this fails, saying how to install it."""
    with PostgresServer() as server:
        yield server.url


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own (a PostgresServer), which the test may stop() to see what digitlab
    does when the database is unreachable; it is stopped and removed after the test, passed or failed."""
    with PostgresServer() as server:
        yield server
