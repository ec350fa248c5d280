"""digitlab explain: attributions that pass the literature's sanity checks on a trained CNN, for every registered
model, through the CLI (PNG layout, strict JSON, one-line errors) for three model families, the Python API and
POST /api/explain (with a schemathesis pass of its own).

The trained CNN is conftest's `trained_run` (300 steps, ~97%); the MLP and GRU runs are trained here for a few
dozen steps on one thread: the CLI tests need their shapes and families, not their accuracy.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from digitlab.cli import main
from digitlab.attribution import Explainer, explain
from digitlab.attribution.attributions import METHODS, attribute
from digitlab.attribution.figures import attribution_figure_size
from digitlab.attribution.sanity import deletion, ink_check, maps_for, randomisation, randomised
from digitlab.models import create_model, list_models
from helpers import REPO, png_bytes

SANITY_IMAGES = 40


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which Python's json would otherwise accept."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def cnn_explainer(trained_run) -> Explainer:
    return Explainer.from_run(trained_run)


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist.test_images[:SANITY_IMAGES].numpy()


def tiny_run(tmp_path_factory, model: str, args: dict):
    from digitlab import make_config, train

    out = tmp_path_factory.mktemp("explain-runs") / model
    cfg = make_config({"model": model, "model_args": args, "epochs": 1, "max_steps": 40, "batch_size": 64,
                       "optimizer": "adam", "device": "cpu", "threads": 1, "out": str(out)})
    train(cfg, progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> dict:
    """Three model families: a CNN, an MLP and a GRU."""
    return {"cnn": trained_run, "mlp": tiny_run(tmp_path_factory, "mlp", {"hidden": [32]}),
            "gru": tiny_run(tmp_path_factory, "gru", {"hidden_size": 16})}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`digitlab ARGS` in process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err: str, fragment: str, status: int = 1) -> None:
    assert code == status, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert fragment in lines[0], (fragment, lines[0])


#### the sanity checks, on the trained CNN


@pytest.mark.parametrize("method", ["ig", "saliency"])
def test_maps_change_when_the_weights_are_randomised(cnn_explainer, digits, method):
    """Adebayo et al.'s model-randomisation test: the trained model's maps must not rank pixels as the same
    model with re-initialised weights does (the signed maps, and for saliency its absolute maps too)."""
    targets = cnn_explainer.probabilities(digits).argmax(1)
    result = randomisation(cnn_explainer, digits, targets, method)
    assert result["spearman_signed"] < 0.4, result
    assert result["spearman_abs_ink"] < 0.6, result
    if method == "saliency":
        assert result["spearman_abs"] < 0.5, result
    else:  # the paper's finding, which shows the measure can say "the same": |IG| over all pixels is 0 on the
        assert result["spearman_abs"] > 0.8, result  # background for any weights, so it follows the ink


def test_randomised_copy_has_new_weights_and_leaves_the_model_alone(cnn_explainer):
    before = {k: v.clone() for k, v in cnn_explainer.model.state_dict().items()}
    copy = randomised(cnn_explainer.model)
    assert all(torch.equal(before[k], v) for k, v in cnn_explainer.model.state_dict().items())
    conv = "features.0.weight"
    assert not torch.equal(copy.state_dict()[conv], before[conv])
    top = randomised(cnn_explainer.model, top=1)  # cascading: only the last layer
    assert torch.equal(top.state_dict()[conv], before[conv])
    assert not torch.equal(top.state_dict()["classifier.7.weight"], before["classifier.7.weight"])


@pytest.mark.parametrize("method", ["ig", "saliency"])
def test_removing_the_most_attributed_pixels_hurts_more_than_random(cnn_explainer, digits, method):
    """The deletion test: with the map's top pixels set to background the predicted class's probability falls
    faster than with random pixels, by a clear margin in the area under the curve."""
    targets = cnn_explainer.probabilities(digits).argmax(1)
    maps = maps_for(cnn_explainer, cnn_explainer.model, digits, targets, method)
    d = deletion(cnn_explainer, digits, targets, maps)
    assert d.attributed[0] == pytest.approx(d.random[0])  # nothing removed: the same images
    assert d.auc(d.attributed) < d.auc(d.random) - 0.1, (d.auc(d.attributed), d.auc(d.random))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_points_nearer_the_ink_than_chance(cnn_explainer, digits, method):
    """The ink share on a second family (the trained CNN; the shipped DigitNet is in test_explain_gradcam.py):
    each method puts more of its positive mass within 2 pixels of the strokes than an evenly spread map would,
    and its order deletes the predicted class faster than random pixels."""
    targets = cnn_explainer.probabilities(digits).argmax(1)
    maps = maps_for(cnn_explainer, cnn_explainer.model, digits, targets, method)
    check = ink_check(digits, maps)
    assert check["ink_share"] > check["ink_chance"] + 0.05, check
    d = deletion(cnn_explainer, digits, targets, maps)
    assert d.auc(d.attributed) < d.auc(d.random), (d.auc(d.attributed), d.auc(d.random))


#### every registered model, every method


@pytest.mark.parametrize("name", list_models())
def test_every_model_explains_with_every_method_it_can(name, digits):
    torch.manual_seed(0)
    model = create_model(name, **({"hidden_size": 16} if name in ("rnn", "lstm", "gru") else {}))
    ex = Explainer(model, name, "standard", tuple(map(str, range(10))), "mnist")
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    methods = ["saliency", "gradcam"] if name == "alexnet" else METHODS  # AlexNet: 57M parameters, keep it short
    for method in methods:
        if method == "gradcam" and not has_conv:
            with pytest.raises(Exception, match="gradcam needs a convolutional layer"):
                ex.explain(digits[:2], method)
            continue
        results = ex.explain(digits[:2], method)
        assert [r.maps.shape for r in results] == [(2, 28, 28)] * 2
        assert all(np.isfinite(r.maps).all() and np.abs(r.maps).max() > 0 for r in results), method
        assert all(r.targets == list(np.argsort(-r.probabilities, kind="stable")[:2]) for r in results)


def test_integrated_gradients_add_up_to_the_logit_difference(cnn_explainer, digits):
    """IG's completeness axiom: the map sums to f(x) - f(background) for the class (within the error of 32
    steps), which a wrong baseline or a wrong input normalisation would break."""
    x = cnn_explainer.to_input(digits[:4])
    targets = cnn_explainer.probabilities(digits[:4]).argmax(1).tolist()
    maps = attribute(cnn_explainer.model, x, targets, "ig", cnn_explainer.background)
    with torch.no_grad():
        logits = cnn_explainer.model(x)
        base = cnn_explainer.model(torch.full_like(x, cnn_explainer.background))
    expected = (logits - base)[range(4), targets].numpy()
    np.testing.assert_allclose(maps.reshape(4, -1).sum(1), expected, rtol=0.05, atol=0.05)


#### the CLI, for three model families


@pytest.mark.parametrize("family", ["cnn", "mlp", "gru"])
def test_cli_writes_the_png_with_its_layout(family, runs, tmp_path, capsys):
    out = tmp_path / "why.png"
    code, stdout, err = cli(capsys, "explain", str(runs[family]), "--test-index", "0", "1", "2", "-o", str(out))
    assert code == 0, err
    assert stdout.count("predicted") == 3 and f"wrote {out}" in stdout
    with Image.open(out) as im:
        # 3 rows of 4 panels (input, what it saw, 2 maps), each 2.0 x 2.3 inches at 100 dpi
        assert im.format == "PNG" and im.size == (800, 690) == attribution_figure_size(3, 2)


@pytest.mark.parametrize("family", ["cnn", "mlp", "gru"])
def test_cli_json_is_strict_and_28x28(family, runs, capsys, tmp_path):
    code, stdout, err = cli(capsys, "explain", str(runs[family]), "--test-index", "3", "4", "--json",
                            "--method", "saliency")
    assert code == 0, err
    doc = strict_json(stdout)
    assert not list(tmp_path.iterdir())  # --json without -o writes no PNG
    assert doc["method"] == "saliency" and len(doc["explanations"]) == 2
    for item in doc["explanations"]:
        probs = np.array(item["probabilities"])
        assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-4 and item["label"] == int(probs.argmax())
        assert [m["class"] for m in item["maps"]] == list(np.argsort(-probs, kind="stable")[:2])
        for m in item["maps"]:
            a = np.array(m["attribution"], dtype=float)
            assert a.shape == (28, 28) and np.isfinite(a).all() and (a >= 0).all() and a.max() > 0


def test_cli_target_explains_that_class(runs, capsys):
    code, stdout, err = cli(capsys, "explain", str(runs["cnn"]), "--test-index", "0", "--json", "--target", "3")
    assert code == 0, err
    maps = strict_json(stdout)["explanations"][0]["maps"]
    assert [m["class"] for m in maps] == [3]


def test_cli_explains_an_image_file_as_predict_sees_it(runs, mnist, tmp_path, capsys):
    """A photo-like file (dark ink on a light, larger canvas) goes through digitlab.preprocess as in predict."""
    digit = 255 - np.kron(mnist.test_images[0].numpy(), np.ones((3, 3), np.uint8))
    path = tmp_path / "seven.png"
    Image.fromarray(digit).save(path)
    code, stdout, err = cli(capsys, "explain", str(runs["cnn"]), str(path), "--json")
    assert code == 0, err
    from digitlab.predict import Predictor

    p = Predictor.from_run(runs["cnn"])
    item = strict_json(stdout)["explanations"][0]
    assert item["input"] == str(path) and item["label"] == p.predict(str(path))[0].label
    api = explain(str(path), run=runs["cnn"])[0]  # the Python API: the same image, numpy arrays
    assert isinstance(api.maps, np.ndarray) and api.maps.shape == (2, 28, 28)
    np.testing.assert_array_equal(api.image, Predictor.to_input(str(path)))
    np.testing.assert_allclose(api.maps[0], np.array(item["maps"][0]["attribution"]), atol=2e-6)


@pytest.mark.parametrize("args, fragment, status", [
    (["--test-index", "0", "--method", "nope"], "invalid choice: 'nope'", 2),
    (["--test-index", "0", "--target", "10"], "target must be a class in 0..9, got 10", 1),
    (["--test-index", "0", "--target", "-1"], "target must be a class in 0..9, got -1", 1),
    (["--test-index", "10000"], "--test-index must be in 0..9999, got 10000", 1),
    ([], "give image files or folders to explain, or --test-index", 1),
    (["--test-index", "0", "1", "--layers"], "--layers shows one input", 1),
    (["--embedding", "--test-index", "0"], "--embedding maps the run's test set", 1),
    (["--embedding", "--limit", "2"], "--limit must be a whole number of at least 5", 1),
    (["missing.png"], "missing.png does not exist", 1),
])
def test_cli_one_line_errors(runs, capsys, args, fragment, status):
    code, _, err = cli(capsys, "explain", str(runs["cnn"]), *args)
    assert_one_line_error(code, err, fragment, status)


@pytest.mark.parametrize("family", ["mlp", "gru"])
def test_gradcam_on_a_model_without_convolutions_is_one_line(family, runs, capsys):
    code, _, err = cli(capsys, "explain", str(runs[family]), "--test-index", "0", "--method", "gradcam")
    assert_one_line_error(code, err, f"gradcam needs a convolutional layer and model '{family}' has none")


def test_explain_without_a_run_uses_the_shipped_model(capsys):
    code, stdout, err = cli(capsys, "explain", "--test-index", "0", "--json", "--method", "gradcam")
    assert code == 0, err
    doc = strict_json(stdout)
    assert doc["model"] == "digitnet" and doc["explanations"][0]["label"] == 7


#### --layers and --embedding


def test_layers_of_a_gru_show_the_hidden_state_per_row(runs, capsys, tmp_path):
    out = tmp_path / "layers.png"
    code, stdout, err = cli(capsys, "explain", str(runs["gru"]), "--test-index", "0", "--layers", "--json",
                            "-o", str(out))
    assert code == 0, err
    layers = strict_json(stdout)["layers"]
    assert [(x["name"], x["kind"], x["shape"]) for x in layers] == [("rnn", "recurrent", [28, 16]),
                                                                  ("fc", "linear", [10])]
    assert np.array(layers[0]["values"]).shape == (28, 16)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > im.size[0]  # a column of panels


def test_layers_of_a_cnn_follow_the_forward_pass(runs, capsys, tmp_path):
    code, stdout, err = cli(capsys, "explain", str(runs["cnn"]), "--test-index", "0", "--layers",
                            "-o", str(tmp_path / "l.png"))
    assert code == 0, err
    kinds = [line.split()[1] for line in stdout.splitlines() if line.startswith(("features", "classifier"))]
    assert kinds[:6] == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"]


def test_embedding_json_and_map(runs, capsys, tmp_path):
    out = tmp_path / "map.png"
    code, stdout, err = cli(capsys, "explain", str(runs["mlp"]), "--embedding", "--limit", "60", "--json",
                            "-o", str(out))
    assert code == 0, err
    doc = strict_json(stdout)
    points, labels, preds = np.array(doc["points"]), np.array(doc["labels"]), np.array(doc["predictions"])
    assert points.shape == (60, 2) and np.isfinite(points).all() and points.std(0).min() > 0
    assert labels.shape == preds.shape == (60,) and doc["misclassified"] == int((labels != preds).sum())
    with Image.open(out) as im:
        assert im.format == "PNG"


#### the Python API


def test_import_digitlab_does_not_import_explain():
    code = ("import sys, digitlab; assert 'captum' not in sys.modules and 'sklearn' not in sys.modules; "
            "assert 'digitlab.attribution' not in sys.modules; "
            "f = digitlab.explain; import digitlab.attribution.sanity; assert digitlab.explain is f and callable(f); "
            "assert f is digitlab.attribution.explain")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_python_api_refuses_bad_requests(runs):
    import digitlab

    with pytest.raises(digitlab.DigitlabError, match="unknown method 'x'"):
        digitlab.explain(np.zeros((28, 28), np.uint8), run=runs["cnn"], method="x", preprocess=False)
    with pytest.raises(digitlab.DigitlabError, match="no images"):
        digitlab.explain([], run=runs["cnn"])


#### POST /api/explain


@pytest.fixture(scope="module")
def client(predictor):
    from fastapi.testclient import TestClient

    from digitlab.serve import create_app

    with TestClient(create_app(predictor)) as c:
        yield c


@pytest.mark.parametrize("method", METHODS)
def test_api_explain_json_pixels(client, mnist, method):
    pixels = mnist.test_images[0].numpy().astype(float).tolist()
    r = client.post(f"/api/explain?method={method}", json={"pixels": pixels})
    assert r.status_code == 200, r.text
    body = strict_json(r.text)
    assert body["method"] == method and body["label"] == 7 and "layers" not in body
    assert [m["class"] for m in body["maps"]][0] == 7 and len(body["maps"]) == 2
    assert all(np.array(m["attribution"]).shape == (28, 28) for m in body["maps"])
    assert np.array(body["preprocessed"]).shape == (28, 28)


def test_api_explain_upload_target_and_layers(client, mnist):
    data = png_bytes(Image.fromarray(mnist.test_images[1].numpy()))
    r = client.post("/api/explain?target=5&layers=true", files={"file": ("two.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = strict_json(r.text)
    assert body["label"] == 2 and [m["class"] for m in body["maps"]] == [5]
    layers = body["layers"]
    assert layers[0]["kind"] == "conv" and layers[0]["shape"] == [10, 26, 26]
    maps = np.array(layers[0]["maps"])
    assert maps.shape == (8, 14, 14) and maps.min() >= 0 and maps.max() == 255  # 8 channels, 14x14, 0..255


@pytest.mark.parametrize("query, fragment", [("method=nope", "query.method"), ("target=10", "target must be"),
                                             ("target=-1", "query.target")])
def test_api_explain_refuses_bad_queries(client, mnist, query, fragment):
    pixels = mnist.test_images[0].numpy().astype(float).tolist()
    r = client.post(f"/api/explain?{query}", json={"pixels": pixels})
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text


def test_api_explain_gradcam_on_an_mlp_is_422(runs, mnist):
    from fastapi.testclient import TestClient

    from digitlab.predict import Predictor
    from digitlab.serve import create_app

    with TestClient(create_app(Predictor.from_run(runs["mlp"]))) as c:
        r = c.post("/api/explain?method=gradcam", json={"pixels": mnist.test_images[0].numpy().tolist()})
    assert r.status_code == 422 and "gradcam needs a convolutional layer" in r.json()["detail"], r.text


def test_api_explain_behind_onnx_runtime_explains_the_same_weights(trained_run, mnist, client):
    """`digitlab serve` predicts through ONNX Runtime: the explanation comes from the same weights in PyTorch."""
    from fastapi.testclient import TestClient

    from digitlab.predict import Predictor
    from digitlab.serve import create_app

    pixels = mnist.test_images[2].numpy().tolist()
    with TestClient(create_app(Predictor.from_run(trained_run, runtime="onnx"))) as c:
        onnx = c.post("/api/explain?method=saliency", json={"pixels": pixels}).json()
    torch_side = client.post("/api/explain?method=saliency", json={"pixels": pixels}).json()
    assert onnx["label"] == torch_side["label"]
    np.testing.assert_allclose(np.array(onnx["maps"][0]["attribution"]),
                               np.array(torch_side["maps"][0]["attribution"]), atol=1e-3)


@pytest.fixture(scope="module")
def explain_schema(predictor):
    """The app's own /openapi.json, /api/explain only: its query (method, target, layers) and both body types."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    from digitlab.serve import create_app

    app = create_app(predictor)
    spec = json.loads(json.dumps(app.openapi()))  # as test_fuzz_api.py's upload_schema: a copy, filtered
    schema = schemathesis.openapi.from_dict(spec, config=SchemathesisConfig.from_dict({"seed": 20240607}))
    schema = schema.include(path="/api/explain", method="POST")
    schema.app = app
    return schema


FUZZED: Counter = Counter()  # status -> requests the fuzz test below sent


@pytest.fixture
def fuzz_count():
    """Checked after the fuzz test's last example (its body runs once per example): it sent its share."""
    FUZZED.clear()
    yield FUZZED
    print(f"\n/api/explain fuzzing: {sum(FUZZED.values())} requests, statuses {dict(sorted(FUZZED.items()))}")
    assert sum(FUZZED.values()) >= 100 and FUZZED[200] >= 1, dict(FUZZED)  # valid inputs reached the model


def _fuzz_case(case) -> None:
    from schemathesis.checks import positive_data_acceptance

    if case.path != "/api/explain":  # schemathesis' pytest plugin hands a fixture's filtered-out operations too
        return
    # as tests/test_fuzz_api.py: a blank canvas (422 "no digit") or random bytes (415) are refused by design
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    FUZZED[response.status_code] += 1
    assert response.status_code < 500, response.text[:300]
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("detail"), str) and body["detail"] and "Traceback" not in response.text
    else:
        assert all(np.array(m["attribution"]).shape == (28, 28) for m in body["maps"])


def _fuzz_settings():
    from hypothesis import HealthCheck, settings

    return settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def _explain_fuzz():
    import schemathesis

    return schemathesis.pytest.from_fixture("explain_schema")


@_explain_fuzz().parametrize()
@_fuzz_settings()
def test_api_explain_is_fuzzed_from_the_schema(case, fuzz_count):
    _fuzz_case(case)


@pytest.mark.quick
def test_json_keeps_the_shape_of_a_map_with_tiny_values():
    """Rounding is relative to the map's peak: a saliency map peaking at 3e-5 must not become all zeros."""
    from digitlab.attribution.explainer import rounded

    tiny = np.array([[3.2e-5, -1.1e-6, 0.0]], np.float32)
    assert np.count_nonzero(rounded(tiny, 4)) == 2
    np.testing.assert_allclose(rounded(tiny, 4), tiny, rtol=1e-3)
    assert rounded(np.array([[0.123456, 0.0]]), 4) == [[0.12346, 0.0]]  # 4 places below the first digit


@pytest.mark.quick
def test_layers_figure_names_each_class_of_the_class_bar():
    """The output layer's one-row tile (the class bar) is labelled with the class names and probabilities, and its
    axis says what brightness means; the other layers keep bare tiles."""
    from digitlab.attribution.activations import LayerActivation
    from digitlab.attribution.figures import layers_figure

    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
    logits = np.arange(10, dtype=np.float32)
    layers = [LayerActivation("features.0", "conv", "Conv2d", [4, 28, 28], np.random.rand(4, 28, 28), np.zeros(1)),
              LayerActivation("fc", "linear", "Linear", [10], logits.reshape(1, 1, 10), logits)]
    probs = np.exp(logits) / np.exp(logits).sum()
    fig = layers_figure(layers, np.zeros((28, 28), np.uint8), "a shoe", classes, probs)
    conv, bar = fig.axes[1], fig.axes[2]
    ticks = [t.get_text() for t in bar.get_xticklabels()]
    assert ticks[0] == "T-shirt/top\n0%" and ticks[9] == "Ankle boot\n63%" and len(ticks) == 10
    assert "class" in bar.get_xlabel() and "probability" in bar.get_xlabel()
    assert "class bar" in bar.get_title(loc="left")
    assert conv.get_xticklabels() == [] and conv.get_xlabel() == ""


def test_embedding_goes_in_the_run_folder_and_says_so(tmp_path_factory, tmp_path, monkeypatch, capsys):
    """The map of a run's test set is about the run, as eval's figures are: RUN/embedding.png, its path printed;
    heat maps of given images stay in the current folder."""
    run = tiny_run(tmp_path_factory, "mlp", {"hidden": [16]})
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(capsys, "explain", str(run), "--embedding", "--limit", "20")
    assert code == 0, err
    assert (run / "embedding.png").is_file() and not (tmp_path / "embedding.png").exists()
    assert f"wrote {run / 'embedding.png'}" in stdout
    code, stdout, err = cli(capsys, "explain", str(run), "--test-index", "0")
    assert code == 0, err
    assert (tmp_path / "explain.png").is_file() and "wrote explain.png" in stdout
