"""`digitlab predict` refuses what it cannot predict before predicting anything (a mistyped run, a missing image,
an empty folder, a FIFO), never overwrites a file with --save-preprocessed, and uses the Predictor for test
images; `digitlab eval` names its figures after the checkpoint and writes them where it is allowed to."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.cli import main
from digitlab.data import load_dataset
from digitlab.predict import Predictor
from helpers import run_cli


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> Path:
    """A PNG of MNIST test image 0 (a 7), dark ink on white."""
    path = tmp_path_factory.mktemp("digit") / "seven.png"
    Image.fromarray(255 - load_dataset("mnist", progress=False).test_images[0].numpy()).save(path)
    return path


def one_line_error(capsys, *words: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == "", f"something was predicted: {captured.out}"
    assert captured.err.count("\n") == 1 and captured.err.startswith("digitlab: error: "), captured.err
    for word in words:
        assert word in captured.err, captured.err
    return captured.err


#### A first argument that looks like a run but is not one


@pytest.mark.quick
def test_mistyped_run_under_runs_is_an_error(digit, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["predict", "runs/typo", str(digit)]) == 1
    one_line_error(capsys, "runs/typo", "run")


@pytest.mark.quick
def test_missing_first_argument_without_suffix_is_an_error(digit, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "my-run"), str(digit)]) == 1
    one_line_error(capsys, "my-run", "does not exist")


def test_folder_with_run_files_but_no_config_is_an_error(trained_run, digit, tmp_path, capsys):
    for name, keep in (("no-config", ("metrics.csv",)), ("weights-only", ("best.safetensors",)),
                       ("state-only", ("last.state.pt",))):
        run = tmp_path / name
        run.mkdir()
        for file in keep:
            if (trained_run / file).exists():
                shutil.copy(trained_run / file, run / file)
            else:
                (run / file).write_bytes(b"x")
        assert main(["predict", str(run), str(digit)]) == 1
        one_line_error(capsys, str(run), "config.json")


def test_folder_with_a_broken_config_is_an_error(trained_run, digit, tmp_path, capsys):
    run = tmp_path / "broken"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text("{not json")
    assert main(["predict", str(run), str(digit)]) == 1
    one_line_error(capsys, str(run))


@pytest.mark.quick
def test_folder_under_runs_without_run_files_is_an_error(digit, tmp_path, capsys):
    folder = tmp_path / "runs" / "20240101-cnn"
    folder.mkdir(parents=True)
    Image.open(digit).save(folder / "x.png")
    assert main(["predict", str(folder), str(digit)]) == 1
    one_line_error(capsys, str(folder), "run")


#### Inputs that are not predictable images


def test_missing_image_is_an_error_before_any_prediction(trained_run, digit, tmp_path, capsys):
    assert main(["predict", str(trained_run), str(digit), str(tmp_path / "missing.png")]) == 1
    one_line_error(capsys, "missing.png", "does not exist")


def test_empty_folder_is_an_error(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(trained_run), str(empty)]) == 1
    one_line_error(capsys, str(empty), "no image")
    (empty / "notes.txt").write_text("no images here")
    assert main(["predict", str(trained_run), str(empty)]) == 1
    one_line_error(capsys, str(empty), "no image")


def test_folder_skips_files_that_are_not_images(trained_run, digit, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(digit, folder / "seven.png")
    (folder / "README.txt").write_text("these are my digits")
    assert main(["predict", str(trained_run), str(folder), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["seven.png"] and lines[0]["label"] == 7


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_not_waited_on(trained_run, digit, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = run_cli("predict", str(trained_run), str(digit), str(fifo), timeout=120)  # a hang fails on the timeout
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "pipe.png" in done.stderr and "not a regular file" in done.stderr


#### --save-preprocessed never overwrites


def test_save_preprocessed_keeps_existing_files(trained_run, digit, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "seven.png").write_bytes(b"my own file")
    (out / "seven-2.png").write_bytes(b"another of mine")
    assert main(["predict", str(trained_run), str(digit), "--save-preprocessed", str(out), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (out / "seven.png").read_bytes() == b"my own file"
    assert (out / "seven-2.png").read_bytes() == b"another of mine"
    assert line["preprocessed"] == str(out / "seven-3.png")
    assert np.asarray(Image.open(out / "seven-3.png")).shape == (28, 28)


#### --test-index goes through the Predictor


def test_test_index_uses_the_predictor(trained_run, capsys, monkeypatch):
    calls = []
    original = Predictor.logits

    def counting(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(Predictor, "logits", counting)
    assert main(["predict", str(trained_run), "--test-index", "0", "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert calls == [1] and out["label"] == out["true"] == 7 and len(out["top_k"]) == 2
    logits = np.array(out["logits"])
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(out["probabilities"], softmax, atol=1e-5)


#### eval's figures


def test_eval_names_figures_after_the_checkpoint(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for checkpoint in ("best", "last"):
        assert main(["eval", str(run), "--checkpoint", checkpoint, "--json"]) == 0
        figures = json.loads(capsys.readouterr().out)["figures"]
        assert figures == {"confusion": str(run / f"confusion-{checkpoint}.png"),
                           "misclassified": str(run / f"misclassified-{checkpoint}.png"),
                           "reliability": str(run / f"reliability-{checkpoint}.png")}
    for name in ("confusion-best", "confusion-last", "misclassified-best", "misclassified-last", "reliability-best",
                 "reliability-last"):
        assert (run / f"{name}.png").stat().st_size > 1000
    assert not (run / "confusion.png").exists() and not (run / "misclassified.png").exists()


def test_eval_of_a_lone_weights_file_writes_to_the_current_folder(trained_run, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "package" / "model.safetensors"
    weights.parent.mkdir()
    shutil.copy(trained_run / "best.safetensors", weights)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["eval", str(weights), "--json"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in weights.parent.iterdir()) == ["model.safetensors"]  # nothing next to the file
    assert sorted(p.name for p in work.iterdir()) == ["confusion-model.png", "misclassified-model.png",
                                                      "reliability-model.png"]  # its stem
    figures = tmp_path / "figs" / "deeper"
    assert main(["eval", str(weights), "--figures", str(figures)]) == 0
    assert "wrote " in capsys.readouterr().out
    assert sorted(p.name for p in figures.iterdir()) == ["confusion-model.png", "misclassified-model.png",
                                                         "reliability-model.png"]


def test_eval_where_figures_cannot_be_written_is_one_line(trained_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file, so no folder can be made under it, even by root")
    assert main(["eval", str(trained_run), "--figures", str(blocker / "figs")]) == 1
    one_line_error(capsys, str(blocker / "figs"), "--figures")


def make_read_only(folder: Path) -> None:
    """Read-only for everyone: mode 0555, and as root (whom mode bits do not stop) the immutable attribute."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)


def make_writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_eval_on_a_read_only_run_folder_is_one_line(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    make_read_only(run)
    try:
        with pytest.raises(PermissionError):  # the folder really is read-only, for this user too
            (run / "probe").write_text("")
        before = sorted(p.name for p in run.iterdir())
        assert main(["eval", str(run)]) == 1
        one_line_error(capsys, str(run), "--figures")
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        make_writable(run)


#### File names that are not plain text


@pytest.fixture
def hostile_names(digit, tmp_path) -> list[Path]:
    """The digit under names with a newline, an ANSI escape (clear screen), a bidi override, and bytes that are
    not UTF-8 (a lone surrogate in Python's str)."""
    names = ["two\nlines.png", "\x1b[2J\x1b[Hcleared.png", "\u202egnp.png", os.fsdecode(b"latin-\xe9\xff.png")]
    for name in names:
        shutil.copy(digit, tmp_path / name)
    return [tmp_path / name for name in names]


def test_text_output_escapes_control_characters_in_file_names(hostile_names, tmp_path, capsys):
    assert main(["predict", *map(str, hostile_names)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and not any(c in "".join(lines) for c in "\x1b\u202e")
    assert [line.split(": ")[0].removeprefix(f"{tmp_path}/") for line in lines] == [
        "two\\nlines.png", "\\x1b[2J\\x1b[Hcleared.png", "\\u202egnp.png", "latin-\\xe9\\xff.png"]
    assert all(" 7 (" in line for line in lines), lines


def test_json_output_is_valid_utf8_whatever_the_file_names(hostile_names, tmp_path, capsys):
    assert main(["predict", "--json", *map(str, hostile_names)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines()]
    names = [r["file"].removeprefix(f"{tmp_path}/") for r in records]
    assert names == ["two\nlines.png", "\x1b[2J\x1b[Hcleared.png", "\u202egnp.png", "latin-\\xe9\\xff.png"]
    for record in records:
        record["file"].encode("utf-8")  # no lone surrogate: strict UTF-8 readers (and json.loads elsewhere) take it
    assert len(out.splitlines()) == 4 and "\\udc" not in out
