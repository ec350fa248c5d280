"""One Predictor, two backends: PyTorch and ONNX Runtime answer the same on real MNIST test images, the optional
runtimes are imported only when used, and a missing extra says how to install it for this kind of install."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import digitlab
from digitlab import Predictor as PackagePredictor
from digitlab.data import load_dataset
from digitlab.errors import DigitlabError
from digitlab.export import export_run
from digitlab.extras import install_hint, require, source_checkout
from digitlab.predict import Predictor
from helpers import run_cli

N_IMAGES = 1000


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset("mnist", progress=False)
    assert ds.test_images.shape == (10_000, 28, 28), "MNIST test set missing: see data/mnist/"
    return ds


@pytest.fixture(scope="module")
def both(trained_run) -> tuple[Predictor, Predictor]:
    return Predictor.from_run(trained_run), Predictor.from_run(trained_run, runtime="onnx", threads=1)


@pytest.mark.quick
def test_package_exports_predictor():
    assert PackagePredictor is Predictor


def test_both_backends_answer_the_same_on_mnist(both, mnist):
    torch_p, onnx_p = both
    images, labels = mnist.test_images[:N_IMAGES], mnist.test_labels[:N_IMAGES].numpy()
    torch_probs, onnx_probs = torch_p.probabilities(images), onnx_p.probabilities(images.numpy())
    assert torch_probs.shape == onnx_probs.shape == (N_IMAGES, 10)
    assert (torch_probs.argmax(1) == onnx_probs.argmax(1)).all()
    np.testing.assert_allclose(torch_probs, onnx_probs, atol=1e-5)
    np.testing.assert_allclose(torch_probs.sum(1), 1, atol=1e-5)
    assert (torch_probs.argmax(1) == labels).mean() > 0.95  # the fixture model really reads digits
    assert torch_p.describe()["runtime"].startswith("torch ")
    assert onnx_p.describe()["runtime"].startswith("onnxruntime ")
    same = ("name", "args", "normalization", "dataset", "classes", "test_accuracy")
    assert {k: torch_p.describe()[k] for k in same} == {k: onnx_p.describe()[k] for k in same}


def test_both_backends_predict_the_same_files(both, mnist, tmp_path):
    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(255 - mnist.test_images[i].numpy()).save(files[-1])  # dark ink on white paper
    torch_p, onnx_p = both
    ours, theirs = torch_p.predict(files, top_k=3), onnx_p.predict(files, top_k=3)
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert sum(p.label == int(y) for p, y in zip(ours, mnist.test_labels[:8])) >= 7
    for a, b in zip(ours, theirs):
        assert [i for i, _ in a.top_k] == [i for i, _ in b.top_k] and len(a.top_k) == 3
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_from_onnx_reads_the_exported_file_alone(trained_run, mnist, tmp_path):
    export_run(trained_run, "onnx", tmp_path / "m.onnx", check_images=50)
    from_file = Predictor.from_onnx(tmp_path / "m.onnx")
    assert from_file.normalization == "standard" and from_file.classes == tuple("0123456789")
    images = mnist.test_images[:200]
    np.testing.assert_allclose(from_file.logits(images), Predictor.from_run(trained_run).logits(images), atol=1e-4)


def test_unknown_runtime_is_an_error(trained_run):
    with pytest.raises(DigitlabError, match="runtime must be"):
        Predictor.from_run(trained_run, runtime="tensorflow")


#### Optional runtimes are imported only when used

BLOCKED = ("onnxruntime", "onnx", "onnxscript")


@pytest.fixture
def no_onnx(tmp_path) -> dict:
    """An environment in which `import onnxruntime` (and onnx, onnxscript) fails as if not installed."""
    shim = tmp_path / "shim"
    shim.mkdir()
    for name in BLOCKED:
        (shim / f"{name}.py").write_text(f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)}


def test_export_module_imports_no_runtime():
    code = "import sys, digitlab.export; bad = [m for m in ('onnxruntime', 'onnx') if m in sys.modules]; print(bad)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def digitlab_imports() -> dict[str, set[str]]:
    """digitlab module -> the digitlab modules it imports anywhere (in functions too), the package facade aside."""
    package = Path(digitlab.__file__).parent
    graph = {}
    for path in package.rglob("*.py"):
        name = ".".join(("digitlab", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("digitlab."):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("digitlab.")}
        graph[name] = found
    return graph


def test_no_import_cycle_through_the_predictor_or_export():
    graph = digitlab_imports()
    for start in ("digitlab.export", "digitlab.predict", "digitlab.backends"):
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph.get(module, ())
        assert start not in seen, f"{start} imports itself through {sorted(seen & set(graph))}"


def test_torchscript_export_and_predict_without_onnx(trained_run, no_onnx, tmp_path, mnist):
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(image)
    done = run_cli("export", str(trained_run), "--format", "torchscript", "-o", str(tmp_path / "m.pt"),
                   "--check-images", "20", env=no_onnx, timeout=180)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.pt").is_file() and "same prediction for 20/20 images" in done.stdout
    done = run_cli("predict", str(trained_run), str(image), "--json", env=no_onnx, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == int(mnist.test_labels[0])


def test_onnx_commands_without_onnx_give_the_install_hint(trained_run, no_onnx, tmp_path):
    hint = install_hint("onnx")
    for args in (["export", str(trained_run), "-o", str(tmp_path / "m.onnx"), "--check-images", "5"],
                 ["predict", "--onnx", str(tmp_path / "m.onnx"), str(tmp_path / "x.png")],
                 ["serve", str(trained_run), "--runtime", "onnx", "--host", "203.0.113.1"]):
        done = run_cli(*args, env=no_onnx, timeout=180)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert "the onnx extra" in done.stderr and hint in done.stderr, done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_serve_without_web_gives_the_install_hint(trained_run, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "fastapi.py").write_text("raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)}
    done = run_cli("serve", str(trained_run), "--runtime", "torch", "--host", "203.0.113.1", env=env, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "the web extra" in done.stderr and install_hint("web") in done.stderr


#### The install hint follows how digitlab was installed


def fake_install(tmp_path: Path, editable: bool) -> Path:
    """A site-packages with digitlab and a dist-info whose direct_url.json says editable or not."""
    site = tmp_path / "site"
    (site / "digitlab").mkdir(parents=True)
    info = site / "digitlab-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: digitlab\nVersion: 0.1.0\n")
    if editable:
        (info / "direct_url.json").write_text(json.dumps({"url": (tmp_path / "checkout").as_uri(),
                                                          "dir_info": {"editable": True}}))
    return site


@pytest.mark.quick
def test_hint_for_an_editable_install(tmp_path):
    site = fake_install(tmp_path, editable=True)
    assert source_checkout(site / "digitlab", [str(site)]) == tmp_path / "checkout"
    hint = install_hint("onnx", site / "digitlab", [str(site)])
    assert "pip install -e '.[onnx]'" in hint and str(tmp_path / "checkout") in hint


@pytest.mark.quick
def test_hint_for_a_source_tree(tmp_path):
    root = tmp_path / "repo"
    (root / "src" / "digitlab").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "digitlab"\n')
    hint = install_hint("web", root / "src" / "digitlab", [])
    assert "pip install -e '.[web]'" in hint and str(root) in hint


@pytest.mark.quick
def test_hint_for_an_index_install(tmp_path):
    site = fake_install(tmp_path, editable=False)
    assert source_checkout(site / "digitlab", [str(site)]) is None
    assert install_hint("onnx", site / "digitlab", [str(site)]) == "pip install 'digitlab[onnx]'"


@pytest.mark.quick
def test_require_names_the_extra_and_the_module():
    with pytest.raises(DigitlabError, match=r"needs the onnx extra \(no_such_module_xyz is missing\)"):
        require("onnx", "no_such_module_xyz", "reading ONNX")
    assert require("web", "json", "anything") is json


#### Normalisation is always the run's, never a default


@pytest.mark.quick
@pytest.mark.parametrize("function, parameter", [("evaluate", "normalization"), ("predict_logits", "normalization"),
                                                 ("normalize", "kind")])
def test_normalisation_has_no_default(function, parameter):
    import importlib
    import inspect

    module = importlib.import_module("digitlab.normalize" if function == "normalize" else "digitlab.evaluation")
    fn = getattr(module, function)
    assert inspect.signature(fn).parameters[parameter].default is inspect.Parameter.empty
    images = load_dataset("mnist", progress=False).test_images[:4]
    with pytest.raises(TypeError):
        fn(images) if function == "normalize" else fn(torch.nn.Flatten(), images, *(
            [torch.zeros(4, dtype=torch.long)] if function == "evaluate" else []))
