"""A run folder nothing can damage: `--resume` with another recipe, `--out` of a folder that holds something,
two trainings into one folder, a lock left by a killed run, bad values before any folder exists, and
`compare` over a folder whose run never got going.

Every CLI case runs `python -m digitlab` in a real subprocess. "Nothing changed" is checked byte for byte and
by modification time on every file of the folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from digitlab.errors import RunError
from digitlab.runs import LOCK_NAME, RunLock, read_metrics
from helpers import REPO, one_line_error, run_cli, snapshot

# A 3-step MLP run: about 5 s as a subprocess, most of it loading MNIST and scoring the test set.
TINY = ["--model", "mlp", "--batch-size", "32", "--max-steps", "3", "--threads", "1", "--device", "cpu",
        "--eval-batch-size", "5000", "--no-progress"]
WAIT_S = 120


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 1-epoch run (stopped by --max-steps 3); each test works on its own copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli("train", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")  # copy2: modification times are kept
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------
# --resume: only settings that do not change what is learned, checked before anything is written


@pytest.mark.slow
@pytest.mark.parametrize("change, field", [(["--model", "lstm"], "model"), (["--optimizer", "rmsprop"], "optimizer"),
                                           (["--model-args", "hidden=[50]"], "model_args"),
                                           (["--lr", "0.5", "--epochs", "2"], "lr")])
def test_resume_with_another_recipe_is_one_line_and_changes_nothing(run, change, field):
    before = snapshot(run)
    line = one_line_error(run_cli("train", "--resume", str(run), *change, "--no-progress"), field)
    assert "--resume" in line and "Traceback" not in line
    assert snapshot(run) == before
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_after_a_refused_resume_a_plain_resume_still_works(run):
    one_line_error(run_cli("train", "--resume", str(run), "--model", "lstm", "--no-progress"), "model")
    proc = run_cli("train", "--resume", str(run), "--epochs", "2", "--max-steps", "6", "--threads", "1",
                   "--eval-batch-size", "2000", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "after 0.0032 epochs" in proc.stdout, proc.stdout  # step 6 of 1,875
    assert [r["step"] for r in read_metrics(run)] == [3, 6]
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["max_steps"] == 6 and saved["eval_batch_size"] == 2000
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("more", [[], ["--epochs", "1"], ["--epochs", "2"]])
def test_resume_with_nothing_left_to_do_says_so_and_changes_nothing(run, more):
    """--max-steps 3 was reached (3 steps into epoch 1 of 1): no resume has work while that limit holds, whatever
    --epochs says."""
    before = snapshot(run)
    one_line_error(run_cli("train", "--resume", str(run), *more, "--no-progress"), "--max-steps 3 limit")
    assert snapshot(run) == before
    assert not (run / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------
# --out: a folder that holds something is refused unless --force


@pytest.mark.slow
def test_out_of_an_existing_run_is_refused_and_the_run_is_untouched(run):
    before = snapshot(run)
    line = one_line_error(run_cli("train", *TINY, "--model-args", "hidden=[8]", "--out", str(run)),
                          str(run), "--resume", "--force")
    assert "config.json" in line
    assert snapshot(run) == before


@pytest.mark.slow
def test_out_of_a_folder_with_an_unrelated_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"name": "someone else\'s project"}')
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    one_line_error(run_cli("train", *TINY, "--out", str(tmp_path)), "not empty", "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_force_replaces_a_run_completely(run):
    """With --force, nothing of the old run survives to be mixed with the new one (best.safetensors above all)."""
    from digitlab.runs import load_run

    (run / "last.state.pt.tmp").write_bytes(b"left over from a kill")
    proc = run_cli("train", *TINY, "--model-args", "hidden=[8]", "--out", str(run), "--force")
    assert proc.returncode == 0, proc.stderr
    assert "replacing" in proc.stdout
    for name in ("best", "last"):
        assert load_run(run, name).model_args == {"hidden": [8]}
    assert json.loads((run / "config.json").read_text())["model_args"] == {"hidden": [8]}
    assert len(read_metrics(run)) == 1 and not list(run.glob("*.tmp")) and not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_an_empty_existing_folder_is_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    proc = run_cli("train", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "best.safetensors").is_file() and not (out / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------
# The lock: one training per folder, a stale lock is taken over


PAUSED_TRAINING = """
import sys
from digitlab import make_config, train

def pause(line):
    print("PAUSED", flush=True)
    sys.stdin.readline()  # hold the run folder until the test says go on

cfg = make_config(model="mlp", batch_size=32, max_steps=3, threads=1, device="cpu", eval_batch_size=5000,
                  out=sys.argv[1])
train(cfg, progress=False, log=pause)
print("FINISHED", flush=True)
"""


def start_paused_training(out: Path) -> subprocess.Popen:
    """A real training process that stops at its first log line (its epoch line) and waits for stdin."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_TRAINING, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()  # blocks until the pause (or the end of a failed process)
    assert line.strip() == "PAUSED", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_fails_and_the_first_finishes_intact(tmp_path):
    out = tmp_path / "run"
    first = start_paused_training(out)
    try:
        held = snapshot(out)
        assert (out / LOCK_NAME).is_file()
        second = run_cli("train", *TINY, "--out", str(out), "--force")
        one_line_error(second, "in use", f"pid {first.pid}")
        resumed = run_cli("train", "--resume", str(out), "--epochs", "2", "--max-steps", "6", "--no-progress")
        one_line_error(resumed, "in use", f"pid {first.pid}")
        assert snapshot(out) == held
        out_text, err = first.communicate("go on\n", timeout=WAIT_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and "FINISHED" in out_text, err
    assert [r["step"] for r in read_metrics(out)] == [3] and not (out / LOCK_NAME).exists()
    assert json.loads((out / "config.json").read_text())["eval_batch_size"] == 5000


@pytest.mark.slow
def test_the_lock_of_a_killed_training_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = start_paused_training(out)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=WAIT_S)
    lock = json.loads((out / LOCK_NAME).read_text())
    assert lock["pid"] == first.pid  # left behind: SIGKILL runs no clean-up
    proc = run_cli("train", "--resume", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"pid {first.pid}" in proc.stdout and "no longer running" in proc.stdout, proc.stdout
    assert not (out / LOCK_NAME).exists() and (out / "last.safetensors").is_file()


def test_lock_rules(tmp_path):
    """Held (flock) by another open file: refused. Held by nobody: taken over, whatever pid or host it names.
    Release removes only the caller's own lock."""
    path = tmp_path / LOCK_NAME
    messages: list[str] = []
    first = RunLock(tmp_path)
    first.acquire(messages.append)
    with pytest.raises(RunError, match=rf"in use .*pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire(messages.append)
    first.release()
    assert not path.exists()

    first.acquire(messages.append)
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "another"}))
    first.release()  # the lock was replaced (deleted by hand, taken by another training): not first's to remove
    assert path.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "old"}))
    second = RunLock(tmp_path)
    second.acquire(messages.append)
    assert messages == [f"{tmp_path}: taking over the lock of pid {dead.pid}, which is no longer running"]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    second.release()
    assert not path.exists()

    for left_behind in ({"pid": 1, "host": "elsewhere.example", "token": "x"}, "garbage"):
        path.write_text(left_behind if isinstance(left_behind, str) else json.dumps(left_behind))
        third = RunLock(tmp_path)
        third.acquire(messages.append)  # nobody holds it: the host that wrote it, or what it says, does not matter
        assert json.loads(path.read_text())["token"] == third.token
        third.release()
    assert messages[-2:] == [f"{tmp_path}: taking over the lock of pid 1, which is no longer running",
                             f"{tmp_path}: taking over the lock of a training, which is no longer running"]


@pytest.mark.parametrize("pid", [1, "own"])
def test_lock_left_by_a_training_whose_pid_is_alive_again_is_taken_over(tmp_path, pid):
    """A training killed as pid 1 in a container leaves a lock naming pid 1, which is alive again in the next
    container (the resuming training itself): no open file holds the lock, so it is stale all the same."""
    pid = os.getpid() if pid == "own" else pid
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "killed"}))
    messages: list[str] = []
    lock = RunLock(tmp_path)
    lock.acquire(messages.append)
    assert messages == [f"{tmp_path}: taking over the lock of pid {pid}, which is no longer running"]
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


HOLD_LOCK = """
import sys
from digitlab.runs import RunLock

RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
sys.stdin.readline()
"""


@pytest.mark.quick
def test_lock_held_by_a_live_process_is_refused_whatever_pid_it_names(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(RunError, match=rf"in use by another training \(pid {holder.pid} on"):
            RunLock(tmp_path).acquire()
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "gone.example", "token": "x"}))
        with pytest.raises(RunError, match="in use by another training"):
            RunLock(tmp_path).acquire()  # the holder's flock decides, not what the file says
    finally:
        holder.communicate("done\n", timeout=WAIT_S)


TAKE_LOCK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a lock read without end fails here, not the machine
from digitlab.errors import RunError
from digitlab.runs import RunLock

try:
    RunLock(sys.argv[1]).acquire()
except RunError as e:
    print(e)
"""


@pytest.mark.parametrize("kind", ["link to a FIFO", "FIFO", "link to /dev/zero", "link to a regular file"])
def test_lock_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    """A .lock planted as a FIFO (or a link to one) would block the open or the read forever, a link to
    /dev/zero would be read until memory runs out: each is a one-line error in well under the timeout."""
    lock = tmp_path / LOCK_NAME
    if "FIFO" in kind:
        os.mkfifo(tmp_path / "fifo")
    (tmp_path / "elsewhere").write_text("{}")
    target = {"link to a FIFO": tmp_path / "fifo", "link to /dev/zero": Path("/dev/zero"),
              "link to a regular file": tmp_path / "elsewhere"}
    if kind == "FIFO":
        os.rename(tmp_path / "fifo", lock)
    else:
        lock.symlink_to(target[kind])
    proc = subprocess.run([sys.executable, "-c", TAKE_LOCK, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    expected = "is not a regular file" if kind == "FIFO" else "is a symbolic link, not a lock digitlab wrote"
    assert expected in proc.stdout, (proc.stdout, proc.stderr)
    assert (tmp_path / "elsewhere").read_text() == "{}"  # never written through the link


# ---------------------------------------------------------------------------------------------
# Bad values: a one-line error, and no run folder


@pytest.mark.parametrize("args, fragment", [
    (["--model", "mlp", "--model-args", "hidden=[-5]"], "hidden"),
    (["--model", "mlp", "--model-args", "hidden=abc"], "hidden"),
    (["--model", "mlp", "--model-args", "hidden=[1e11]"], "hidden"),
    (["--model", "mlp", "--model-args", "hidden=[100000000000]"], "parameters"),
    (["--model", "lstm", "--model-args", "hidden_size=0"], "hidden_size"),
    (["--model", "gru", "--model-args", "num_layers=1.5"], "num_layers"),
    (["--model", "cnn", "--model-args", "dropout=2"], "dropout"),
    (["--model", "digitnet", "--model-args", "width=0"], "width"),
    (["--model", "lenet5", "--model-args", "activation=[1]"], "activation"),
    (["--model", "mlp", "--model-args", "hidden_size=64"], "no option"),
    (["--model", "mlp", "--lr", "-1"], "lr"),
    (["--model", "mlp", "--nesterov"], "nesterov"),
    (["--model", "mlp", "--tta-mirror"], "tta_mirror"),
])
def test_bad_values_are_one_line_and_leave_no_folder(tmp_path, args, fragment):
    out = tmp_path / "run"
    one_line_error(run_cli("train", *args, "--out", str(out), "--no-progress"), fragment)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# compare: a run that never reached its first evaluation is skipped with a warning


@pytest.mark.slow
def test_compare_skips_an_incomplete_run_with_a_warning(finished, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(finished / "config.json", incomplete / "config.json")  # killed before its first evaluation
    proc = run_cli("compare", str(finished), str(incomplete), "-o", str(tmp_path / "c.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (f"digitlab: warning: skipping {incomplete} (mlp, seed 0): unfinished, "
                                   "no evaluation yet, epoch 0 of 1")
    rows = [line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert finished.name in rows and incomplete.name not in rows
    one_line_error(run_cli("compare", str(incomplete), "-o", str(tmp_path / "d.png")), "no finished run to compare")
    assert not (tmp_path / "d.png").exists()
