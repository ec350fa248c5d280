"""Where a study lives: Optuna's RDB storage, on a SQLite file by default or a PostgreSQL server to share.

    (no --storage)                        sqlite:///runs/sweeps.db: embedded, nothing to start, one machine
    --storage postgresql://user@host/db   every machine that runs `digitlab sweep` with this URL adds trials to
                                          the same study (Optuna's RDB storage; psycopg is the driver)

A trial records the host and pid of the process running it. A trial whose process is gone (kill -9, a crash of
the machine) is marked FAIL: at once by `digitlab sweep` on the same host (the pid is not alive), and by Optuna's
heartbeat on any host once the trial has not beaten for HEARTBEAT_GRACE_S. A failed trial is never counted
complete, and the study goes on from there.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

from digitlab.errors import ConfigError, DigitlabError

DEFAULT_STORAGE_FILE = Path("runs") / "sweeps.db"
HEARTBEAT_S = 10  # how often a running trial says it is alive
HEARTBEAT_GRACE_S = 60  # after this long without a beat, any sweep process marks the trial failed
CONNECT_TIMEOUT_S = 10  # an unreachable database is an error in seconds, not a hang
SCHEMA_ATTEMPTS = 5  # opening a new database races another machine's table creation at most a few times
SQLITE_LOCK_WAIT_S = 60  # a trial's writes take milliseconds; a minute covers any queue of --jobs workers


class SweepError(DigitlabError):
    """A sweep cannot start or go on: its storage, its study or its search space."""


def storage_url(url: str | None, create: bool = True) -> str:
    """The storage URL a sweep uses: --storage, or the SQLite file under runs/ (its folder created for a sweep,
    not for a look at one)."""
    if url:
        return url
    if create:
        DEFAULT_STORAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORAGE_FILE}"


def check_url(url: str) -> str:
    """A one-line ConfigError for a URL that is not a database URL Optuna's RDB storage can use."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"--storage {url!r} is not a database URL (sqlite:///FILE.db or "
                          "postgresql://USER@HOST:PORT/DB)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(f"--storage {url!r}: {backend} is not a database Optuna can keep a study in "
                          "(sqlite or postgresql)")
    return url


def open_storage(url: str, heartbeat: bool = True):
    """Optuna's RDBStorage on `url`, with the trial heartbeat, connected now: an unreachable or refusing database is
    a SweepError in one line before any trial runs."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    url = with_driver(check_url(url))
    engine_kwargs = {"connect_args": connect_args(url)}
    beats = {"heartbeat_interval": HEARTBEAT_S, "grace_period": HEARTBEAT_GRACE_S} if heartbeat else {}
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat: years old
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        except (IntegrityError, ProgrammingError) as e:
            # Two machines starting on an empty database both create Optuna's tables; the loser's CREATE fails on
            # the winner's (a duplicate key in pg_type). Once the winner's tables exist, opening again just works.
            if attempt == SCHEMA_ATTEMPTS:
                raise SweepError(f"cannot open the study storage {redact(url)}: {one_line(e)}") from None
            time.sleep(0.2 * attempt)
        except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
            raise SweepError(f"cannot open the study storage {redact(url)}: {one_line(e)}") from None


def connect_args(url: str) -> dict:
    """PostgreSQL: give up on an unreachable server after CONNECT_TIMEOUT_S. SQLite: wait up to SQLITE_LOCK_WAIT_S
    for another worker's write to finish instead of failing with "database is locked" (--jobs on one file)."""
    if url.startswith("postgres"):
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    if url.startswith("sqlite"):
        return {"timeout": SQLITE_LOCK_WAIT_S}
    return {}


def with_driver(url: str) -> str:
    """postgresql://... with the driver the `sweep` extra installs (psycopg 3) named: SQLAlchemy's default driver
    for a bare postgresql:// depends on its version (psycopg2 before 2.1)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse has no password to hide
        return url


def one_line(error: BaseException) -> str:
    """The first line of a database driver's message (they run to a page)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def this_process() -> dict:
    """What a trial records of the process running it, so a dead one can be told from a slow one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fail_dead_trials(storage, study, log=print) -> list[int]:
    """Mark FAIL every RUNNING trial of this study whose process ran on this host and is gone, and every trial
    whose heartbeat went stale on any host; returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and isinstance(attrs.get("pid"), int) and not pid_alive(attrs["pid"]):
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial.number)
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        failed += sorted(after - before - set(failed))
    for number in failed:
        log(f"trial {number}: its process is gone (killed, or its machine stopped); marked failed")
    return failed
