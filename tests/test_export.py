"""ONNX and TorchScript export: parity with PyTorch for every model, the .onnx file alone predicting,
the `digitlab export` and `digitlab predict --onnx` commands end to end, and their errors; the exported file in
`digitlab eval` and `digitlab serve`."""
from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from digitlab.checkpoint import save_weights
from digitlab.cli import main
from digitlab.data import get_spec, load_dataset
from digitlab.errors import ConfigError, RunError
from digitlab.export import (TOLERANCE, ExportError, check_parity, export_run, onnx_model_bytes,
                             torchscript_model_bytes)
from digitlab.models import create_model, list_models
from digitlab.backends import OnnxBackend
from digitlab.predict import Predictor
from digitlab.runs import load_run
from helpers import run_cli

PARITY_IMAGES = {"alexnet": 4}  # 57M parameters: a few images are enough to compare, 1000 would take a minute


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset("mnist", progress=False)
    assert ds.test_images.shape == (10_000, 28, 28), "MNIST test set missing or wrong: see data/mnist/"
    return ds


def random_weights_file(name: str, folder: Path, normalization: str = "standard") -> Path:
    """A checkpoint of model `name` with seeded random weights, BatchNorm statistics included."""
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):  # not the identity a fresh BN would be
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = folder / f"{name}.safetensors"
    save_weights(path, model, {"model": name, "model_args": {}, "normalization": normalization, "dataset": "mnist",
                               "classes": list(get_spec("mnist").classes), "step": 0, "metrics": None})
    return path


@pytest.mark.parametrize("name", list_models())
def test_onnx_parity_every_model_random_weights(name, tmp_path, mnist):
    checkpoint = random_weights_file(name, tmp_path, normalization="symmetric")
    out = tmp_path / f"{name}.onnx"
    n = PARITY_IMAGES.get(name, 32)
    result = export_run(checkpoint, "onnx", out, check_images=n)
    assert result.parity.images == n and result.parity.same_argmax == n
    assert result.parity.max_abs_diff < TOLERANCE
    assert out.is_file() and not out.with_name(out.name + ".tmp").exists()

    predictor = Predictor.from_onnx(out)  # the file alone: normalisation and names come from its metadata
    assert predictor.describe()["name"] == name and predictor.normalization == "symmetric"
    images = mnist.test_images[:n]
    batch = predictor.logits(images.numpy())
    single = predictor.logits(images[:1].numpy())  # the batch axis is dynamic: 1 works as well as n
    assert batch.shape == (n, 10) and single.shape == (1, 10)
    np.testing.assert_allclose(single[0], batch[0], atol=TOLERANCE)


def test_dynamo_exporter_matches_pytorch(tmp_path, mnist):
    loaded = load_run(random_weights_file("mlp", tmp_path))  # the quickest to export this way (about 1 s)
    parity = check_parity(loaded, OnnxBackend(onnx_model_bytes(loaded, dynamo=True)), mnist.test_images[:64])
    assert parity.ok and parity.max_abs_diff < TOLERANCE and parity.same_argmax == 64


def test_trained_model_onnx_and_torchscript_parity(trained_run, tmp_path, mnist):
    onnx_result = export_run(trained_run, "onnx", tmp_path / "m.onnx", check_images=1000)
    ts_result = export_run(trained_run, "torchscript", tmp_path / "m.pt", check_images=1000)
    for result in (onnx_result, ts_result):
        assert result.parity.images == 1000 and result.parity.same_argmax == 1000
        assert result.parity.max_abs_diff < TOLERANCE

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["format"] == "digitlab-onnx-1" and meta["model"] == '"cnn"' and meta["normalization"] == '"standard"'
    assert meta["classes"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'

    images, labels = mnist.test_images[:1000], mnist.test_labels[:1000]
    onnx_probs = Predictor.from_onnx(tmp_path / "m.onnx").probabilities(images.numpy())
    torch_probs = Predictor.from_run(trained_run).probabilities(images)
    assert (onnx_probs.argmax(1) == torch_probs.argmax(1)).all()
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
    assert (onnx_probs.argmax(1) == labels.numpy()).mean() > 0.93  # the fixture model reads digits


def test_torchscript_file_carries_metadata(trained_run):
    extra = {"digitlab.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load points users to torch.export
        torch.jit.load(io.BytesIO(torchscript_model_bytes(load_run(trained_run))), _extra_files=extra)
    meta = json.loads(extra["digitlab.json"])
    assert meta["model"] == "cnn" and meta["normalization"] == "standard" and len(meta["classes"]) == 10


def test_from_run_serves_like_predictor(trained_run, mnist):
    onnx_predictor = Predictor.from_run(trained_run, runtime="onnx", threads=1)
    torch_predictor = Predictor.from_run(trained_run)
    described = onnx_predictor.describe()
    assert {k: v for k, v in described.items() if k not in ("runtime", "source")} == \
        {k: v for k, v in torch_predictor.describe().items() if k not in ("runtime", "source")}
    for i in range(5):  # the calls the web app makes
        image = mnist.test_images[i].numpy()
        ours = onnx_predictor.prediction_from_probs(onnx_predictor.probabilities(torch.from_numpy(image)[None])[0])
        theirs = torch_predictor.prediction_from_probs(torch_predictor.probabilities(torch.from_numpy(image)[None])[0])
        assert ours.label == theirs.label == int(mnist.test_labels[i])
        np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)


def test_failed_parity_is_an_error_and_keeps_the_old_file(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.onnx"
    out.write_text("the previous export")
    honest = OnnxBackend.logits
    monkeypatch.setattr(OnnxBackend, "logits", lambda self, x: honest(self, x) + 1e-3)
    assert main(["export", str(trained_run), "-o", str(out), "--check-images", "50"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disagrees with PyTorch" in err and "1.00e-03" in err
    assert out.read_text() == "the previous export" and not out.with_name("model.onnx.tmp").exists()
    with pytest.raises(ExportError):
        export_run(trained_run, "onnx", tmp_path / "new.onnx", check_images=50)
    assert not (tmp_path / "new.onnx").exists()


def test_export_and_predict_onnx_cli(trained_run, tmp_path, mnist):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the shared fixture run stays as it was
    done = run_cli("export", str(run))  # default output: RUN/model.onnx, checked on 1,000 test images
    assert done.returncode == 0, done.stderr
    assert (run / "model.onnx").is_file()
    diff = float(re.search(r"max \|logit difference\| (\S+)", done.stdout).group(1))
    assert diff < TOLERANCE and "same prediction for 1,000/1,000 images" in done.stdout

    files, labels = [], []
    for i in range(10):
        path = tmp_path / f"test{i}.png"
        Image.fromarray(mnist.test_images[i].numpy()).save(path)
        files.append(str(path))
        labels.append(int(mnist.test_labels[i]))
    done = run_cli("predict", "--onnx", str(run / "model.onnx"), *files)
    assert done.returncode == 0, done.stderr
    predicted = [int(m) for m in re.findall(r"^\S+\.png: (\d) \(", done.stdout, re.M)]
    assert predicted == [p.label for p in Predictor.from_run(run).predict(files)]  # same answers as PyTorch
    assert sum(p == t for p, t in zip(predicted, labels)) >= 9


@pytest.mark.quick
def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), "--format", "tflite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'tflite'" in err

    assert main(["export", str(tmp_path), "--format", "torchscript", "--dynamo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dynamo exporter writes ONNX only" in err

    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    assert main(["predict", "--onnx", str(not_onnx), str(not_onnx)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a readable ONNX model" in err


def test_onnx_file_without_digitlab_metadata_is_refused(tmp_path):
    plain = tmp_path / "plain.onnx"
    proto = onnx.load_from_string(onnx_model_bytes(load_run(random_weights_file("mlp", tmp_path))))
    del proto.metadata_props[:]
    plain.write_bytes(proto.SerializeToString())
    with pytest.raises(RunError, match="not exported by digitlab"):
        Predictor.from_onnx(plain)



#### The exported .onnx file in `eval` and `serve`


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """The fixture run exported as `digitlab export` writes it, to a file outside any run folder."""
    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    export_run(trained_run, "onnx", out, check_images=50)
    return out


def eval_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_takes_an_exported_onnx_file(trained_run, exported, tmp_path, capsys):
    """Before: "not a readable safetensors checkpoint (header too large)". The file alone names its dataset and
    classes; its figures are the run's figures, to the image."""
    ours = eval_json(capsys, str(exported), "--figures", str(tmp_path / "onnx"))
    theirs = eval_json(capsys, str(trained_run), "--figures", str(tmp_path / "run"), "--no-tta")
    assert ours["run"] == str(exported) and ours["checkpoint"] == "model" and ours["model"] == "cnn"
    assert ours["dataset"] == theirs["dataset"] == "mnist" and ours["count"] == 10_000
    assert abs(ours["accuracy"] - theirs["accuracy"]) <= 1e-4, (ours["accuracy"], theirs["accuracy"])
    assert ours["calibration"]["temperature"] == theirs["calibration"]["temperature"]
    assert all(Path(f).is_file() and Path(f).parent == tmp_path / "onnx" for f in ours["figures"].values())
    shifted = eval_json(capsys, str(exported), "--figures", str(tmp_path / "onnx"), "--tta")
    assert shifted["tta"] and not shifted["tta_mirror"] and shifted["accuracy"] > 0.9


def test_eval_of_an_onnx_file_without_a_dataset_needs_the_flag(exported, tmp_path, capsys):
    proto = onnx.load(str(exported))
    kept = [p for p in proto.metadata_props if p.key != "dataset"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(proto.SerializeToString())
    assert main(["eval", str(bare), "--figures", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no dataset in its metadata: give --dataset" in err, err
    assert eval_json(capsys, str(bare), "--figures", str(tmp_path), "--dataset", "mnist")["accuracy"] > 0.9


def test_eval_of_a_run_refuses_another_dataset(trained_run, capsys):
    assert main(["eval", str(trained_run), "--dataset", "fashion-mnist"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on mnist" in err, err


def test_serve_takes_an_exported_onnx_file(exported, mnist, tmp_path):
    """Before: the server exited with "not a readable safetensors checkpoint". Its workers run the file in ONNX
    Runtime and answer as the run would."""
    import urllib.request

    from conftest import start_server, stop_server

    server = start_server(exported, tmp_path / "serve.log")
    try:
        with urllib.request.urlopen(server.url + "/api/model", timeout=30) as r:
            model = json.loads(r.read())
        body = json.dumps({"pixels": mnist.test_images[0].tolist()}).encode()
        request = urllib.request.Request(server.url + "/api/predict", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
    finally:
        stop_server(server)
    assert model["runtime"].startswith("onnxruntime") and model["source"] == "model.onnx" and model["name"] == "cnn"
    assert answer["label"] == int(mnist.test_labels[0])


def test_serve_vets_an_onnx_file_once_and_refuses_torch_for_it(exported, monkeypatch):
    """The serving process vets the file in its probe process once; workers load the same bytes without one."""
    from digitlab import onnx_guard
    from digitlab.serve import ModelSpec, PoolSettings, ServeSettings, start_pool

    honest, probes = onnx_guard.probe_in_child, []
    monkeypatch.setattr(onnx_guard, "probe_in_child", lambda *args: probes.append(args) or honest(*args))
    pool = start_pool(ServeSettings(model=ModelSpec(str(exported)), pool=PoolSettings(workers=0)))
    assert pool.model_info["runtime"].startswith("onnxruntime") and len(probes) == 1
    with pytest.raises(ConfigError, match="runs in ONNX Runtime only"):
        start_pool(ServeSettings(model=ModelSpec(str(exported), runtime="torch"), pool=PoolSettings(workers=0)))


def test_commands_name_the_exported_files_they_do_not_take(trained_run, exported, tmp_path, capsys):
    """A TorchScript file is for the user's own deployment: digitlab never loads one (torch.jit.load runs the code
    it holds), and says so instead of "not a readable safetensors checkpoint"; an .onnx file given to a command
    that needs the PyTorch weights says which commands take it."""
    scripted = tmp_path / "model.pt"
    export_run(trained_run, "torchscript", scripted, check_images=20)
    for args in (["eval", str(scripted)], ["calibrate", str(scripted)], ["calibrate", str(exported)]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        if args[1] == str(scripted):
            assert "is a TorchScript file" in err and "never loads TorchScript" in err, err
        else:
            assert "goes to `predict --onnx`, `eval` or `serve`" in err, err
    with pytest.raises(RunError, match="never loads TorchScript"):
        Predictor.from_run(scripted)


def test_predict_takes_an_onnx_file_as_its_first_input(exported, mnist, tmp_path, capsys):
    """`predict model.onnx FILE` is `predict --onnx model.onnx FILE`, as `eval` and `serve` take the file (with
    --onnx, every input is an image, as before: test_bad_inputs_are_one_line_errors)."""
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(image)
    assert main(["predict", str(exported), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == int(mnist.test_labels[0])
