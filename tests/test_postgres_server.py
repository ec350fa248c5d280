"""The PostgreSQL server that the shared-sweep tests run against is real: it answers as PostgreSQL, an Optuna study
created in one process is seen and extended by another, and once stopped nothing answers at its URL any more (so
it was this server, not some other database, that answered). Without these, a sweep test could pass against a
server that is not there, or against one that each process sees alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import optuna
import psycopg
import pytest
import sqlalchemy

import postgres_server
from postgres_server import PostgresNotInstalled, PostgresServer, with_driver

# Optuna reports each study it creates at INFO; the tests need no such lines.
optuna.logging.set_verbosity(optuna.logging.WARNING)

CHILD = """
import json, os, sys
import optuna

url, name = sys.argv[1:]
study = optuna.load_study(study_name=name, storage=url)
trial = study.ask()
x = trial.suggest_float("x", -10.0, 10.0)
trial.set_user_attr("pid", os.getpid())
study.tell(trial, 0.875)
print(json.dumps({"pid": os.getpid(), "number": trial.number, "x": x}))
"""


def query(url: str, sql: str):
    """One row of `sql`, through psycopg, the `sweep` extra's driver (libpq reads the plain postgresql:// URL a
    user types)."""
    connection = psycopg.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        connection.close()


def test_the_server_is_postgresql_with_the_digitlab_database(postgres_url):
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:") and postgres_url.endswith("/digitlab")
    version, database = query(postgres_url, "SELECT version(), current_database()")
    assert version.startswith("PostgreSQL "), version
    assert database == "digitlab"


def test_a_study_is_shared_between_processes(postgres_url):
    storage = with_driver(postgres_url)  # named, as digitlab's sweep names it: SQLAlchemy's default differs
    name = f"shared-{uuid.uuid4().hex}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    assert study.trials == []

    child = subprocess.run([sys.executable, "-c", CHILD, storage, name], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    told = json.loads(child.stdout.strip().splitlines()[-1])
    assert told["pid"] != os.getpid()

    for seen in (study, optuna.load_study(study_name=name, storage=storage)):
        trials = seen.get_trials(deepcopy=False)
        assert len(trials) == 1, trials
        trial = trials[0]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == 0.875
        assert trial.params == {"x": told["x"]}
        assert trial.user_attrs["pid"] == told["pid"]
        assert seen.best_value == 0.875


def test_a_stopped_server_is_unreachable_and_leaves_nothing_behind(private_postgres):
    server = private_postgres
    url = server.url
    assert query(url, "SELECT 1") == (1,)
    optuna.create_study(storage=with_driver(url), study_name="before-the-stop")
    processes = [server.pid, *server.child_pids()]
    assert len(processes) > 1, "a running postmaster has children (checkpointer, WAL writer...)"

    server.stop()
    assert not server.running
    assert [pid for pid in processes if os.path.exists(f"/proc/{pid}")] == []
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        query(url, "SELECT 1")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        optuna.load_study(study_name="before-the-stop", storage=with_driver(url))

    folder = server.folder
    assert folder.is_dir()
    server.close()
    assert not folder.exists()


def test_missing_binaries_say_how_to_install_them(monkeypatch):
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres_server.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresNotInstalled, match="apt-get install -y postgresql"):
        PostgresServer()
