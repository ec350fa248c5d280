"""A throwaway PostgreSQL server for tests: `digitlab sweep` shares one Optuna study between machines through
PostgreSQL, and only a real server shows that several processes see each other's trials. Each PostgresServer is a
fresh cluster (initdb) in a new temporary folder, listening only on 127.0.0.1 on a free port, with trust
authentication, so it needs no password, no system service and no port 5432 (Debian's package may run its own
cluster there; it is never used). Stopping it ends the postmaster and its children and removes the folder.

    with PostgresServer() as server:
        server.url                # postgresql://postgres@127.0.0.1:PORT/digitlab
        optuna.create_study(storage=with_driver(server.url), study_name="s")   # postgresql+psycopg://...

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user that Debian's package
creates, in a folder owned by it. Missing binaries are an error that says how to install them, never a skip."""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from helpers import free_port

INSTALL_HINT = ("install PostgreSQL's server: apt-get install -y postgresql (as scripts/test.sh does), or put a "
                "PostgreSQL whose bin folder holds initdb and postgres on PATH")
SUPERUSER = "postgres"  # the role initdb creates; the same name whoever runs the tests
DATABASE = "digitlab"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05
PORT_TRIES = 5  # free_port() races other programs until postgres binds; a lost race is retried on a new port

# A throwaway cluster needs no crash safety: skipping the flushes makes initdb and every commit faster.
SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresNotInstalled(RuntimeError):
    """The server cannot be started on this machine: a test that needs it fails with this, saying how to install
    it, rather than skipping and passing without ever talking to PostgreSQL."""


def find_bindir() -> Path:
    """The folder holding initdb, postgres and createdb: pg_config --bindir, else the newest of Debian's
    /usr/lib/postgresql/<version>/bin (off PATH), else wherever initdb is on PATH. Debian's libpq-dev ships a
    pg_config that names the server's folder even when the server is not installed, so each candidate is checked."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass

    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name))

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "postgres", "createdb")):
            return folder
    looked = ", ".join(str(c) for c in candidates) or "no pg_config, no /usr/lib/postgresql/*/bin, no initdb on PATH"
    raise PostgresNotInstalled(f"PostgreSQL's server binaries (initdb, postgres) were not found ({looked}): "
                               f"{INSTALL_HINT}")


def with_driver(url: str, driver: str = "psycopg") -> str:
    """`url` naming its DBAPI driver (postgresql+psycopg://..., psycopg 3: the `sweep` extra's). For a plain
    postgresql:// URL SQLAlchemy picks one itself: psycopg2 up to SQLAlchemy 2.0, psycopg from 2.1 on."""
    scheme, sep, rest = url.partition("://")
    assert sep and scheme.split("+")[0] == "postgresql", f"not a PostgreSQL URL: {url}"
    return f"postgresql+{driver}://{rest}"


def _server_user() -> pwd.struct_passwd | None:
    """Who runs initdb and postgres: None (this process's user) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresNotInstalled("PostgreSQL refuses to run as root and there is no `postgres` system user to run "
                                   f"it as: {INSTALL_HINT} (the package creates that user)") from None


def _reachable_by_others(folder: str) -> bool:
    """Whether another user can reach files under `folder` (every folder above it searchable by others)."""
    path = Path(folder).resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _client_env() -> dict[str, str]:
    """This environment less PG* variables, which would make the client tools connect elsewhere than asked."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _stop_postmaster(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Fast shutdown (SIGINT: ends the sessions, checkpoints, exits; the children exit before the postmaster
    does), then immediate shutdown (SIGQUIT), then SIGKILL, each given its share of `timeout`."""
    for sig, share in ((signal.SIGINT, 0.6), (signal.SIGQUIT, 0.3), (signal.SIGKILL, 0.1)):
        if process.poll() is not None:
            return
        try:
            process.send_signal(sig)
            process.wait(timeout=timeout * share)
            return
        except ProcessLookupError:
            process.poll()
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait(timeout=10)


def _cleanup(process: subprocess.Popen | None, folder: str) -> None:
    """Stop the postmaster if it runs, then remove the folder; also run at interpreter exit for a server whose
    owner never called close()."""
    if process is not None:
        _stop_postmaster(process)
    shutil.rmtree(folder, ignore_errors=True)


class PostgresServer:
    """A fresh PostgreSQL cluster on 127.0.0.1:`port` with the database `digitlab`. Use it as a context manager
    (or call start() and close()). `url` is what a user types (with_driver(url) names psycopg for SQLAlchemy);
    `pid` is the postmaster's; stop() ends the server early (the folder stays until close()), so a test can check
    what happens when the database is gone; `timings` holds the seconds that initdb, the start and the stop took."""

    def __init__(self, database: str = DATABASE, start_timeout: float = START_TIMEOUT_S,
                 settings: dict[str, str] | None = None):
        self.database = database
        self.start_timeout = start_timeout
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.bindir = find_bindir()
        self.user = _server_user()
        self.port: int | None = None
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        self._finalizer: weakref.finalize | None = None

    # --- what tests use -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/digitlab, as a user gives it to `digitlab sweep --storage`."""
        assert self.port is not None, "the server was never started"
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        assert self.folder is not None, "the server was never started"
        return self.folder / "postgres.log"

    def output(self) -> str:
        """The server's log so far (startup messages, errors): for assertion messages."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def child_pids(self) -> list[int]:
        """The postmaster's children (checkpointer, WAL writer, one backend per connection...), from /proc."""
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                children.append(int(Path(stat).parent.name))
        return children

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- life cycle -----------------------------------------------------------------------------------------------
    def start(self) -> "PostgresServer":
        """initdb a new cluster, start postgres and wait until it accepts connections, create the database."""
        assert self.folder is None, "a PostgresServer starts once"
        self.folder = Path(self._make_folder())
        self._finalizer = weakref.finalize(self, _cleanup, None, str(self.folder))
        try:
            began = time.monotonic()
            self._run_as_server([str(self.bindir / "initdb"), "--pgdata", str(self.folder / "data"),
                                 "--username", SUPERUSER, "--auth", "trust", "--encoding", "UTF8", "--locale", "C",
                                 "--no-sync"], "initdb")
            self.timings["initdb"] = time.monotonic() - began
            began = time.monotonic()
            for attempt in range(PORT_TRIES):
                if self._launch(free_port()):
                    break
                if "could not bind" not in self.output() or attempt == PORT_TRIES - 1:
                    raise AssertionError(f"postgres exited with {self.process.returncode} while starting:\n"
                                         f"{self.output()}")
            self.timings["start"] = time.monotonic() - began
            began = time.monotonic()
            self._client("createdb", self.database)
            self.timings["createdb"] = time.monotonic() - began
        except BaseException:
            self.close()
            raise
        return self

    def stop(self) -> None:
        """End the server (fast shutdown) and wait for the postmaster and its children to exit. Idempotent."""
        if self.process is not None and self.process.poll() is None:
            began = time.monotonic()
            _stop_postmaster(self.process)
            self.timings["stop"] = time.monotonic() - began

    def close(self) -> None:
        """stop(), then remove the temporary folder (the cluster, the socket, the log)."""
        self.stop()
        if self._finalizer is not None:
            self._finalizer()  # removes the folder, once

    # --- internals ------------------------------------------------------------------------------------------------
    def _make_folder(self) -> str:
        """A new temporary folder the server's user owns. As root that user is `postgres`, which must reach the
        folder: pytest's tmp_path (/tmp/pytest-of-root, 0700) would not do, nor a TMPDIR under a private folder."""
        if self.user is None:
            return tempfile.mkdtemp(prefix="digitlab-postgres-")
        parent = tempfile.gettempdir()
        if not _reachable_by_others(parent):
            parent = "/tmp"
        folder = tempfile.mkdtemp(prefix="digitlab-postgres-", dir=parent)
        os.chown(folder, self.user.pw_uid, self.user.pw_gid)
        return folder

    def _as_server_user(self) -> dict:
        """subprocess arguments that run a program as the server's user, in the server's folder."""
        if self.user is None:
            return {"cwd": self.folder}
        env = {**_client_env(), "HOME": self.user.pw_dir, "USER": self.user.pw_name, "LOGNAME": self.user.pw_name}
        return {"cwd": self.folder, "user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [],
                "env": env}

    def _run_as_server(self, argv: list[str], what: str) -> None:
        kwargs = {"env": _client_env(), **self._as_server_user()}
        out = subprocess.run(argv, capture_output=True, text=True, timeout=self.start_timeout, **kwargs)
        if out.returncode != 0:
            raise AssertionError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def _launch(self, port: int) -> bool:
        """Start the postmaster on `port` and wait until it accepts connections: True; False if it exited."""
        self.port = port
        options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(self.folder),
                   **self.settings}
        argv = [str(self.bindir / "postgres"), "-D", str(self.folder / "data")]
        for name, value in options.items():
            argv += ["-c", f"{name}={value}"]
        kwargs = {"env": _client_env(), **self._as_server_user()}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            **kwargs)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self.process, str(self.folder))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(POLL_S)
        raise AssertionError(f"postgres did not accept connections on 127.0.0.1:{port} within "
                             f"{self.start_timeout:.0f} s:\n{self.output()}")

    def _ready(self) -> bool:
        """Whether this postmaster says it accepts connections: the status line of data/postmaster.pid (what
        pg_ctl --wait reads) is `ready`, under this process's pid and port. Asking the port instead (pg_isready)
        could be answered by another program that took the port first, or hang on one that never answers."""
        try:
            lines = (self.folder / "data" / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (len(lines) >= 8 and lines[0].strip() == str(self.process.pid) and lines[3].strip() == str(self.port)
                and lines[7].strip() == "ready")

    def _client(self, tool: str, *args: str) -> None:
        out = subprocess.run([str(self.bindir / tool), "--host", "127.0.0.1", "--port", str(self.port),
                              "--username", SUPERUSER, "--no-password", *args], capture_output=True, text=True,
                             env=_client_env(), timeout=self.start_timeout)
        if out.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
