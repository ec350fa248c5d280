"""The training loop's contracts: what stopped_early means, where channels_last applies, no progress bars in
log files, and Ctrl-C saying what was saved and how to resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import digitlab.training as train_module
from digitlab import load_dataset, make_config, train
from digitlab.checkpoint import read_state
from digitlab.models import create_model
from digitlab.runs import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).with_name("digitlab_wrapped.py")
QUIET = {"progress": False, "log": lambda *_: None}
EVENT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def small():
    ds = load_dataset("mnist", progress=False)
    return replace(ds, train_images=ds.train_images[:500], train_labels=ds.train_labels[:500],
                   test_images=ds.test_images[:200], test_labels=ds.test_labels[:200])


def scripted_accuracy(monkeypatch, accuracies: list[float]) -> None:
    """Make every evaluation score the next of `accuracies` (test accuracy, no hold-out)."""
    scores = iter(accuracies)
    monkeypatch.setattr(train_module, "sharded_eval", lambda *_args: (0.5, next(scores)))


def mlp(tmp_path: Path, **fields):
    return make_config(model="mlp", batch_size=100, threads=1, out=str(tmp_path / "run"), **fields)


@pytest.mark.slow
def test_reaching_the_target_at_the_planned_last_epoch_is_not_stopping_early(small, tmp_path, monkeypatch):
    scripted_accuracy(monkeypatch, [0.4, 0.6])
    result = train(mlp(tmp_path, epochs=2, target_accuracy=0.5), dataset=small, **QUIET)
    assert len(result.history) == 2 and not result.stopped_early


@pytest.mark.slow
def test_reaching_the_target_at_max_steps_is_not_stopping_early(small, tmp_path, monkeypatch):
    scripted_accuracy(monkeypatch, [0.6])
    result = train(mlp(tmp_path, epochs=3, max_steps=3, target_accuracy=0.5), dataset=small, **QUIET)
    assert result.final["step"] == 3 and not result.stopped_early


@pytest.mark.slow
def test_reaching_the_target_before_the_last_epoch_is_stopping_early(small, tmp_path, monkeypatch):
    scripted_accuracy(monkeypatch, [0.6, 0.7, 0.8])
    result = train(mlp(tmp_path, epochs=3, target_accuracy=0.5), dataset=small, **QUIET)
    assert len(result.history) == 1 and result.stopped_early
    assert read_state(tmp_path / "run" / "last.state.pt")["epoch"] == 1


@pytest.mark.slow
def test_mid_epoch_target_ends_the_run_early_without_an_extra_evaluation(small, tmp_path, monkeypatch):
    scripted_accuracy(monkeypatch, [0.2, 0.6, 0.9])
    result = train(mlp(tmp_path, epochs=1, eval_every=2, target_accuracy=0.5), dataset=small, **QUIET)
    assert [r["step"] for r in result.history] == [2, 4] and result.stopped_early


def last_conv(model: torch.nn.Module) -> torch.Tensor:
    """The weight of the model's last Conv2d: more than one input channel, so its two layouts differ."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight


def test_channels_last_is_decided_and_applied_in_one_place():
    cuda = torch.device("cuda")  # the helper only reads the device type: the conversion itself runs on the CPU
    x = torch.randn(2, 3, 28, 28)  # 3 channels: with one, both layouts are the same strides
    cnn = create_model("cnn")
    to_format = train_module.channels_last_for(cnn, make_config(model="cnn"), cuda)
    assert last_conv(cnn).is_contiguous(memory_format=torch.channels_last)
    assert to_format(x).is_contiguous(memory_format=torch.channels_last)
    for cfg, device in ((make_config(model="cnn", channels_last=False), cuda), (make_config(model="cnn"), "cpu")):
        plain = create_model("cnn")
        to_format = train_module.channels_last_for(plain, cfg, torch.device(device))
        assert last_conv(plain).is_contiguous() and to_format(x) is x
    assert train_module.channels_last_for(create_model("mlp"), make_config(model="mlp"), cuda)(x) is x  # no convs


def test_digitnet_runs_channels_last_on_a_cpu_unless_the_flag_says_no():
    """DigitNet opts in to channels_last on every device (oneDNN runs it faster); --no-channels-last still wins,
    and prediction converts it the same way training does."""
    from digitlab.backends import TorchBackend

    x = torch.randn(2, 3, 28, 28)
    net = create_model("digitnet", width=4, depth=1)
    assert last_conv(net).is_contiguous()  # building it converts nothing: training and prediction decide
    to_format = train_module.channels_last_for(net, make_config(model="digitnet"), torch.device("cpu"))
    assert last_conv(net).is_contiguous(memory_format=torch.channels_last)
    assert to_format(x).is_contiguous(memory_format=torch.channels_last)
    plain = create_model("digitnet", width=4, depth=1)
    off = make_config(model="digitnet", channels_last=False)
    assert train_module.channels_last_for(plain, off, torch.device("cpu"))(x) is x and last_conv(plain).is_contiguous()
    served = TorchBackend(create_model("digitnet", width=4, depth=1))
    assert last_conv(served.model).is_contiguous(memory_format=torch.channels_last)


def start_training(run: Path, *args: str, subset: int = 2000) -> subprocess.Popen:
    """`digitlab train` (through tests/digitlab_wrapped.py, on `subset` training images; 0: all) in a subprocess
    with its stdout and stderr piped, as they are when a run is logged to a file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DIGITLAB_TEST_TRAIN_SUBSET": str(subset)}
    command = [sys.executable, str(WRAPPER), "train", "--threads", "1", "--out", str(run), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                            preexec_fn=take_ctrl_c)


def take_ctrl_c() -> None:
    """SIGINT handled as in a terminal's foreground job, whatever disposition the test runner was started with:
    a child started with SIGINT ignored (a shell's background job) never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    """Poll `condition` until it holds; fail if the process ends or EVENT_TIMEOUT_S passes first."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {EVENT_TIMEOUT_S} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_no_progress_bars_when_output_is_not_a_terminal(tmp_path):
    proc = start_training(tmp_path / "run", "--model", "mlp", "--epochs", "2", "--batch-size", "100")
    out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 0, err
    assert "\r" not in err and "step/s" not in err and "it/s" not in err, err  # no tqdm bar in the log
    assert out.count("epoch 1/2:") == 1 and out.count("epoch 2/2:") == 1  # the epoch lines still print


@pytest.mark.slow
def test_ctrl_c_after_a_checkpoint_says_what_was_saved_and_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = start_training(run, "--model", "mlp", "--epochs", "500", "--batch-size", "100")
    wait_for((run / "last.state.pt").is_file, proc, "first checkpoint")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err and "epoch 500/500" not in out
    state = read_state(run / "last.state.pt")
    assert f"saved: the checkpoint of epoch {state['epoch']} (step {state['step']}) in {run}" in err, err
    assert f"Continue with: digitlab train --resume {run}\n" in err, err
    resumed = start_training(run, "--resume", str(run), "--epochs", str(state["epoch"] + 1))
    out, err = resumed.communicate(timeout=EVENT_TIMEOUT_S)
    assert resumed.returncode == 0 and f"epoch {state['epoch'] + 1}/{state['epoch'] + 1}:" in out, err


@pytest.mark.slow
def test_sigterm_ends_a_training_as_ctrl_c_does(tmp_path):
    """`kill` (a container or scheduler stopping the job) once a checkpoint exists: the same message as Ctrl-C
    naming SIGTERM, no traceback, the run folder's lock released, exit status 143 (128 + 15)."""
    run = tmp_path / "run"
    proc = start_training(run, "--model", "mlp", "--epochs", "500", "--batch-size", "100")
    wait_for((run / "last.state.pt").is_file, proc, "first checkpoint")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in out + err and "epoch 500/500" not in out
    state = read_state(run / "last.state.pt")
    assert (f"digitlab: terminated (SIGTERM); saved: the checkpoint of epoch {state['epoch']} (step {state['step']}) "
            f"in {run}. Continue with: digitlab train --resume {run}\n") in err, err
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path):
    run = tmp_path / "run"
    lines: list[str] = []
    proc = start_training(run, "--model", "cnn", "--epochs", "1", "--batch-size", "64", subset=0)  # a long epoch

    def training_started() -> bool:  # train() prints the model-selection line just before the first epoch
        lines.append(proc.stdout.readline())
        return lines[-1].startswith("model selection:")

    wait_for(training_started, proc, "start of the first epoch")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 130 and "Traceback" not in out + err, (out, err)
    assert f"no checkpoint was saved in {run}" in err and f"digitlab train --resume {run}" in err, err
    assert not (run / "last.safetensors").exists()
