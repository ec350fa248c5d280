"""Predictor and `digitlab predict` on real MNIST test digits rendered the way users send them.

The main check: MNIST-style preprocessing must not change what the model answers. A digit rendered
inverted, off-centre, tiny on a large page, on a transparent background, as a JPEG at quality 30 or
under uneven light must get the label the untouched MNIST digit gets, for at least 97% of 1,000 digits
per kind, with the shipped model. Then: every input type (path, bytes, PIL, numpy grey/RGB/RGBA, tensors)
gives the same answer, and the CLI reads folders, reports unreadable files without stopping, prints top-k,
saves what the model saw and uses the shipped model when no run is given. Those use conftest's
`trained_run` (97% on MNIST), so they do not depend on the shipped weights.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from digitlab.cli import main
from digitlab.data import load_dataset
from digitlab.predict import DEFAULT_WEIGHTS, Predictor
from digitlab.preprocess import to_mnist
from helpers import import_renderer, run_cli

N_DIGITS = 1000  # MNIST test digits rendered per kind
MIN_AGREEMENT = 0.97  # fraction of renderings that must get the original digit's label


render = import_renderer()


def uneven_light(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """make_realworld_digits.gradient at half its size (112 px page, 60 px digit): same ramp, vignette, noise."""
    alpha = render.random_place(render.ink_alpha(digit, 60), 112, 112, rng)
    img = render.compose(alpha, (240, 232, 215), (35, 35, 45)) * render.lighting(112, 112, rng, 0.5)
    return render.to_image(render.noisy(img, rng, 8))


# kind -> (renderer, the benchmark variant whose file format it is saved in)
KINDS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], Image.Image], str]] = {
    "inverted": (render.inverted, "inverted"),  # dark on white, 28x28, PNG
    "offcentre": (render.offcentre, "offcentre"),  # 56 px digit in the corner of a 160x120 canvas, PNG
    "tiny": (render.tiny, "tiny"),  # a 12 px tall digit somewhere on a 300x300 white page, PNG
    "transparent_background": (render.transparent_garbage, "transparent_garbage"),  # RGBA PNG, colours under a=0
    "jpeg_quality_30": (render.jpeg30, "jpeg30"),  # dark on light grey, 112 px, JPEG q30
    "uneven_light": (uneven_light, "gradient"),  # PNG
}


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The first N_DIGITS MNIST test digits (uint8, bright on black) and labels; missing data fails."""
    ds = load_dataset("mnist", progress=False)
    return ds.test_images[:N_DIGITS].numpy(), ds.test_labels[:N_DIGITS].numpy()


def untouched_labels(predictor: Predictor, digits: np.ndarray) -> np.ndarray:
    """What a model answers for MNIST digits as they are (no preprocessing at all)."""
    return np.array([p.label for p in predictor.predict(list(torch.from_numpy(digits)), preprocess=False)])


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    """The model shipped in the package; missing weights fail loudly."""
    assert DEFAULT_WEIGHTS.is_file(), f"the shipped model {DEFAULT_WEIGHTS} is missing"
    return Predictor.from_run()


@pytest.fixture(scope="module")
def shipped_labels(shipped: Predictor, mnist_test) -> np.ndarray:
    digits, labels = mnist_test
    predicted = untouched_labels(shipped, digits)
    assert (predicted == labels).mean() > 0.98  # the shipped model really reads MNIST
    return predicted


@pytest.fixture(scope="module")
def original_labels(predictor: Predictor, mnist_test) -> np.ndarray:
    digits, labels = mnist_test
    predicted = untouched_labels(predictor, digits)
    assert (predicted == labels).mean() > 0.95  # the fixture model really reads digits
    return predicted


def rendered_files(kind: str, digits: np.ndarray, seed: int = 0) -> list[bytes]:
    """Each digit rendered as `kind` and encoded to the bytes of a real file."""
    renderer, file_format = KINDS.get(kind, (None, kind))
    rng = np.random.default_rng(seed)
    images = [renderer(d, rng) if renderer else render.render_variants(d, rng, [kind])[kind] for d in digits]
    return [render.encode(file_format, image, rng) for image in images]


def agreement(predictor: Predictor, files: list, original: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Fraction of files predicted as their original digit, and a summary for failure messages."""
    predicted = np.array([p.label for p in predictor.predict(files)])  # one batched call
    agree = float((predicted == original).mean())
    return agree, (f"agreement {agree:.1%}, accuracy {(predicted == labels).mean():.1%} "
                   f"(untouched digits {(original == labels).mean():.1%})")


#### Preprocessing keeps predictions


@pytest.mark.parametrize("kind", list(KINDS))
def test_rendering_keeps_the_prediction(kind: str, shipped: Predictor, mnist_test, shipped_labels):
    digits, labels = mnist_test
    files = rendered_files(kind, digits)
    assert len(files) == N_DIGITS and all(isinstance(f, bytes) for f in files)
    agree, summary = agreement(shipped, files, shipped_labels, labels)
    assert agree >= MIN_AGREEMENT, f"{kind}: {summary}"


#### Every input type


def input_variants(digit: np.ndarray, folder: Path) -> dict[str, object]:
    """One MNIST digit (bright on black) as every kind of input Predictor accepts."""
    dark = 255 - digit  # dark ink on white paper
    path = folder / "digit.png"
    Image.fromarray(dark).save(path)
    rgb = np.stack([dark] * 3, axis=-1)
    drawing = np.dstack([np.zeros((28, 28, 3), np.uint8), digit])  # black strokes, transparent background
    return {
        "str path": str(path), "Path": path, "PNG bytes": path.read_bytes(),
        "PIL grey": Image.fromarray(dark), "PIL RGB": Image.fromarray(rgb), "PIL RGBA": Image.fromarray(drawing),
        "numpy grey uint8": digit, "numpy grey float": digit / 255.0, "numpy RGB": rgb,
        "numpy RGBA transparent": drawing, "numpy RGBA opaque": np.dstack([rgb, np.full_like(digit, 255)]),
        "tensor (28, 28) uint8": torch.from_numpy(digit),
        "tensor (1, 1, 28, 28) float": torch.from_numpy(digit)[None, None].float() / 255,
        "tensor (3, 28, 28) RGB": torch.from_numpy(rgb).permute(2, 0, 1),
    }


def test_every_input_type_gives_the_same_answer(predictor: Predictor, mnist_test, original_labels, tmp_path):
    digits, _ = mnist_test
    n = 10
    sources = {}
    for i in range(n):
        folder = tmp_path / str(i)
        folder.mkdir()
        for name, source in input_variants(digits[i], folder).items():
            sources.setdefault(name, []).append(source)
    reference = predictor.predict(sources["str path"])
    for name, images in sources.items():
        predictions = predictor.predict(images)
        assert [p.label for p in predictions] == original_labels[:n].tolist(), name
        diff = max(abs(a - b) for p, q in zip(predictions, reference) for a, b in zip(p.probabilities,
                                                                                       q.probabilities))
        assert diff < 0.02, f"{name}: probabilities differ from the PNG file's by {diff:.3f}"
    single = predictor.predict(sources["PNG bytes"][0])  # one image, not in a list
    assert len(single) == 1 and single[0].label == original_labels[0]


#### The command line


def write_folder(folder: Path, digits: np.ndarray, labels: np.ndarray, kinds: list[str]) -> dict[str, int]:
    """Rendered digits as files named like the benchmark's (<i>_label<y>_<kind>.<ext>); name -> label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = {}
    for i, (digit, label) in enumerate(zip(digits, labels)):
        kind = kinds[i % len(kinds)]
        image = render.render_variants(digit, rng, [kind])[kind]
        path = folder / f"{i:04d}_label{label}_{kind}.{render.VARIANTS[kind].ext}"
        path.write_bytes(render.encode(kind, image, rng))
        names[path.name] = int(label)
    return names


@pytest.fixture(scope="module")
def digit_folder(mnist_test, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """12 rendered test digits (photos, scans, drawings, odd formats) plus one corrupt PNG."""
    digits, labels = mnist_test
    folder = tmp_path_factory.mktemp("predict") / "digits"
    names = write_folder(folder, digits[:12], labels[:12],
                         ["photo", "drawing_app", "jpeg30", "blue_pen_lined", "png16", "gif"])
    good = io.BytesIO()
    Image.fromarray(255 - digits[12]).save(good, "PNG")
    (folder / "corrupt.png").write_bytes(good.getvalue()[:60])  # a PNG cut off in its first chunk
    return folder, names


def test_cli_folder_with_a_corrupt_file(trained_run, digit_folder):
    folder, names = digit_folder
    proc = run_cli("predict", str(trained_run), str(folder), "--json", timeout=120)
    assert proc.returncode == 1, proc.stderr  # one file failed
    assert "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(Path(line["file"]).name for line in lines) == sorted([*names, "corrupt.png"])  # one line each
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0]["file"] == str(folder / "corrupt.png") and "label" not in errors[0]
    assert "corrupt.png" in errors[0]["error"] and "readable image" in errors[0]["error"]
    predicted = {Path(line["file"]).name: line["label"] for line in lines if "error" not in line}
    assert sum(predicted[name] == label for name, label in names.items()) >= 11, predicted
    expected = Predictor.from_run(trained_run).predict([str(folder / name) for name in sorted(names)])
    assert [predicted[name] for name in sorted(names)] == [p.label for p in expected]  # same as the library


def test_cli_top_k(trained_run, digit_folder, capsys):
    folder, names = digit_folder
    files = [str(folder / name) for name in sorted(names)[:3]]
    assert main(["predict", str(trained_run), *files, "--top-k", "3", "--json"]) == 0
    for line in capsys.readouterr().out.splitlines():
        out = json.loads(line)
        top = out["top_k"]
        assert len(top) == 3 and top[0][0] == out["label"] and top[0][1] == out["probability"]
        assert top[0][1] >= top[1][1] >= top[2][1] and len({i for i, _ in top}) == 3
        assert all(abs(out["probabilities"][i] - p) < 1e-5 for i, p in top)
        assert abs(sum(out["probabilities"]) - 1) < 1e-4
    assert main(["predict", str(trained_run), *files, "--top-k", "3"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 3
    for line in text:
        assert re.fullmatch(r"\S+: \d \(\d+\.\d%\)  top 3: \d: \d+\.\d%, \d: \d+\.\d%, \d: \d+\.\d%", line), line


def test_cli_save_preprocessed(trained_run, digit_folder, tmp_path, capsys):
    folder, names = digit_folder
    out = tmp_path / "seen" / "by" / "model"  # created with its parents
    assert main(["predict", str(trained_run), str(folder), "--json", "--save-preprocessed", str(out)]) == 1
    lines = {Path(line["file"]).name: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + ".png" for n in names)  # not corrupt's
    predictor = Predictor.from_run(trained_run)
    for name in names:
        saved = out / (Path(name).stem + ".png")
        assert lines[name]["preprocessed"] == str(saved)
        image = Image.open(saved)
        assert image.size == (28, 28) and image.mode == "L"
        pixels = np.array(image)  # a writable copy, as a user's array would be
        assert np.array_equal(pixels, to_mnist(folder / name))  # exactly what the model saw...
        assert predictor.predict(pixels, preprocess=False)[0].label == lines[name]["label"]  # ...and read


def test_cli_save_preprocessed_keeps_inputs_and_names_apart(trained_run, mnist_test, tmp_path, capsys):
    digits, _ = mnist_test
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(255 - digits[0]).save(folder / "a.png")
    Image.fromarray(255 - digits[1]).convert("RGB").save(folder / "a.jpg", quality=95)  # same stem
    before = (folder / "a.png").read_bytes()
    assert main(["predict", str(trained_run), str(folder), "--save-preprocessed", str(folder)]) == 1
    assert "holds input images" in capsys.readouterr().err and (folder / "a.png").read_bytes() == before
    assert main(["predict", str(trained_run), str(folder), "--save-preprocessed", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-2.png", "a.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), to_mnist(folder / "a.jpg"))  # sorted
    assert "saved " in capsys.readouterr().out
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["predict", str(trained_run), str(folder), "--save-preprocessed", str(blocked / "x")]) == 1
    assert "cannot create the folder" in capsys.readouterr().err
    assert main(["predict", str(trained_run), "--test-index", "0", "--save-preprocessed", str(tmp_path)]) == 1
    assert "use --save" in capsys.readouterr().err


def test_cli_without_run_uses_the_shipped_model(digit_folder):
    assert DEFAULT_WEIGHTS.is_file(), (f"the shipped model {DEFAULT_WEIGHTS} is missing: `digitlab predict FILE` "
                                       "without a run has nothing to load")
    folder, names = digit_folder
    files = [str(folder / name) for name in sorted(names)]
    proc = run_cli("predict", *files, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert sum(line["label"] == names[Path(line["file"]).name] for line in lines) >= 11
    shipped = Predictor.from_run().predict(files)  # the answers are the shipped model's, number for number
    for line, p in zip(lines, shipped):
        assert np.allclose(line["probabilities"], p.probabilities, atol=1e-5)
