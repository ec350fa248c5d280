"""`digitlab predict FOLDER` and Predictor.predict_files on many files: batched model calls in chunks and
preprocessing in worker processes must not change what is printed, in what order, or the numbers. An unreadable
file in the middle is an error line for that file, the rest are still predicted, and the exit status is 1.
Speed is measured by benchmarks/predict_folder.py, not here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import digitlab.predict as predict_module
from digitlab.cli import main
from digitlab.data import load_dataset
from digitlab.predict import Predictor

CHUNK = 4  # small chunks in these tests, so a dozen files cross several chunk boundaries


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.from_run()


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset("mnist", progress=False)
    return ds.test_images.numpy(), ds.test_labels.numpy()


def make_folder(folder: Path, mnist, n: int, broken: tuple[int, ...] = ()) -> list[Path]:
    """n 64x64 dark-on-white PNGs named 00.png, 01.png...; the indices in `broken` hold bytes that are no image."""
    images, _ = mnist
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        if i in broken:
            path.write_bytes(b"not a png at all")
        else:
            Image.fromarray(255 - images[i]).resize((64, 64), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of CHUNK files, and worker processes even for a few files (the path big folders take)."""
    monkeypatch.setattr(predict_module, "CHUNK", CHUNK)
    monkeypatch.setattr(predict_module, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(predict_module, "cpu_count", lambda: 2)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.quick
def test_broken_file_in_the_middle_is_one_error_line_and_the_rest_are_predicted(small_chunks, mnist, tmp_path,
                                                                                capsys):
    paths = make_folder(tmp_path / "digits", mnist, 2 * CHUNK + 1, broken=(CHUNK + 1,))
    assert main(["predict", str(tmp_path / "digits"), "--json"]) == 1
    lines = json_lines(capsys.readouterr().out)
    assert [line["file"] for line in lines] == [str(p) for p in paths]  # every file, in sorted order
    bad = lines.pop(CHUNK + 1)
    assert set(bad) == {"file", "error"} and f"{CHUNK + 1:02d}.png" in bad["error"]
    labels = mnist[1][[i for i in range(len(paths)) if i != CHUNK + 1]]
    assert [line["label"] for line in lines] == labels.tolist()


@pytest.mark.quick
def test_broken_file_in_plain_output_goes_to_stderr_and_the_rest_in_order(small_chunks, mnist, tmp_path, capsys):
    paths = make_folder(tmp_path / "digits", mnist, CHUNK + 2, broken=(1,))
    assert main(["predict", str(tmp_path / "digits")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"{paths[1]}: error: "), captured.err
    out = captured.out.splitlines()
    assert [line.split(":")[0] for line in out] == [str(p) for i, p in enumerate(paths) if i != 1]
    assert [int(line.split(": ")[1].split()[0]) for line in out] == [mnist[1][i] for i in range(len(paths)) if i != 1]


@pytest.mark.parametrize("n", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1])
@pytest.mark.parametrize("workers", [1, 2])
def test_results_equal_predicting_each_file_alone(small_chunks, shipped, mnist, tmp_path, n, workers):
    paths = make_folder(tmp_path / "digits", mnist, n, broken=(n // 2,))
    results = list(shipped.predict_files(paths, top_k=3, workers=workers, chunk=CHUNK))
    assert [r.path for r in results] == paths
    for i, (path, result) in enumerate(zip(paths, results)):
        if i == n // 2:
            assert result.prediction is None and result.image is None
            assert result.error and path.name in result.error
            continue
        alone = shipped.predict(str(path), top_k=3)[0]
        assert result.error is None and result.prediction.label == alone.label
        assert result.prediction.probability == pytest.approx(alone.probability, abs=1e-6)
        np.testing.assert_allclose(result.prediction.probabilities, alone.probabilities, atol=1e-6 + 1e-9)
        np.testing.assert_array_equal(result.image, Predictor.to_input(str(path)))


def test_one_model_call_per_chunk(small_chunks, shipped, mnist, tmp_path, monkeypatch):
    calls = []
    original = shipped.backend.logits
    monkeypatch.setattr(shipped.backend, "logits", lambda x: calls.append(len(x)) or original(x))
    paths = make_folder(tmp_path / "digits", mnist, 2 * CHUNK + 1, broken=(0,))
    assert len(list(shipped.predict_files(paths, workers=2, chunk=CHUNK))) == len(paths)
    assert calls == [CHUNK - 1, CHUNK, 1]  # the broken file is not sent to the model


def test_results_stream_before_later_chunks_are_read(shipped, mnist, tmp_path, monkeypatch):
    paths = make_folder(tmp_path / "digits", mnist, 3 * CHUNK, broken=())
    read = []
    original = predict_module._preprocess_file
    monkeypatch.setattr(predict_module, "_preprocess_file", lambda p: read.append(p) or original(p))
    results = shipped.predict_files(paths, workers=1, chunk=CHUNK)
    first = next(results)
    assert first.path == paths[0] and read == paths[:CHUNK]  # one chunk in memory, not the whole folder
    assert [r.path for r in results] == paths[1:]


def test_save_preprocessed_writes_what_the_model_saw_with_workers(small_chunks, mnist, tmp_path, capsys):
    paths = make_folder(tmp_path / "digits", mnist, CHUNK + 1, broken=(2,))
    out = tmp_path / "seen"
    assert main(["predict", str(tmp_path / "digits"), "--json", "--save-preprocessed", str(out)]) == 1
    lines = json_lines(capsys.readouterr().out)
    assert "preprocessed" not in lines[2] and sorted(p.name for p in out.iterdir()) == [
        p.with_suffix(".png").name for i, p in enumerate(paths) if i != 2]
    for path, line in zip(paths, lines):
        if "preprocessed" in line:
            np.testing.assert_array_equal(np.asarray(Image.open(line["preprocessed"])),
                                          Predictor.to_input(str(path)))
