"""Run folders: config.json, metrics.csv, checkpoints and figures of one training run, and the rules that keep
a folder from being damaged.

    runs/<time>-<name>/
        config.json          everything needed to rebuild model and preprocessing
        metrics.csv          one row per evaluation
        last.safetensors     weights after the latest epoch (+ last.state.pt to resume)
        best.safetensors     weights of the selected evaluation (selection.py); none when a fixed schedule
                             selects nothing: the run's model, and its `best`, is then last.safetensors
                             (both .safetensors: the temperature fitted on the hold-out in their metadata)
        curves.png           loss and accuracy curves
        events.out.tfevents.*  TensorBoard's scalars, hparams and final figures (tracking.py)
        .lock                while a training runs in it: flocked by it, with its pid and host

claim_run_dir() is how a training takes a folder: a new run only gets an empty (or new) folder, unless
force=True, which first removes the files of a previous run; a resume only continues a run with its own recipe
(RESUMABLE lists what may change). Both hold the folder's lock for the whole training; prepare_run_dir() is
how every rank of a training gets the folder rank 0 claimed. load_run() loads a trained model from a folder.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import socket
import stat
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from digitlab import atomic
from digitlab.config import TrainConfig, config_from_json
from digitlab.errors import ConfigError, DigitlabError, RunError

if TYPE_CHECKING:  # both import torch: only load_run and prepare_run_dir need them, and import them when called
    from digitlab.checkpoint import LoadedModel
    from digitlab.distributed import DistContext

METRIC_COLUMNS = ["step", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                  "test_accuracy", "lr", "elapsed_s", "images_per_s", "data_fraction"]  # val_*: empty without val_size
# Read back by plot and compare: a metrics.csv without them, or with a blank or a word in them, is damaged.
REQUIRED_METRICS = ("step", "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "elapsed_s")
TEST_METRICS = ("test_loss", "test_accuracy")  # blank in the rows of a run that does not read the test set
LOCK_NAME = ".lock"
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard's event files (tracking.py), one per training session
# What a training writes into its folder (and eval/export/explain --embedding next to it): what --force removes
# before a new run, so nothing of the old run (a better best.safetensors above all) is left to be mixed with the
# new one.
RUN_FILES = ("config.json", "metrics.csv", "best.safetensors", "last.safetensors", "last.state.pt", "curves.png",
             "confusion-best.png", "confusion-last.png", "misclassified-best.png", "misclassified-last.png",
             "reliability-best.png", "reliability-last.png", "embedding.png", "model.onnx", "model.pt")
# Fields a resume may change: they decide how long, where and how fast the run goes on, or what it reports,
# not what each step learns. Anything else (model, optimiser, lr, data, augmentation...) would continue the
# checkpoint as another recipe than the one its config.json and metrics.csv describe.
RESUMABLE = ("epochs", "max_steps", "target_accuracy", "eval_every", "log_every", "eval_batch_size", "threads",
             "device", "compile", "data_dir", "out", "plot", "tensorboard")


def new_run_dir(cfg: TrainConfig, root: str | Path = "runs") -> Path:
    """Create runs/<YYYYmmdd-HHMMSS>-<preset or model>, with -2, -3... if taken (also by a run started the
    same second in another process: mkdir is the test)."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset or cfg.model}"
    Path(root).mkdir(parents=True, exist_ok=True)
    path, n = Path(root) / stem, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = Path(root) / f"{stem}-{n}"


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic.write_text_atomic(run_dir / "config.json", json.dumps(asdict(cfg), indent=2))


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the full history (small), atomically, so it always parses."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text_atomic(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv rows with numbers parsed; a missing column, or a word or blank where a number belongs, is a
    RunError naming the line and column."""
    return list(iter_metrics(run_dir))


def iter_metrics(run_dir: Path, columns: tuple[str, ...] | None = None) -> Iterator[dict]:
    """read_metrics one row at a time, each checked whole but holding only `columns` (all without): a long run's
    metrics.csv (hundreds of thousands of rows) is read in constant memory."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunError(f"{run_dir} has no metrics.csv")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_METRICS if c not in (reader.fieldnames or [])]
            if missing:
                raise RunError(f"{path} has no column {', '.join(missing)}: it was not written by digitlab, or is "
                               "damaged")
            for line, row in enumerate(reader, start=2):
                parsed = parse_metrics_row(row, path, line)
                yield parsed if columns is None else {k: parsed.get(k) for k in columns}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{path} cannot be read ({e})") from None


class Thinned:
    """At most `limit` rows of a stream, spread evenly over it, for a chart: every stride-th row, the stride
    doubling (and every other kept row dropped) whenever the rows kept would pass the limit; the last row is
    always drawn. `count` is how many rows went by."""

    def __init__(self, limit: int):
        self.limit, self.stride, self.count = max(limit, 2), 1, 0
        self.kept: list[dict] = []
        self.last: dict | None = None

    def add(self, row: dict) -> None:
        if self.count % self.stride == 0:
            self.kept.append(row)
            if len(self.kept) >= self.limit:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.count += 1
        self.last = row

    @property
    def rows(self) -> list[dict]:
        """The rows kept, in order, ending with the last row seen."""
        if self.last is None or (self.kept and self.kept[-1] is self.last):
            return list(self.kept)
        return [*self.kept, self.last]


def parse_metrics_row(row: dict, path: Path, line: int) -> dict:
    """One row's numbers; blank cells are None where a row may lack the figure (val_* without a hold-out, test_*
    in a sweep trial, which never reads the test set, as long as it has validation figures)."""
    out = {}
    test_optional = row.get("val_accuracy") not in (None, "")
    for key, value in row.items():
        if key is None or value is None:  # more cells than columns, or fewer
            raise RunError(f"{path} line {line}: the row does not have one cell per column")
        if value == "" and (key not in REQUIRED_METRICS or (test_optional and key in TEST_METRICS)):
            out[key] = None
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise RunError(f"{path} line {line}, column {key}: {value!r} is not a number") from None
    return out


def read_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder: it has no config.json")
    try:
        return config_from_json(path.read_text())
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: {e}") from None


def load_run(path: str | Path, checkpoint: str = "best") -> LoadedModel:
    """Load a trained model from a run folder (or .safetensors file), ready for inference on CPU."""
    from digitlab.checkpoint import build_from_weights, read_weights, resolve_checkpoint

    source = resolve_checkpoint(path, checkpoint)
    if source.parent.joinpath("config.json").is_file() and Path(path).is_dir():
        read_config(source.parent)  # a run folder whose config is broken is an error, not ignored
    weights, meta = read_weights(source)
    return build_from_weights(weights, meta, source)


# ---------------------------------------------------------------------------------------------
# Taking a folder for a training


def check_resume_compatible(saved: TrainConfig, requested: TrainConfig, run_dir: Path) -> None:
    """A resume may change only RESUMABLE fields of the run's saved config; anything else is a ConfigError
    naming each field with its saved and requested values."""
    old, new = asdict(saved), asdict(requested)
    changed = [k for k in old if k not in RESUMABLE and old[k] != new[k]]
    if changed:
        what = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ConfigError(f"--resume {run_dir} cannot change the recipe it was trained with ({what}); a resume may "
                          f"change only {', '.join(RESUMABLE)}. Start a new run (another --out) for a new recipe")


def check_work_left(run_dir: Path, cfg: TrainConfig, epochs_done: int, steps_done: int) -> None:
    """A resume with nothing to train is an error (and writes nothing), not a run that silently does nothing."""
    if epochs_done >= cfg.epochs:
        raise RunError(f"{run_dir} has already trained {epochs_done} epoch{'s' * (epochs_done != 1)} of "
                       f"{cfg.epochs}: nothing to do; give --epochs N with N above {epochs_done} to train more")
    if cfg.max_steps and steps_done >= cfg.max_steps:
        raise RunError(f"{run_dir} has already taken {steps_done} steps, the --max-steps {cfg.max_steps} limit: "
                       "nothing to do; give a larger --max-steps, or --max-steps 0 for no limit")


@contextlib.contextmanager
def claim_run_dir(cfg: TrainConfig, resume: bool, force: bool = False,
                  log: Callable[[str], None] = print) -> Iterator[Path]:
    """Lock the run folder for the life of the `with` block and yield it.

    A resume needs cfg.out to be a run folder whose config.json only differs from cfg in RESUMABLE fields; its
    config.json is rewritten later, once the checkpoint has loaded. A new run takes a new or empty folder (or,
    with force=True, one whose previous run files are removed first) and writes config.json.
    """
    if resume and not cfg.out:
        raise ConfigError("resume needs out: the run folder to continue")
    run_dir = Path(cfg.out) if cfg.out else new_run_dir(cfg)
    if resume and not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder")
    if not resume:
        make_folder(run_dir)
    lock = RunLock(run_dir)
    lock.acquire(log)
    try:
        if resume:  # checked again under the lock: the config may have changed since resume_config read it
            check_resume_compatible(read_config(run_dir), cfg, run_dir)
        else:
            clear_for_new_run(run_dir, force, log)
            try:
                write_config(run_dir, cfg)
            except RunError as e:
                raise RunError(f"cannot write the run folder {run_dir}: {e}") from None
        yield run_dir
    finally:
        lock.release()


def prepare_run_dir(cfg: TrainConfig, ctx: DistContext, resume: bool, force: bool,
                    held: contextlib.ExitStack, log: Callable[[str], None]) -> Path:
    """Rank 0 claims the run folder (claim_run_dir: its lock, held in `held` until training ends, the refusal of
    a folder that is not this run's, config.json of a new run) and shares it; when it cannot, every rank raises
    the same error before training."""
    from digitlab import distributed as dist

    run_dir, error = None, None
    if ctx.is_main:
        try:
            run_dir = str(held.enter_context(claim_run_dir(cfg, resume, force, log)))
        except DigitlabError as e:
            if not ctx.enabled:
                raise
            error = e
    run_dir, error = dist.broadcast_object((run_dir, error))
    if error is not None:
        raise error
    return Path(run_dir)


def make_folder(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from None


def is_run_file(name: str) -> bool:
    """A file a training (or eval/export beside it) writes: RUN_FILES, their .tmp files, TensorBoard's events."""
    return name in RUN_FILES or name.removesuffix(".tmp") in RUN_FILES or name.startswith(EVENTS_PREFIX)


def clear_for_new_run(run_dir: Path, force: bool, log: Callable[[str], None]) -> None:
    """Refuse a folder that holds anything (but lock files) unless force; with force, remove a previous run's
    files (RUN_FILES and their .tmp files) and leave anything else alone."""
    present = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(LOCK_NAME))
    if not present:
        return
    if not force:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        hint = (f"to continue that run use --resume {run_dir}; " if "config.json" in present else "")
        raise RunError(f"{run_dir} is not empty ({shown}): {hint}choose a new or empty folder with --out, "
                       "or add --force to replace the run files in it")
    removed = [p for p in run_dir.iterdir() if is_run_file(p.name)]
    for path in removed:
        try:
            path.unlink()
        except OSError as e:
            raise RunError(f"--force: cannot remove {path} ({e.strerror or e})") from None
    log(f"--force: replacing the run in {run_dir} (removed {', '.join(sorted(p.name for p in removed)) or 'nothing'})")


class RunLock:
    """RUN/.lock: an advisory lock (flock) held on the open file for the whole training, with the pid, host and a
    random token of the training written in it for the messages.

    The kernel drops a flock when its holder dies, however it dies, so a lock file nobody holds is stale and is
    taken over: no pid is compared, and a training that ran as pid 1 in a container (whose pid is the next one's
    too), or on a host that is gone, is resumed all the same. Only on a file system without flock is the pid the
    test (holder_alive), as before. The file is opened without following a symbolic link and without blocking,
    must be a regular file, and is read a few hundred bytes at most, so a .lock that is a FIFO, a device or a
    link to one is a one-line error, never a hang or a read without end. release() removes the file only while it
    is still this object's own (same file, same token).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.held = False
        self.fd: int | None = None

    def acquire(self, log: Callable[[str], None] = print) -> None:
        for _attempt in range(5):  # a retry only follows a lock file removed or replaced while we took it
            fd = open_lock_file(self.path)
            try:
                if not self._lock(fd):
                    holder = parse_holder(read_lock_text(fd, self.path), self.path)
                    raise RunError(f"{self.run_dir} is in use by another training (pid {holder['pid']} on "
                                   f"{holder['host']}, lock {self.path}); wait for it to end, or delete "
                                   f"{self.path} if no training is running there")
                if not same_file(fd, self.path):
                    os.close(fd)
                    continue
                self._take(fd, log)
                self.fd, self.held = fd, True
                return
            except BaseException:
                if self.fd != fd:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                raise
        raise RunError(f"{self.run_dir}: could not take its lock {self.path}: other trainings keep taking it")

    def _lock(self, fd: int) -> bool:
        """flock the open file without waiting; False if another open file holds it. Where the file system
        has no flock, the pid written in the file decides (holder_alive)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise RunError(f"cannot lock {self.path} ({e.strerror or e})") from None
        text = read_lock_text(fd, self.path)
        return not text or not holder_alive(parse_holder(text, self.path))

    def _take(self, fd: int, log: Callable[[str], None]) -> None:
        """Write our pid, host and token over what a training that is gone left in the file (and say so)."""
        previous = read_lock_text(fd, self.path)
        if previous:
            try:
                who = f"pid {parse_holder(previous, self.path)['pid']}"
            except RunError:
                who = "a training"
            log(f"{self.run_dir}: taking over the lock of {who}, which is no longer running")
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token})
        try:  # written over, then cut to length: a reader never finds the file empty
            os.pwrite(fd, text.encode(), 0)
            os.ftruncate(fd, len(text.encode()))
        except OSError as e:
            raise RunError(f"cannot write the lock {self.path} ({e.strerror or e})") from None

    def release(self) -> None:
        """Remove the lock file if it is still ours, then let the lock go (closing the file)."""
        if not self.held or self.fd is None:
            return
        fd, self.fd, self.held = self.fd, None, False
        try:
            if same_file(fd, self.path) and json.loads(read_lock_text(fd, self.path)).get("token") == self.token:
                self.path.unlink()  # before the close: nobody can take the flock of a file still named .lock
        except (OSError, ValueError, AttributeError, RunError):
            pass  # gone or replaced: it is not ours to remove
        finally:
            os.close(fd)


LOCK_READ_LIMIT = 512  # bytes read from a lock file: its JSON is about 100


def open_lock_file(path: Path) -> int:
    """Open (creating it) the lock file for reading and writing: never through a symbolic link, never waiting
    (a FIFO would block the open), and only if it is a regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunError(f"{path} is a symbolic link, not a lock digitlab wrote; delete it if no training is "
                           "running in that folder") from None
        raise RunError(f"cannot open the lock {path} ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{path} is not a regular file (a FIFO, a device or a socket), not a lock digitlab wrote; "
                       "delete it if no training is running in that folder")
    return fd


def read_lock_text(fd: int, path: Path) -> str:
    """What the lock file says, read from its start and at most LOCK_READ_LIMIT bytes."""
    try:
        raw = os.pread(fd, LOCK_READ_LIMIT, 0)
    except OSError as e:
        raise RunError(f"cannot read the lock {path} ({e.strerror or e})") from None
    return raw.decode("utf-8", "replace")


def parse_holder(text: str, path: Path) -> dict:
    """The pid and host a lock file names, or a RunError saying it cannot tell."""
    try:
        holder = json.loads(text)
        if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
            return holder
    except json.JSONDecodeError:
        pass
    raise RunError(f"{path.parent} has a lock {path} that digitlab cannot tell who holds it; delete it "
                   "if no training is running in that folder")


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the open file `fd` (not removed, or replaced, since it was opened)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock may still run: only a pid on this host can be checked."""
    if holder["host"] != socket.gethostname():
        return True
    pid = holder["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return not is_zombie(pid)


def is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet still answers kill(pid, 0) (Linux: state Z in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
