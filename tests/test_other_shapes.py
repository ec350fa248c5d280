"""A dataset of another shape than MNIST's, end to end: 26 classes of 3x32x32 colour images, built here as a
data.Dataset (as a user's own images would be), train a few steps, evaluate, export to ONNX and predict, each
step reading the shape from the dataset or the checkpoint's metadata."""
from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from PIL import Image

import digitlab
from digitlab.config import make_config
from digitlab.data import Dataset
from digitlab.errors import ConfigError
from digitlab.export import export_run
from digitlab.predict import Predictor
from digitlab.shapes import InputShape

LETTERS = tuple(string.ascii_uppercase)
SHAPE = InputShape(26, 3, (32, 32))


def letter_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n dim noise images (n, 3, 32, 32), each with a bright 5x5 block whose place and colour give its class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 26
    images = torch.randint(0, 60, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, label in enumerate(labels.tolist()):
        row, col = 1 + 6 * (label // 5), 1 + 6 * (label % 5)
        images[i, label % 3, row:row + 5, col:col + 5] = 255
    return images, labels


@pytest.fixture(scope="module")
def letters() -> Dataset:
    train_images, train_labels = letter_images(780, seed=0)
    test_images, test_labels = letter_images(130, seed=1)
    return Dataset("letters", LETTERS, train_images, train_labels, test_images, test_labels)


def train_letters(model: str, model_args: dict, out, dataset: Dataset):
    cfg = make_config({"model": model, "model_args": model_args, "epochs": 1, "max_steps": 8, "batch_size": 32,
                       "lr": 3e-3, "val_size": 104, "device": "cpu", "threads": 1, "plot": False,
                       "tensorboard": False, "out": str(out)})
    return digitlab.train(cfg, dataset=dataset, progress=False, log=lambda *_: None)


@pytest.mark.quick
def test_the_dataset_carries_its_shape(letters):
    assert letters.shape == SHAPE and letters.shape.pixels == (3, 32, 32) and not letters.shape.is_mnist


@pytest.mark.parametrize("model, model_args", [("digitnet", {"width": 4, "depth": 1}), ("lstm", {"hidden_size": 16})])
def test_train_evaluate_export_and_predict_another_shape(model, model_args, letters, tmp_path):
    train_letters(model, model_args, tmp_path / "run", letters)

    loaded = digitlab.load_run(tmp_path / "run")
    assert loaded.shape == SHAPE and loaded.classes == LETTERS
    assert {k: loaded.meta[k] for k in ("num_classes", "in_chans", "image_size")} == SHAPE.to_meta()

    metrics = digitlab.evaluate(loaded.model, letters.test_images, letters.test_labels, loaded.normalization)
    assert len(metrics["per_class_accuracy"]) == 26 and len(metrics["confusion"]) == 26 and metrics["count"] == 130

    exported = export_run(tmp_path / "run", "onnx", check_images=64)
    assert exported.parity.max_abs_diff < 1e-4 and "random" in exported.parity_images

    onnx = Predictor.from_onnx(exported.path)
    torch_predictor = Predictor.from_run(tmp_path / "run")
    assert onnx.info.shape == torch_predictor.info.shape == SHAPE
    images = letters.test_images[:8].numpy()
    np.testing.assert_allclose(onnx.logits(images), torch_predictor.logits(images), atol=1e-4)
    answers = onnx.predict(list(images), preprocess=False)
    assert [a.class_name for a in answers] == [LETTERS[a.label] for a in answers]

    picture = tmp_path / "photo.png"  # a picture of another size: converted and resized, not made MNIST-like
    Image.fromarray(np.full((45, 60, 3), (200, 30, 30), np.uint8)).save(picture)
    assert Predictor.to_input(str(picture), shape=SHAPE).shape == (3, 32, 32)
    for predictor in (onnx, torch_predictor):
        [answer] = predictor.predict(str(picture))
        assert 0 <= answer.label < 26 and len(answer.probabilities) == 26
    [result] = onnx.predict_files([picture])
    assert result.error is None and result.image.shape == (3, 32, 32) and result.prediction.class_name in LETTERS


def test_grey_pictures_of_another_size_are_resized(tmp_path):
    grey = InputShape(47, 1, (20, 24))
    picture = tmp_path / "wide.png"
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(picture)
    assert Predictor.to_input(str(picture), shape=grey).shape == (20, 24)
    assert Predictor.to_input(np.zeros((20, 24), np.uint8), preprocess=False, shape=grey).shape == (20, 24)


@pytest.mark.quick
def test_pen_digits_need_mnists_shape(letters, tmp_path):
    cfg = make_config({"model": "mlp", "epochs": 1, "max_steps": 1, "pen_digits": 100, "device": "cpu",
                       "threads": 1, "plot": False, "tensorboard": False, "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="pen_digits and non_digits are 1x28x28"):
        digitlab.train(cfg, dataset=letters, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("workers", ["0", "1"])  # threads here, or a worker process that loads the model
def test_serve_refuses_another_shape_in_one_line_at_start(letters, tmp_path, workers):
    """The page and /api/predict send 28x28 grey pixels: a 3x32x32 model is refused before the server listens,
    with what it reads, not with a reshape error at its first request."""
    from helpers import free_port, run_cli

    train_letters("cnn", {}, tmp_path / "run", letters)
    proc = run_cli("serve", str(tmp_path / "run"), "--port", str(free_port()), "--workers", workers, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "reads 26 classes of 3x32x32 images; digitlab serve answers models of MNIST's shape" in line


def test_predict_text_names_classes_that_are_not_numbers(letters, tmp_path):
    """Text output shows a class's name beside its number where they differ (12 'M'); JSON has class_name."""
    import re

    from helpers import run_cli

    train_letters("cnn", {}, tmp_path / "run", letters)
    picture = tmp_path / "letter.png"
    Image.fromarray(letters.test_images[0].permute(1, 2, 0).numpy()).save(picture)
    proc = run_cli("predict", str(tmp_path / "run"), str(picture), "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    shown = re.findall(r"(\d+) '([A-Z])'", proc.stdout.splitlines()[0])
    assert len(shown) == 4 and all(LETTERS[int(number)] == name for number, name in shown), proc.stdout


@pytest.mark.quick
def test_explain_refuses_another_shape_in_one_line(tmp_path):
    from digitlab.checkpoint import LoadedModel
    from digitlab.attribution.explainer import Explainer

    model = digitlab.create_model("cnn", **SHAPE.to_meta())
    loaded = LoadedModel(model, "cnn", {}, "standard", "letters", LETTERS, tmp_path / "best.safetensors", {},
                         shape=SHAPE)
    with pytest.raises(ConfigError, match="explain draws 1x28x28 images; .* reads 26 classes of 3x32x32 images"):
        Explainer.from_loaded(loaded)


@pytest.mark.quick
def test_summary_runs_the_models_shape():
    from digitlab.summary import format_summary

    text = format_summary("rnn", digitlab.create_model("rnn", **SHAPE.to_meta()), SHAPE)
    assert text.startswith("rnn: input (1, 3, 32, 32)") and "(1, 26)" in text


@pytest.mark.quick
def test_checkpoints_without_a_shape_are_mnists():
    from digitlab.predict import DEFAULT_WEIGHTS
    from digitlab.shapes import MNIST_SHAPE

    loaded = digitlab.load_run(DEFAULT_WEIGHTS)  # the shipped weights predate the shape keys
    assert "num_classes" not in loaded.meta and loaded.shape == MNIST_SHAPE
    assert Predictor.from_shipped().info.shape == MNIST_SHAPE


@pytest.mark.quick
def test_a_shape_in_metadata_that_disagrees_with_the_classes_is_refused(tmp_path):
    from digitlab.checkpoint import read_weights, save_weights
    from digitlab.errors import RunError
    from digitlab.predict import DEFAULT_WEIGHTS

    _, meta = read_weights(DEFAULT_WEIGHTS)
    model = digitlab.load_run(DEFAULT_WEIGHTS).model
    save_weights(tmp_path / "odd.safetensors", model, {**meta, "num_classes": 26})
    with pytest.raises(RunError, match="names 10 classes for a model of 26"):
        digitlab.load_run(tmp_path / "odd.safetensors")
