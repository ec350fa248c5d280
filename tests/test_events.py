"""The training loop's events: who hears what, in which order; a subscriber that stops a run; TensorBoard's event
files read back against metrics.csv."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from digitlab import make_config, train
from digitlab.events import Subscriber
from digitlab.runs import LOCK_NAME, read_metrics

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def small(mnist):
    return replace(mnist, train_images=mnist.train_images[:1200], train_labels=mnist.train_labels[:1200],
                   test_images=mnist.test_images[:300], test_labels=mnist.test_labels[:300])


def tiny(tmp_path, **fields):
    return make_config(model="digitnet", model_args={"width": 4, "depth": 1}, batch_size=100, threads=1,
                       val_size=200, plot=False, out=str(tmp_path / "run"), **fields)


class Recorder(Subscriber):
    """Writes down every event it hears, with the step it came at."""

    def __init__(self):
        self.heard: list[tuple] = []

    def on_start(self, run):
        self.heard.append(("start", run.progress.step))

    def on_epoch_start(self, run, epoch):
        self.heard.append(("epoch_start", epoch))

    def on_step(self, run, tally):
        self.heard.append(("step", run.progress.step))

    def on_evaluation(self, run, row, epoch_end):
        assert (run.run_dir / "best.safetensors").is_file()  # `best` is saved before anyone hears of the row
        self.heard.append(("evaluation", row["step"], epoch_end))

    def on_epoch_end(self, run, row):
        self.heard.append(("epoch_end", row["step"]))

    def on_checkpoint(self, run, row):
        assert (run.run_dir / "last.safetensors").is_file()
        self.heard.append(("checkpoint", row["step"]))

    def on_finish(self, run, result):
        self.heard.append(("finish", result.final["step"]))

    def close(self):
        self.heard.append(("close",))


def test_subscribers_hear_the_loop_in_order(small, tmp_path):
    recorder = Recorder()
    train(tiny(tmp_path, epochs=2, eval_every=5, tensorboard=False), dataset=small, subscribers=[recorder], **QUIET)
    steps = [("step", s) for s in range(1, 11)]  # 1,000 training images a epoch at batch 100
    assert recorder.heard == [
        ("start", 0), ("epoch_start", 0), *steps[:5], ("evaluation", 5, False), *steps[5:],
        ("evaluation", 10, True), ("epoch_end", 10), ("checkpoint", 10),
        ("epoch_start", 1), *[("step", s + 10) for s in range(1, 6)], ("evaluation", 15, False),
        *[("step", s + 10) for s in range(6, 11)], ("evaluation", 20, True), ("epoch_end", 20), ("checkpoint", 20),
        ("finish", 20), ("close",)]


class Stopper(Recorder):
    def on_evaluation(self, run, row, epoch_end):
        super().on_evaluation(run, row, epoch_end)
        raise RuntimeError("enough")


def test_a_subscriber_can_stop_the_run_and_everything_is_closed(small, tmp_path):
    stopper = Stopper()
    with pytest.raises(RuntimeError, match="enough"):
        train(tiny(tmp_path, epochs=2, eval_every=5, tensorboard=False), dataset=small, subscribers=[stopper],
              **QUIET)
    assert stopper.heard[-2:] == [("evaluation", 5, False), ("close",)]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [5]  # metrics.csv heard the row first
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # the folder is free for a resume


def event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_run(small, tmp_path):
    result = train(tiny(tmp_path, epochs=2, eval_every=5), dataset=small, **QUIET)
    scalars, events = event_scalars(tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    for tag, key in (("accuracy/val", "val_accuracy"), ("accuracy/test", "test_accuracy"),
                     ("loss/train", "train_loss"), ("optim/lr", "lr"), ("speed/images_per_s", "images_per_s")):
        assert [s for s, _ in scalars[tag]] == [r["step"] for r in rows], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
    images = events.Tags()["images"]
    assert {"final/confusion_test", "final/mistakes_test"} <= set(images)
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == pytest.approx(result_lr(tmp_path)) and start["model"].string_value == "digitnet"
    assert start["model_args.width"].number_value == 4
    assert hparams["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    assert result.final["step"] == 20


def result_lr(tmp_path) -> float:
    return json.loads((tmp_path / "run" / "config.json").read_text())["lr"]


@pytest.mark.slow
def test_a_resumed_run_adds_to_its_event_files_without_doubling(small, tmp_path):
    train(tiny(tmp_path, epochs=1, eval_every=5), dataset=small, **QUIET)
    train(tiny(tmp_path, epochs=2, eval_every=5), dataset=small, resume=True, **QUIET)
    scalars, _ = event_scalars(tmp_path / "run")
    assert [s for s, _ in scalars["accuracy/val"]] == [5, 10, 15, 20]


def test_without_tensorboard_installed_a_run_says_so_once(small, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    lines: list[str] = []
    train(tiny(tmp_path, max_steps=3), dataset=small, progress=False, log=lines.append)
    assert sum("tensorboard package is not installed" in line for line in lines) == 1
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_train_draws_no_progress_bar_into_a_file_or_pipe(small, tmp_path, capsys):
    """The Python API's default, progress=True, draws bars only where someone watches them live: under pytest,
    as in a script whose output goes to a log file, stderr is not a terminal, so no carriage-return bars."""
    lines: list[str] = []
    train(tiny(tmp_path, epochs=1), small, progress=True, log=lines.append)
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err and "epoch 1/1" not in err, err[:300]
    assert any(line.startswith("epoch 1/1:") for line in lines)  # the epoch's summary line is still there


@pytest.mark.quick
def test_bars_are_wanted_on_a_terminal_or_in_a_notebook(monkeypatch):
    import io
    import sys
    import types

    from digitlab import bars

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert bars.wanted(True, Terminal()) and not bars.wanted(False, Terminal())
    assert not bars.wanted(True, io.StringIO())
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert bars.in_notebook() and bars.wanted(True, io.StringIO())  # Jupyter: tqdm.auto draws a widget
    console = types.SimpleNamespace(config={"TerminalInteractiveShell": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: console))
    assert not bars.in_notebook()
