"""Shared fixtures: MNIST read once per session, a small model trained once per session, a real
`digitlab serve` on 127.0.0.1, and a real PostgreSQL server (tests/postgres_server.py). Plain helpers (free port,
MNIST slices, PNG bytes, the renderer) are in helpers.py. Every test leaves the process as it found it
(process_state_restored), and a test marked slow may run for SLOW_TIMEOUT_S instead of pyproject.toml's timeout."""
from __future__ import annotations

import logging
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


@pytest.fixture(autouse=True)
def process_state_restored():
    """After each test, put back what it changed for the whole process: torch's thread count (train() and the
    servers set it) and default dtype, the environment variables, the working directory, and the root logger's
    level, handlers and logging.disable(). torch's inter-op thread count cannot be set twice in a process, so a
    test that changes it fails here. A fixture shared by several tests that changes any of these restores it
    itself when it is torn down (trained_run does)."""
    import torch

    threads, interop, dtype = torch.get_num_threads(), torch.get_num_interop_threads(), torch.get_default_dtype()
    environ, cwd = _environ(), os.getcwd()
    root = logging.getLogger()
    level, handlers, disabled = root.level, list(root.handlers), logging.root.manager.disable
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    now = _environ()
    for name in now.keys() - environ.keys():
        del os.environ[name]
    for name, value in environ.items():
        if now.get(name) != value:
            os.environ[name] = value
    os.chdir(cwd)
    root.setLevel(level)
    logging.disable(disabled)
    for handler in root.handlers[:]:
        if handler not in handlers and not type(handler).__module__.startswith("_pytest."):  # pytest's log capture
            root.removeHandler(handler)
    assert torch.get_num_interop_threads() == interop, \
        "torch.set_num_interop_threads holds for the whole process: call it in a subprocess"


def _environ() -> dict[str, str]:
    """os.environ without PYTEST_CURRENT_TEST, which pytest itself sets in each phase of a test."""
    return {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}


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
    import torch

    from digitlab import make_config, train

    out = tmp_path_factory.mktemp("run") / "cnn"
    cfg = make_config({"model": "cnn", "epochs": 1, "max_steps": 300, "batch_size": 128, "optimizer": "adam",
                       "device": "cpu", "threads": 1, "out": str(out)})
    threads = torch.get_num_threads()
    try:
        result = train(cfg, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)  # train() set 1 for the whole process
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
