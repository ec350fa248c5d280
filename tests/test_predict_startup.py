"""`digitlab predict` with the shipped model starts without PyTorch, and answers as the PyTorch model does.

Importing torch was most of `digitlab predict FOLDER`'s start-up (about 1.5 s of CPU of 2.2 s on 2 idle cores,
against under 0.3 s for everything else), which capped a 2,000-file folder at 516 images/s end to end. The
shipped model now runs on ONNX Runtime from weights/default.onnx, exported from weights/default.safetensors and
tied to it by its sha256, so torch is never imported; the labels are the same and the probabilities agree to
1e-6 (the JSON rounds them to 6 decimals). Speed is measured by benchmarks/predict_folder.py, not here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import digitlab.predict as predict_module
from digitlab.data import load_dataset
from digitlab.normalize import NORMALIZATIONS, normalize, normalize_array
from digitlab.predict import DEFAULT_ONNX, DEFAULT_WEIGHTS, WEIGHTS_SHA256, Predictor, weights_sha256

SRC = Path(__file__).resolve().parents[1] / "src"
FILES = 70  # more than POOL_MIN_FILES: the folder goes through the worker pool, as big folders do


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """FILES 64x64 dark-on-white PNGs of MNIST test digits, and their labels."""
    ds = load_dataset("mnist", progress=False)
    out = tmp_path_factory.mktemp("digits")
    for i in range(FILES):
        Image.fromarray(255 - ds.test_images[i].numpy()).resize((64, 64), Image.BILINEAR).save(out / f"{i:03d}.png")
    return out, ds.test_labels[:FILES].numpy()


def run_predict(folder: Path) -> tuple[list[dict], list[str]]:
    """`digitlab predict FOLDER --json` in a fresh interpreter: its JSON lines, and the heavy modules it imported."""
    code = ("import sys; from digitlab.cli import main; code = main(['predict', sys.argv[1], '--json']); "
            "print('MODULES', [m for m in ('torch', 'onnxruntime') if m in sys.modules]); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    return [json.loads(line) for line in lines[:-1]], eval(lines[-1].removeprefix("MODULES "))  # a list literal


def test_predict_folder_with_the_shipped_model_never_imports_torch(folder):
    path, labels = folder
    rows, modules = run_predict(path)
    assert modules == ["onnxruntime"]
    assert [Path(r["file"]).name for r in rows] == [f"{i:03d}.png" for i in range(FILES)]
    torch.set_num_threads(1)
    reference = Predictor.from_run().predict_files(sorted(path.iterdir()), workers=1)  # PyTorch, as before
    for row, ref in zip(rows, reference, strict=True):
        assert row["label"] == ref.prediction.label
        assert [k for k, _ in row["top_k"]] == [k for k, _ in ref.prediction.top_k]
        np.testing.assert_allclose(row["probabilities"], ref.prediction.probabilities, atol=1e-6 + 1e-9)
        assert row["probability"] == pytest.approx(ref.prediction.probability, abs=1e-6)
    assert np.mean([r["label"] for r in rows] == labels) > 0.95  # real labels, not noise


def test_shipped_onnx_is_the_shipped_weights():
    """Fails when the shipped model is retrained without `python scripts/export_shipped_onnx.py`."""
    onnx = Predictor.from_onnx(DEFAULT_ONNX, threads=1)
    assert onnx.backend.meta[WEIGHTS_SHA256] == weights_sha256(DEFAULT_WEIGHTS)
    torch.set_num_threads(1)
    pytorch = Predictor.from_run()
    images = load_dataset("mnist", progress=False).test_images[:500].numpy()
    a, b = onnx.logits(images), pytorch.logits(images)
    assert np.abs(a - b).max() < 1e-4 and np.array_equal(a.argmax(1), b.argmax(1))
    assert onnx.info.normalization == pytorch.info.normalization and onnx.classes == pytorch.classes


def test_from_shipped_runs_on_onnx_runtime_when_it_can():
    assert Predictor.from_shipped().backend.runtime.startswith("onnxruntime")


def test_stale_or_missing_onnx_falls_back_to_pytorch(monkeypatch, tmp_path):
    monkeypatch.setattr(predict_module, "weights_sha256", lambda path: "0" * 64)  # the weights were retrained
    assert Predictor.from_shipped().backend.runtime.startswith("torch")
    monkeypatch.undo()
    monkeypatch.setattr(predict_module, "DEFAULT_ONNX", tmp_path / "absent.onnx")
    assert Predictor.from_shipped().backend.runtime.startswith("torch")
    monkeypatch.undo()
    monkeypatch.setattr(predict_module, "_onnxruntime_installed", lambda: False)
    assert Predictor.from_shipped().backend.runtime.startswith("torch")


@pytest.mark.quick
@pytest.mark.parametrize("kind", list(NORMALIZATIONS))
def test_numpy_normalisation_is_torchs_bit_for_bit(kind: str):
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16).repeat(2, axis=0)
    expected = normalize(torch.from_numpy(pixels), kind).numpy()
    got = normalize_array(pixels, kind)
    assert got.dtype == expected.dtype and got.shape == expected.shape and np.array_equal(got, expected)


def test_package_names_are_the_functions_in_any_import_order():
    """`digitlab.train` and `digitlab.evaluate` are functions from the modules digitlab.training and
    digitlab.evaluation; importing the package imports neither (nor torch), and importing the modules first
    leaves the functions in place."""
    code = ("import sys, types, digitlab; assert 'torch' not in sys.modules; "
            "import digitlab.training, digitlab.evaluation; "
            "from digitlab import train, evaluate, Predictor, load_dataset; "
            "assert callable(train) and callable(evaluate) and digitlab.train is train, (train, evaluate); "
            "assert isinstance(digitlab.training, types.ModuleType) and digitlab.evaluation.evaluate is evaluate; "
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
