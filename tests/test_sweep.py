"""`digitlab sweep`: the search space, one-line errors before anything runs, trials as run folders chosen on
validation (the test set never read), the best recipe as a file that trains, two processes on one PostgreSQL study,
and a worker killed with kill -9 in the middle of a trial."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitlab.errors import ConfigError
from digitlab.runs import read_metrics
from digitlab.sweep.space import apply_params, parse_param, read_space_file, search_space
from helpers import REPO, free_port, one_line_error, run_cli

# A trial of a few seconds: a tiny DigitNet, 40 steps, 500 images held out (the hold-out is what trials select on).
TINY = ["--model", "digitnet", "--model-args", "width=4,depth=1", "--max-steps", "40", "--batch-size", "64",
        "--val-size", "500", "--eval-every", "20", "--no-plot", "--threads", "1"]
LR = ["--param", "lr=1e-3:2e-2:log"]


# --- the search space ------------------------------------------------------------------------------------------

@pytest.mark.quick
def test_params_parse_ranges_logs_and_choices():
    lr = parse_param("lr=1e-4:1e-2:log")
    assert (lr.name, lr.kind, lr.low, lr.high, lr.log) == ("lr", float, 1e-4, 1e-2, True)
    epochs = parse_param("epochs=1:3")
    assert epochs.kind is int and (epochs.low, epochs.high) == (1, 3)
    batch = parse_param("batch_size=64,128")
    assert batch.choices == (64, 128)
    width = parse_param("model_args.width=8,16")
    assert width.choices == (8, 16)
    assert apply_params({"model_args": {"depth": 1}, "lr": 1.0}, {"lr": 0.5, "model_args.width": 8}) == \
        {"model_args": {"depth": 1, "width": 8}, "lr": 0.5}


@pytest.mark.quick
@pytest.mark.parametrize("text, words", [
    ("nope=1:2", "not a recipe field"),
    ("lr=0.1:0.01", "empty range"),
    ("lr=0.1:0.1", "empty range"),
    ("weight_decay=0:1e-3:log", "LOW > 0"),
    ("lr=1:2:cubic", "only be 'log'"),
    ("out=a,b", "not searchable"),
    ("batch_size=64,64", "listed twice"),
    ("batch_size=64,big", "batch_size expects int"),
    ("optimizer=1:2", "takes a list of values"),
    ("lr", "expected NAME=LOW:HIGH"),
])
def test_bad_params_are_config_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_param(text)


@pytest.mark.quick
def test_space_file(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n[batch_size]\nchoices = [64, 128]\n"
                     "[model_args.width]\nchoices = [8, 16]\n")
    params = {p.name: p for p in read_space_file(space)}
    assert params["lr"].log and params["batch_size"].choices == (64, 128) and params["model_args.width"].choices
    with pytest.raises(ConfigError, match="searched twice: lr"):
        search_space(["lr=1e-3:1e-2"], str(space))
    space.write_text("[lr]\nlow = 1e-4\n")
    with pytest.raises(ConfigError, match=r"\[lr\] needs low and high"):
        read_space_file(space)


# --- one-line errors, and nothing written ----------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--param", "nope=1:2"], "not a recipe field"),
    (["--param", "lr=1:0.5"], "empty range"),
    (["--param", "model_args.nope=1,2"], "nope"),  # the model's builder refuses it, before any trial
    (["--param", "lr=1e-3:1e-2", "--storage", "mongodb://x/y"], "not a database Optuna can keep"),
    (["--param", "lr=1e-3:1e-2", "--storage", "not a url"], "not a database URL"),
    (["--param", "lr=1e-3:1e-2", "--trials", "0"], "--trials must be at least 1"),
    (["--param", "lr=1e-3:1e-2", "--lr", "fast"], "lr expects float"),
    ([], "nothing to search"),
    (["--param", "lr=1e-3:1e-2", "--study", "../elsewhere"], "use letters, digits"),
])
def test_bad_sweeps_fail_in_one_line_before_anything_runs(tmp_path, args, words):
    proc = run_cli("sweep", "--study", "s", *TINY, *args, cwd=tmp_path, timeout=120)
    one_line_error(proc, words)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("trial-*"))
    assert not (tmp_path / "runs" / "sweeps.db").exists() or "storage" not in " ".join(args)


def test_showing_a_study_that_is_not_there_names_what_is_and_creates_nothing(tmp_path):
    one_line_error(run_cli("sweep", "show", "nope", cwd=tmp_path), "no study 'nope'", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_database_is_one_line(tmp_path):
    started = time.monotonic()
    proc = run_cli("sweep", "--study", "s", *TINY, *LR, "--storage", f"postgresql://u@127.0.0.1:{free_port()}/d",
                   cwd=tmp_path, timeout=120)
    one_line_error(proc, "cannot open the study storage", "127.0.0.1")
    assert time.monotonic() - started < 60 and not (tmp_path / "runs").exists()


# --- a sweep on the default SQLite storage ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sqlite_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Three trials of `digitlab sweep` on the default storage, in a fresh folder."""
    folder = tmp_path_factory.mktemp("sweep")
    proc = run_cli("sweep", "--study", "lr", "--trials", "3", "--pruner", "none", *TINY, *LR, cwd=folder,
                   timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc


@pytest.mark.slow
def test_trials_are_run_folders_chosen_on_validation_and_never_read_test(sqlite_sweep):
    folder, proc = sqlite_sweep
    assert (folder / "runs" / "sweeps.db").is_file()
    show = run_cli("sweep", "show", "lr", "--json", cwd=folder, timeout=120)
    report = json.loads(show.stdout)
    assert [t["number"] for t in report["trials"]] == [0, 1, 2]
    for trial in report["trials"]:
        assert trial["state"] == "complete"
        run = folder / trial["run"]
        assert run == folder / "runs" / "sweeps" / "lr" / f"trial-{trial['number']:04d}"
        rows = read_metrics(run)
        assert all(r["test_accuracy"] is None and r["test_loss"] is None for r in rows)  # never scored on test
        assert trial["value"] == max(r["val_accuracy"] for r in rows)  # the objective: best validation accuracy
        config = json.loads((run / "config.json").read_text())
        assert config["lr"] == trial["params"]["lr"] and config["eval_test"] is False
    assert report["best"]["value"] == max(t["value"] for t in report["trials"])
    for name in ("history", "importances", "parallel"):
        assert Path(folder / report["figures"][name]).read_bytes()[:4] == b"\x89PNG"
    assert "trial 2 complete: validation accuracy" in proc.stdout


@pytest.mark.slow
def test_the_best_recipe_retrains_from_its_file_and_reports_test(sqlite_sweep, tmp_path):
    folder, _ = sqlite_sweep
    best = json.loads(run_cli("sweep", "show", "lr", "--json", "--no-figures", cwd=folder).stdout)
    recipe = folder / best["best_config"]
    text = recipe.read_text()
    assert f"lr = {best['best']['params']['lr']!r}" in text and "eval_test = true" in text and "out =" not in text
    proc = run_cli("train", "--config", str(recipe), "--out", str(tmp_path / "retrained"), "--no-progress",
                   cwd=folder)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "retrained" / "config.json").read_text())
    assert saved["lr"] == best["best"]["params"]["lr"] and saved["model_args"] == {"width": 4, "depth": 1}
    assert "test accuracy:" in proc.stdout and read_metrics(tmp_path / "retrained")[-1]["test_accuracy"] > 0.5


@pytest.mark.slow
def test_running_the_command_again_adds_trials(sqlite_sweep, tmp_path):
    folder, _ = sqlite_sweep
    again = tmp_path / "again"
    import shutil

    shutil.copytree(folder / "runs", again / "runs")
    proc = run_cli("sweep", "--study", "lr", "--trials", "1", "--pruner", "none", *TINY, *LR, cwd=again)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(run_cli("sweep", "show", "lr", "--json", "--no-figures", cwd=again).stdout)
    assert [t["number"] for t in report["trials"]] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_crashing_trial_is_failed_and_the_sweep_goes_on(tmp_path):
    """A hold-out as large as the training set, which only training finds out: each trial stops with its one-line
    reason, marked failed; the next one runs."""
    proc = run_cli("sweep", "--study", "boom", "--trials", "2", "--pruner", "none", *TINY,
                   "--param", "val_size=60000,70000", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("must be smaller than the training set") == 2, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads(run_cli("sweep", "show", "boom", "--json", "--no-figures", cwd=tmp_path).stdout)
    assert [t["state"] for t in report["trials"]] == ["fail", "fail"] and report["best"] is None


@pytest.mark.quick
def test_the_pruner_stops_a_trail_that_trails():
    """PruningReporter raises TrialPruned when Optuna's pruner says so, and reports each validation figure."""
    import optuna

    from digitlab.sweep.objective import PruningReporter

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for step, value in ((20, 0.9), (40, 0.95)):
        PruningReporter(good).on_evaluation(None, {"val_accuracy": value, "step": step}, False)
    study.tell(good, 0.95)
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned):
        PruningReporter(bad).on_evaluation(None, {"val_accuracy": 0.1, "step": 20}, False)
    assert bad.storage.get_trial(bad._trial_id).intermediate_values == {20: 0.1}


# --- PostgreSQL: several processes on one study, and kill -9 -----------------------------------------------------

def sweep_process(folder: Path, storage: str, study: str, *args: str) -> subprocess.Popen:
    """`digitlab sweep --study STUDY` in the background, as another machine would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "digitlab", "sweep", "--study", study, "--storage", storage,
                             "--pruner", "none", *TINY, *LR, *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


_storages: dict = {}


def study_trials(storage: str, name: str):
    """The study's trials as the database holds them now (one storage per URL: each holds a connection pool)."""
    import optuna

    from digitlab.sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage not in _storages:
        _storages[storage] = open_storage(storage, heartbeat=False)
    return optuna.load_study(study_name=name, storage=_storages[storage]).get_trials()


@pytest.mark.slow
def test_two_processes_share_a_postgresql_study_without_losing_or_doubling_a_trial(postgres_url, tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    workers = [sweep_process(folder, postgres_url, "shared", "--trials", "3", "--out", str(tmp_path / "trials"))
               for folder in folders]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = study_trials(postgres_url, "shared")
    assert sorted(t.number for t in trials) == list(range(6))  # 3 + 3: none lost, none twice
    assert all(t.state.name == "COMPLETE" for t in trials)
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == 6 and len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    for trial in trials:
        assert trial.value == max(r["val_accuracy"] for r in read_metrics(Path(trial.user_attrs["run"])))


def running_trial_of(storage: str, study: str, parent: subprocess.Popen, deadline_s: float = 300):
    """The first trial RUNNING in a worker process of `parent` that has trained past its first evaluation (its run
    folder has a metrics.csv), polled until the deadline or the parent's end."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and parent.poll() is None:
        try:
            for trial in study_trials(storage, study):
                run = trial.user_attrs.get("run")
                if (trial.state.name == "RUNNING" and trial.user_attrs.get("pid") in child_pids(parent.pid) and run
                        and (Path(run) / "metrics.csv").is_file()):
                    return trial
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.1)
    raise AssertionError("no trial of a worker got to its first evaluation while the sweep ran")


def child_pids(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_the_study_usable(postgres_url, tmp_path):
    """kill -9 of one --jobs worker: its trial is marked failed, never complete; the other worker finishes; the
    same command run again goes on from there."""
    args = ("--trials", "4", "--jobs", "2", "--out", str(tmp_path / "trials"), "--max-steps", "200")
    sweep = sweep_process(tmp_path, postgres_url, "killed", *args)
    try:
        victim = running_trial_of(postgres_url, "killed", sweep)
    except AssertionError:
        sweep.kill()
        raise AssertionError(sweep.communicate()[0]) from None
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 1, output
    assert f"trial {victim.number}: its process is gone" in output and "Traceback" not in output
    states = {t.number: t.state.name for t in study_trials(postgres_url, "killed")}
    assert states[victim.number] == "FAIL" and "RUNNING" not in states.values()
    assert list(states.values()).count("COMPLETE") >= 2  # the other worker's two trials, at least
    again = sweep_process(tmp_path, postgres_url, "killed", "--trials", "2", "--out", str(tmp_path / "trials"))
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    after = [t.state.name for t in study_trials(postgres_url, "killed")]
    assert len(after) == len(states) + 2 and after.count("FAIL") == 1 and "RUNNING" not in after
    assert after.count("COMPLETE") == len(after) - 1  # the killed trial is never counted complete


def open_fresh(url: str, answers) -> None:
    """A process opening the study storage, as each machine of a shared sweep does when it starts."""
    from digitlab.sweep.storage import open_storage

    try:
        open_storage(url)
        answers.put("ok")
    except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
        answers.put(repr(e))


@pytest.mark.slow
def test_machines_starting_together_on_an_empty_database_all_get_the_study(private_postgres):
    """Several processes creating Optuna's tables at once on a new database: the losers of that race (a duplicate
    key in PostgreSQL's catalogue) open it again instead of failing."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    openers = [context.Process(target=open_fresh, args=(private_postgres.url, answers)) for _ in range(6)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    assert [answers.get(timeout=5) for _ in openers] == ["ok"] * 6
