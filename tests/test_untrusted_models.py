"""Model files are untrusted input: `predict --onnx`, Predictor.from_onnx and `serve` refuse a model that answers
the wrong shape, the wrong class count or non-finite numbers, stop a graph that runs for ever, and never print
NaN as JSON.

The ONNX files are built here with onnx.helper and carry digitlab's metadata (backends.encode_metadata), so they
pass the format check and reach the probe: a `Loop` of 10^12 iterations; 3 logits per image for 10 class names;
2 class names for 10 logits; a rank-1 output; NaN (0/0) and infinity (1/0); a fixed batch of 1; models that are
fine on the probe's images but give NaN, or loop, on a full-white image. The PyTorch case is the shipped model
with one weight set to NaN. Before this check existed, the Loop hung forever, the NaN model printed bare `NaN`
in --json output, the 2-class model raised IndexError, the rank-1 one an IndexError/AxisError, the 3-logit one
was accepted, and `serve --runtime torch` of the NaN weights answered 200 with `"probability": null`.

Some files attack onnxruntime's session creation itself, before any call and its deadline: a Tile of a constant
to 2.4 GB (2.6 GB of RSS in `predict --onnx` before the probe process), 990 constant MatMuls (tens of seconds
of constant folding; 300 took 10.6 s), more than 1,000 nodes, an operator of a custom domain, weights "stored"
in /dev/zero. The first two are refused by the capped probe process (onnx_guard), the others by its static check.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from digitlab.backends import DEADLINE_IMAGES, encode_metadata
from digitlab.cli import main
from digitlab.errors import ModelError, RunError
from digitlab.predict import DEFAULT_WEIGHTS, Predictor
from helpers import free_port, one_line_error, run_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

LABEL = 7  # MNIST test image 0
CLASSES = list("0123456789")
ENDLESS = 10 ** 12  # Loop iterations: days of work at any speed
DEADLINE = 0.5  # seconds, for the in-process tests
CLI_BUDGET_S = 120  # a subprocess must finish within this (start-up and a 5 s default deadline, on a busy machine)


#### Building the models


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def model_bytes(nodes: list, output_shape: list, classes: list[str] | None = None, inits: list | None = None,
                input_shape: list | None = None, outputs: list | None = None, metrics: dict | None = None,
                check: bool = True, edit=None) -> bytes:
    """images (N, 1, 28, 28) -> Flatten -> MatMul (784, 10) -> "raw", then `nodes`, which must produce "logits".
    `edit(model)` changes the ModelProto before it is serialised; `check=False` skips onnx's checker, which
    refuses some of the hostile files below before any loader sees them."""
    w = (np.random.default_rng(0).normal(size=(784, 10)) * 0.01).astype(np.float32)
    first = [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["raw"])]
    graph = helper.make_graph(
        first + nodes, "crafted",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape or ["N", 1, 28, 28])],
        outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)],
        [const("w", w)] + (inits or []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.1x reads
    helper.set_model_props(model, encode_metadata({"model": "crafted", "normalization": "standard",
                                                   "classes": classes or CLASSES, "metrics": metrics}))
    if edit is not None:
        edit(model)
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def identity() -> list:
    return [helper.make_node("Identity", ["raw"], ["logits"])]


def endless_loop(trip_count: str) -> list:
    """Loop `trip_count` times over an Identity body carrying "raw": the answer is right, if it ever comes."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    return [helper.make_node("Loop", [trip_count, "yes", "raw"], ["logits"], body=body)]


def image_sum() -> list:
    """"total" (N, 1): the sum of the normalised pixels: -333 blank, -138 the probe's stroke, +2212 all white."""
    return [helper.make_node("ReduceSum", ["flat", "axis1"], ["total"], keepdims=1)]


SUM_INITS = [const("axis1", np.array([1], np.int64)), const("zero", np.float32(0)), const("yes", np.array(True))]


def nan_when_bright() -> list:
    """raw + 0 * sqrt(-(total + 100)): finite while the image is mostly dark, NaN for a bright one."""
    return image_sum() + [
        helper.make_node("Add", ["total", "hundred"], ["shifted"]), helper.make_node("Neg", ["shifted"], ["neg"]),
        helper.make_node("Sqrt", ["neg"], ["root"]), helper.make_node("Mul", ["root", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"])]


def loop_when_bright() -> list:
    """An endless Loop for a bright image (sum of the batch > 0), zero iterations otherwise."""
    return image_sum() + [
        helper.make_node("ReduceSum", ["total"], ["batch_total"], keepdims=0),
        helper.make_node("Greater", ["batch_total", "zero"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["bright_int"], to=TensorProto.INT64),
        helper.make_node("Mul", ["bright_int", "endless"], ["trips"])] + endless_loop("trips")


def ignore(name: str) -> list:
    """`name` (a float tensor) times 0, added to "raw": the model computes `name`, and its answer stays finite."""
    return [helper.make_node("ReduceSum", [name], ["total_ignored"], keepdims=0),
            helper.make_node("Mul", ["total_ignored", "zero"], ["nothing"]),
            helper.make_node("Add", ["raw", "nothing"], ["logits"])]


def constant_matmuls(count: int, size: int = 512) -> list:
    """`count` MatMuls of a constant (size, size) matrix by itself, chained: all folded while the session is
    created, before any call (300 of them: about 10 s of onnxruntime on one core)."""
    nodes = [helper.make_node("MatMul", ["c" if i == 0 else f"m{i - 1}", "c"], [f"m{i}"]) for i in range(count)]
    return nodes + ignore(f"m{count - 1}")


def external_weights(model) -> None:
    """The MatMul's weights "stored" in /dev/zero: onnxruntime would read from whatever path the file names."""
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "/dev/zero"


CONSTANT = (np.random.default_rng(1).normal(size=(512, 512)) / 23).astype(np.float32)  # keeps the powers finite
TILE_REPEATS = 600_000  # 1,024 floats repeated: 2.4 GB, from a 31 KB file
N10 = ["N", 10]
THREE = ("logits", "extra1", "extra2")
MODELS = {
    "good": lambda: model_bytes(identity(), N10),
    "endless Loop": lambda: model_bytes(endless_loop("endless"), N10, inits=[const("endless", np.int64(ENDLESS)),
                                                                             const("yes", np.array(True))]),
    "3 logits for 10 classes": lambda: model_bytes(
        [helper.make_node("Slice", ["raw", "starts", "ends", "axis1"], ["logits"])], ["N", 3],
        inits=[const("starts", np.array([0], np.int64)), const("ends", np.array([3], np.int64)),
               const("axis1", np.array([1], np.int64))]),
    "3 graph outputs": lambda: model_bytes(
        [helper.make_node("Identity", ["raw"], [name]) for name in THREE], N10,
        outputs=[helper.make_tensor_value_info(name, TensorProto.FLOAT, N10) for name in THREE]),
    "2 class names for 10 logits": lambda: model_bytes(identity(), N10, classes=["cat", "dog"]),
    "rank-1 output": lambda: model_bytes([helper.make_node("ReduceSum", ["raw", "axis1"], ["logits"], keepdims=0)],
                                         ["N"], inits=[const("axis1", np.array([1], np.int64))]),
    "NaN output (0/0)": lambda: model_bytes(
        [helper.make_node("Mul", ["raw", "zero"], ["zeros"]), helper.make_node("Div", ["zeros", "zero"], ["logits"])],
        N10, inits=[const("zero", np.float32(0))]),
    "infinite output (1/0)": lambda: model_bytes(
        [helper.make_node("Mul", ["raw", "zero"], ["zeros"]), helper.make_node("Add", ["zeros", "one"], ["ones"]),
         helper.make_node("Div", ["ones", "zero"], ["logits"])], N10,
        inits=[const("zero", np.float32(0)), const("one", np.float32(1))]),
    "fixed batch of 1": lambda: model_bytes(identity(), [1, 10], input_shape=[1, 1, 28, 28]),
    "classes a number": lambda: model_bytes(identity(), N10, classes=10),
    "NaN in the metadata": lambda: model_bytes(identity(), N10, metrics={"test_accuracy": float("nan")}),
    "NaN for bright images": lambda: model_bytes(nan_when_bright(), N10,
                                                 inits=SUM_INITS + [const("hundred", np.float32(100))]),
    "endless Loop for bright images": lambda: model_bytes(loop_when_bright(), N10,
                                                          inits=SUM_INITS + [const("endless", np.int64(ENDLESS))]),
    "Tile of 2.4 GB": lambda: model_bytes(
        [helper.make_node("Tile", ["ones", "repeats"], ["tiled"])] + ignore("tiled"), N10,
        inits=[const("ones", np.ones(1024, np.float32)), const("repeats", np.array([TILE_REPEATS], np.int64)),
               const("zero", np.float32(0))]),
    "990 constant MatMuls": lambda: model_bytes(constant_matmuls(990), N10,
                                                inits=[const("c", CONSTANT), const("zero", np.float32(0))]),
    "1,001 nodes": lambda: model_bytes(
        [helper.make_node("Identity", ["raw" if i == 0 else f"x{i - 1}"], [f"x{i}"]) for i in range(999)]
        + [helper.make_node("Identity", ["x998"], ["logits"])], N10),
    "a custom-domain operator": lambda: model_bytes(
        [helper.make_node("Gelu", ["raw"], ["logits"], domain="com.microsoft")], N10, check=False),
    "weights in another file": lambda: model_bytes(identity(), N10, check=False, edit=external_weights),
}
REFUSED_AT_LOAD = {  # model -> what the one-line error must say
    "endless Loop": "deadline",
    "3 logits for 10 classes": "shape (2, 3)",
    "3 graph outputs": "expected input 'images' and output 'logits'",
    "2 class names for 10 logits": "expected (2, 2)",
    "rank-1 output": "shape (2,)",
    "NaN output (0/0)": "NaN or infinity",
    "infinite output (1/0)": "NaN or infinity",
    "fixed batch of 1": "onnxruntime failed",
    "classes a number": "'classes' of the wrong type",
    "Tile of 2.4 GB": "needed more than 1,024 MB of memory",
    "1,001 nodes": "more than 1,000 nodes",
    "a custom-domain operator": "'Gelu' of domain 'com.microsoft'",
    "weights in another file": "data is in another file",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for i, (name, build) in enumerate(MODELS.items()):
        out[name] = folder / f"m{i}.onnx"
        out[name].write_bytes(build())
    return out


@pytest.fixture(scope="module")
def seven(mnist, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "seven.png"
    Image.fromarray(255 - mnist.test_images[0].numpy()).save(path)
    return path


WHITE = np.full((1, 28, 28), 255, np.uint8)  # as the model sees it: bright everywhere


def bold_digit() -> np.ndarray:
    """A thick 0, bright on black: after preprocessing, bright enough for the models' "bright" branch."""
    image = np.zeros((28, 28), np.uint8)
    image[3:25, 4:24] = 255
    image[8:20, 10:18] = 0
    return image


def test_control_the_crafted_models_run_and_do_what_they_claim(models, mnist):
    """Straight through onnxruntime, no digitlab checks: each model misbehaves exactly as its name says."""
    import onnxruntime as ort

    def run(name: str, images: np.ndarray, seconds: float | None = None):
        session = ort.InferenceSession(str(models[name]), providers=["CPUExecutionProvider"])
        x = ((images.astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
        options = ort.RunOptions()
        if seconds is not None:  # stop it ourselves: the point is that it does not stop on its own
            import threading
            timer = threading.Timer(seconds, lambda: setattr(options, "terminate", True))
            timer.start()
        started = time.monotonic()
        try:
            return session.run(None, {"images": x}, options), time.monotonic() - started
        except Exception:
            return None, time.monotonic() - started

    digits = mnist.test_images[:2].numpy()
    assert run("good", digits)[0][0].shape == (2, 10)
    assert run("3 logits for 10 classes", digits)[0][0].shape == (2, 3)
    assert len(run("3 graph outputs", digits)[0]) == 3
    assert run("rank-1 output", digits)[0][0].shape == (2,)
    assert np.isnan(run("NaN output (0/0)", digits)[0][0]).all()
    assert np.isinf(run("infinite output (1/0)", digits)[0][0]).all()
    assert run("fixed batch of 1", digits)[0] is None
    assert np.isfinite(run("NaN for bright images", digits[:1] * 0)[0][0]).all()
    assert np.isnan(run("NaN for bright images", WHITE)[0][0]).all()
    assert run("endless Loop for bright images", digits[:1] * 0)[0][0].shape == (1, 10)
    for name, images in (("endless Loop", digits), ("endless Loop for bright images", WHITE)):
        result, took = run(name, images, seconds=2.0)
        assert result is None and took >= 1.9, (name, took)  # still running after 2 s: stopped from outside


#### In process: Predictor.from_onnx


@pytest.mark.parametrize("name", REFUSED_AT_LOAD)
def test_from_onnx_refuses_at_load(models, name):
    started = time.monotonic()
    with pytest.raises(RunError) as e:
        Predictor.from_onnx(models[name], threads=1, deadline_s=DEADLINE)
    message = str(e.value)
    assert "\n" not in message and REFUSED_AT_LOAD[name] in message, message
    if name == "endless Loop":
        assert isinstance(e.value, ModelError) and time.monotonic() - started < 30 * DEADLINE


def test_slow_session_creation_is_stopped_at_the_load_limit(models, monkeypatch):
    """990 constant MatMuls (just under the node cap) keep onnxruntime's InferenceSession busy for tens of seconds,
    before any call and its deadline: the probe process ends at its load limit and the file is refused. The good
    model's session takes about 0.02 s, far inside the same limit."""
    from digitlab import onnx_guard

    monkeypatch.setattr(onnx_guard, "LOAD_LIMIT_S", 1.0)
    Predictor.from_onnx(models["good"], threads=1, deadline_s=DEADLINE)
    started = time.monotonic()
    with pytest.raises(ModelError, match="took more than 1.05 s to create its session") as e:
        Predictor.from_onnx(models["990 constant MatMuls"], threads=1, deadline_s=DEADLINE)
    took = time.monotonic() - started
    assert "\n" not in str(e.value) and took < 15, took  # child start-up (up to 2 s when busy), then 1 s


def test_vetted_bytes_skip_the_probe_process_only_while_unchanged(models, monkeypatch):
    """A serving worker loads the file its parent vetted: the same bytes (same sha256) skip the probe process,
    any other bytes (the file replaced since) are vetted again."""
    from digitlab import onnx_guard

    digest = onnx_guard.vet(models["good"].read_bytes(), "good.onnx", DEADLINE)
    probes = []
    monkeypatch.setattr(onnx_guard, "probe_in_child", lambda *args: probes.append(args))
    Predictor.from_onnx(models["good"], threads=1, vetted_sha256=digest)
    assert probes == []
    Predictor.from_onnx(models["good"], threads=1, vetted_sha256="0" * 64)
    assert len(probes) == 1


@pytest.mark.quick
def test_nan_in_the_metadata_reads_as_null(models):
    """A metric stored as NaN must not come back out of describe() (GET /api/model, --json) as invalid JSON."""
    p = Predictor.from_onnx(models["NaN in the metadata"], threads=1, deadline_s=DEADLINE)
    assert p.describe()["test_accuracy"] is None
    json.dumps(p.describe(), allow_nan=False)


def test_good_model_passes_the_probe_and_predicts(models, mnist):
    p = Predictor.from_onnx(models["good"], threads=1, deadline_s=DEADLINE)
    probs = p.probabilities(mnist.test_images[:50])
    assert probs.shape == (50, 10) and np.isfinite(probs).all()


def test_nan_on_one_request_is_an_error_not_a_label(models, mnist):
    p = Predictor.from_onnx(models["NaN for bright images"], threads=1, deadline_s=DEADLINE)  # passes the probe
    assert np.isfinite(p.logits(mnist.test_images[:1] * 0)).all()
    batch = np.concatenate([mnist.test_images[:3].numpy() * 0, WHITE])
    with pytest.raises(ModelError, match="NaN or infinity for image 3"):
        p.predict(list(batch), preprocess=False)


def test_endless_request_is_stopped_at_its_deadline(models):
    p = Predictor.from_onnx(models["endless Loop for bright images"], threads=1, deadline_s=DEADLINE)
    started = time.monotonic()
    with pytest.raises(ModelError, match="deadline"):
        p.logits(WHITE)
    took = time.monotonic() - started
    assert DEADLINE * 0.9 < took < 30 * DEADLINE, took
    assert p.logits(WHITE * 0).shape == (1, 10)  # the session still answers after a stopped run
    big = np.zeros((4 * DEADLINE_IMAGES, 28, 28), np.uint8)
    assert p.logits(big).shape == (4 * DEADLINE_IMAGES, 10)


def test_deadline_stops_only_the_run_past_it(models):
    """Concurrent calls on one session: the endless one is stopped, the others all answer."""
    from concurrent.futures import ThreadPoolExecutor

    p = Predictor.from_onnx(models["endless Loop for bright images"], threads=1, deadline_s=DEADLINE)
    dark = np.zeros((1, 28, 28), np.uint8)

    def many_dark() -> int:
        return sum(p.logits(dark).shape == (1, 10) for _ in range(30))

    with ThreadPoolExecutor(4) as pool:
        endless = pool.submit(p.logits, WHITE)
        fine = [pool.submit(many_dark) for _ in range(3)]
        assert [f.result(timeout=60) for f in fine] == [30, 30, 30]
        with pytest.raises(ModelError, match="deadline"):
            endless.result(timeout=60)


def test_deadline_holds_in_a_forked_process(models):
    """Worker processes may be forked from one that loaded the model (its watchdog thread running): the child
    starts its own watchdog, and the endless run is still stopped there."""
    import select

    predictor = Predictor.from_onnx(models["endless Loop for bright images"], threads=1, deadline_s=DEADLINE)
    predictor.logits(np.zeros((1, 28, 28), np.uint8))  # the parent's watchdog has run
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            predictor.logits(WHITE)
            os.write(write, b"answered")
        except ModelError as e:
            os.write(write, str(e).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 60)
        assert ready, "the forked child's endless run was not stopped within 60 s"
        assert b"deadline" in os.read(read, 4096)
    finally:
        os.close(read)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_the_probe_is_cheap_beside_loading(runtime):
    """Worker processes load a Predictor at start-up: the probe must be a small part of that (ratios, one run).
    One PyTorch thread, as a worker process would use: on a busy 2-core machine two threads wait on each other
    for hundreds of ms per call, whatever the call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        p = Predictor.from_run(runtime=runtime, threads=1)  # the shipped model, probe included
        load_ms = (time.perf_counter() - started) * 1e3
        probe_ms = median_ms(p.probe, 20)
        one_ms = median_ms(lambda: p.logits(np.zeros((1, 28, 28), np.uint8)), 20)
    finally:
        torch.set_num_threads(threads)
    print(f"\n{runtime}: load {load_ms:.1f} ms, probe {probe_ms:.2f} ms, one image {one_ms:.2f} ms")
    assert probe_ms < 0.25 * load_ms, (probe_ms, load_ms)


#### The CLI: one line, non-zero exit, bounded time


@pytest.mark.parametrize("name", REFUSED_AT_LOAD)
def test_predict_onnx_refuses_with_one_line(models, seven, name):
    started = time.monotonic()
    try:
        done = run_cli("predict", "--onnx", str(models[name]), str(seven), "--json", timeout=CLI_BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"predict --onnx {name} still running after {CLI_BUDGET_S} s")
    one_line_error(done, REFUSED_AT_LOAD[name])
    assert done.stdout == "", done.stdout
    print(f"\n{name}: refused in {time.monotonic() - started:.1f} s")


def test_predict_onnx_json_never_prints_nan(models, tmp_path, capsys):
    white = tmp_path / "bold-digit.png"
    Image.fromarray(bold_digit()).save(white)
    code = main(["predict", "--onnx", str(models["NaN for bright images"]), str(white), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and "NaN" not in out and "nan" not in out.lower(), out
    assert err.count("\n") == 1 and "NaN or infinity" in err, err
    for line in out.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {line}"))


@pytest.mark.quick
def test_json_writer_is_strict_even_past_the_model_checks(models, seven, capsys, monkeypatch):
    """The last line of defence: with the Predictor's output checks switched off, --json still prints no NaN."""
    from digitlab import onnx_guard

    monkeypatch.setattr(Predictor, "checked", lambda self, logits, images, first=0: np.asarray(logits, np.float32))
    monkeypatch.setattr(onnx_guard, "probe_in_child", lambda *args: None)  # it would run the checks in a child
    code = main(["predict", "--onnx", str(models["NaN output (0/0)"]), str(seven), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1 and "NaN or infinity as JSON" in err, (out, err)


def test_predict_onnx_good_model_still_works(models, seven, capsys):
    assert main(["predict", "--onnx", str(models["good"]), str(seven), "--json"]) == 0
    line = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert all(math.isfinite(p) for p in line["probabilities"])


#### PyTorch: a run with one NaN weight


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> Path:
    """The shipped model with one weight of its first convolution set to NaN, metadata unchanged."""
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    first = next(k for k, t in tensors.items() if k.endswith("weight") and t.dim() == 4)
    tensors[first].view(-1)[0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan-weight.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def test_torch_nan_weight_is_refused_at_load(nan_weights):
    for runtime in ("torch", "onnx"):
        with pytest.raises(ModelError, match="NaN or infinity") as e:
            Predictor.from_run(nan_weights, runtime=runtime, threads=1)
        assert "\n" not in str(e.value)


def test_predict_with_nan_weights_is_one_line(nan_weights, seven):
    done = run_cli("predict", str(nan_weights), str(seven), "--json", timeout=CLI_BUDGET_S)
    one_line_error(done, "refusing the model", "NaN or infinity")
    assert done.stdout == ""


def test_serve_torch_with_nan_weights_refuses_to_start(nan_weights):
    """Before: it served, and answered 200 with label 0 and "probability": null. Now it exits before listening."""
    try:
        done = run_cli("serve", str(nan_weights), "--runtime", "torch", "--host", "127.0.0.1",
                       "--port", str(free_port()), timeout=CLI_BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve with NaN weights was still running after {CLI_BUDGET_S} s: it started serving")
    one_line_error(done, "refusing the model", "NaN or infinity")


def test_server_answers_an_error_not_null_for_nan_on_one_request(models):
    """A model that passes the probe but gives NaN on one request: a 500 (the model's fault, not the client's) with
    a detail, no NaN, no null."""
    from digitlab.serve import create_app

    predictor = Predictor.from_onnx(models["NaN for bright images"], threads=1, deadline_s=DEADLINE)
    white = bold_digit().astype(float).tolist()  # a canvas drawing whose preprocessed form is mostly ink
    with TestClient(create_app(predictor), raise_server_exceptions=False) as client:
        r = client.post("/api/predict", json={"pixels": white})
    assert r.status_code == 500, r.text
    body = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in {r.text}"))
    assert "NaN or infinity" in body["detail"] and "null" not in r.text
