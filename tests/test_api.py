"""The REST API and the page through FastAPI's TestClient: every route, every limit, every kind of bad input."""
from __future__ import annotations

import io
import json
import threading

import anyio
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from digitlab.serve import Limits, ServeSettings, create_app
from helpers import png_bytes, png_header_only

PREDICT = "/api/predict"


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def mnist_test(mnist):
    return mnist.test_images, mnist.test_labels


def pixels_body(rows) -> dict:
    return {"pixels": rows}


def zeros(rows: int = 28, cols: int = 28) -> list[list[float]]:
    return [[0] * cols for _ in range(rows)]


def upload(client, data: bytes, name: str = "digit.png", content_type: str = "image/png", url: str = PREDICT):
    return client.post(url, files={"file": (name, data, content_type)})


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    assert "Traceback" not in response.text


# ---- routes


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ('id="canvas"', 'id="prediction"', 'id="clear"', 'id="preview"', 'id="bars"'):
        assert needle in html
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        a = client.get(asset)
        assert a.status_code == 200, asset
        html += a.text
    assert "data-class" in html or "dataset.class" in html
    for external in ("http://", "https://", "//cdn", "@import", "url("):
        assert external not in html.replace('href="/docs"', ""), f"page refers to {external}"


def test_static_files_cannot_escape_their_folder(client):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        r = client.get(path)
        assert r.status_code == 404 and "create_app" not in r.text, path


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_model_describes_the_predictor(client, predictor):
    info = client.get("/api/model").json()
    assert info == json.loads(json.dumps(predictor.describe()))
    assert info["name"] == "cnn" and info["classes"] == [str(i) for i in range(10)]


def test_openapi_documents_both_request_bodies(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert content["application/json"]["schema"]["properties"]["pixels"]["maxItems"] == 28
    assert {"/api/model", "/healthz"} <= set(spec["paths"])


def test_uploaded_mnist_digit_is_read_correctly(client, predictor, mnist_test):
    images, labels = mnist_test
    for index in (0, 1, 2):  # a 7, a 2 and a 1
        r = upload(client, png_bytes(Image.fromarray(images[index].numpy())))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == int(labels[index]), (index, body["probabilities"])
        assert body["class_name"] == str(int(labels[index]))
        assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
        assert body["probability"] == pytest.approx(max(body["probabilities"]), abs=1e-6)
        assert body["model"]["name"] == "cnn"


def test_dark_ink_photo_style_upload(client, mnist_test):
    images, labels = mnist_test
    paper = Image.fromarray(255 - images[0].numpy()).resize((112, 112)).convert("RGB")  # black ink on white
    buf = io.BytesIO()
    paper.save(buf, format="JPEG", quality=90)
    r = upload(client, buf.getvalue(), "seven.jpg", "image/jpeg")
    assert r.status_code == 200, r.text
    assert r.json()["label"] == int(labels[0])


def test_json_pixels_of_a_test_digit(client, predictor, mnist_test):
    images, labels = mnist_test
    index = 3  # a 0
    r = client.post(PREDICT + "?preprocessed=true", json=pixels_body(images[index].tolist()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == int(labels[index])
    pre = np.array(body["preprocessed"])
    assert pre.shape == (28, 28) and pre.min() >= 0 and pre.max() == 255
    assert all(isinstance(v, int) for v in body["preprocessed"][14])
    # the API answers exactly what the library says for the same preprocessed image
    direct = predictor.probabilities(torch.tensor(pre, dtype=torch.uint8)[None])[0]
    assert np.allclose(body["probabilities"], direct, atol=1e-5)


def test_preprocessed_is_echoed_only_when_asked_for(client, mnist_test):
    """The 28x28 the model saw is 784 numbers, most of an answer's bytes and JSON time: sent with
    ?preprocessed=true (as the drawing page asks), for JSON pixels and uploads alike, and never by default."""
    images, labels = mnist_test
    png = io.BytesIO()
    Image.fromarray(images[0].numpy()).save(png, format="PNG")
    for send in (lambda url: client.post(url, json=pixels_body(images[0].tolist())),
                 lambda url: upload(client, png.getvalue(), "seven.png", "image/png", url=url)):
        plain, echoed, off = send(PREDICT).json(), send(PREDICT + "?preprocessed=true").json(), \
            send(PREDICT + "?preprocessed=false").json()
        assert "preprocessed" not in plain and "preprocessed" not in off
        assert np.array(echoed.pop("preprocessed")).shape == (28, 28)
        assert plain == echoed == off and plain["label"] == int(labels[0])
    refused = client.post(PREDICT + "?preprocessed=maybe", json=pixels_body(images[0].tolist()))
    assert refused.status_code == 422 and "preprocessed" in refused.json()["detail"]


def test_float_pixels_are_accepted(client, mnist_test):
    images, labels = mnist_test
    rows = (images[0].float() * 0.999).tolist()
    r = client.post(PREDICT, json=pixels_body(rows))
    assert r.status_code == 200 and r.json()["label"] == int(labels[0])


# ---- size limits


def test_body_over_2mb_is_413(client):
    r = client.post(PREDICT, content=b"0" * 2_500_000, headers={"content-type": "application/json"})
    assert_error(r, 413, "2,097,152")
    r = upload(client, b"\x89PNG" + b"\0" * 2_500_000)
    assert_error(r, 413)


def test_chunked_body_over_2mb_is_413_without_content_length(client):
    def chunks():  # a generator body: httpx sends it chunked, with no Content-Length
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB
            yield b" " * 65536

    r = client.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)


def test_5000x5000_image_is_413(client):
    bomb = png_bytes(Image.new("1", (5000, 5000)))  # 25 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    assert_error(upload(client, bomb), 413, "5000x5000")


def test_decompression_bomb_is_413(predictor):
    # a header claiming 30000x30000: beyond Pillow's bomb limit, even when the side limit allows it
    with TestClient(create_app(predictor, ServeSettings(limits=Limits(max_image_side=100_000)))) as c:
        assert_error(upload(c, png_header_only(30000, 30000)), 413, "too many pixels")


# ---- not an image, empty, no digit


def test_text_file_is_415(client):
    assert_error(upload(client, b"hello, this is not an image\n", "note.txt", "text/plain"), 415, "not an image")


def test_text_file_claiming_to_be_png_is_415(client):
    assert_error(upload(client, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.png", "image/png"), 415)


def test_empty_file_is_400(client):
    assert_error(upload(client, b""), 400, "empty")


def test_truncated_png_is_400(client, mnist_test):
    data = png_bytes(Image.fromarray(mnist_test[0][0].numpy()))
    assert_error(upload(client, data[: len(data) // 2]), 400)


def test_blank_image_is_422(client):
    assert_error(upload(client, png_bytes(Image.new("L", (64, 64), 255))), 422, "no digit")


def test_blank_canvas_is_422(client):
    assert_error(client.post(PREDICT, json=pixels_body(zeros())), 422, "no digit")


# ---- JSON of the wrong shape, type or range


def test_nan_in_raw_json_is_422(client):
    rows = zeros()
    text = json.dumps(pixels_body(rows)).replace("0", "NaN", 1)  # JSON has no NaN; Python's json writes one
    assert "NaN" in text
    r = client.post(PREDICT, content=text, headers={"content-type": "application/json"})
    assert_error(r, 422, "pixels[0][0]", "finite")
    assert r.json()["errors"][0]["type"] == "finite_number"


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "1e999"])
def test_infinity_is_422(client, literal):
    text = json.dumps(pixels_body(zeros())).replace("0", literal, 1)
    assert_error(client.post(PREDICT, content=text, headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("body, where", [
    (pixels_body(zeros(27)), "pixels"),
    (pixels_body(zeros(29)), "pixels"),
    (pixels_body(zeros(28, 27)), "pixels[0]"),
    (pixels_body(zeros()[:27] + [[0] * 29]), "pixels[27]"),
    (pixels_body([[300] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body([[-1] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body([["7"] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body([[True] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body([[None] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body([[[0]] + [0] * 27] + zeros(27)), "pixels[0][0]"),
    (pixels_body("0" * 784), "pixels"),
    ({"pixels": zeros(), "extra": 1}, "extra"),
    ({"image": zeros()}, "pixels"),
    (zeros(), "body"),
    (None, "body"),
])
def test_wrong_json_is_422(client, body, where):
    r = client.post(PREDICT, content=json.dumps(body), headers={"content-type": "application/json"})
    assert_error(r, 422, where)


def test_invalid_json_is_422(client):
    assert_error(client.post(PREDICT, content=b'{"pixels": [[0, 0', headers={"content-type": "application/json"}),
                 422)


# ---- wrong content type or method, multipart without a file


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png",
                                          "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, content_type):
    assert_error(client.post(PREDICT, content=b"xyz", headers={"content-type": content_type}), 415, "multipart")


def test_missing_content_type_is_415(client):
    assert_error(client.post(PREDICT, content=b"xyz"), 415)


def test_multipart_without_file_field_is_400(client):
    assert_error(client.post(PREDICT, files={"image": ("d.png", b"x", "image/png")}), 400, "'file'")
    assert_error(client.post(PREDICT, data={"file": "not a file"}, files={"other": ("a", b"b")}), 400, "'file'")


def test_multipart_with_broken_boundary_is_400(client):
    r = client.post(PREDICT, content=b"--nope\r\n\r\n", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)


def test_get_on_predict_is_405_json(client):
    r = client.get(PREDICT)
    assert r.status_code == 405 and r.json()["detail"]


def test_unknown_route_is_404_json(client):
    r = client.get("/etc/passwd")
    assert r.status_code == 404 and r.json()["detail"]


# ---- time limits and failures


class WrappedPredictor:
    """Passes everything through to a real predictor; subclasses change its inference."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class BlockedPredictor(WrappedPredictor):
    """Inference that cannot finish until the test releases it: for the inference time limit."""

    def __init__(self, inner):
        super().__init__(inner)
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()

    def logits(self, images):
        self.started.set()
        self.release.wait(timeout=60)  # a bound, so a broken time limit fails the test instead of hanging it
        try:
            return self.inner.logits(images)
        finally:
            self.finished.set()


def test_slow_inference_is_503(predictor, mnist_test):
    """The answer comes while the model is still blocked: the time limit, not the model, ended the request."""
    blocked = BlockedPredictor(predictor)
    with TestClient(create_app(blocked, ServeSettings(limits=Limits(inference_timeout_s=0.3)))) as c:
        try:
            r = c.post(PREDICT, json=pixels_body(mnist_test[0][0].tolist()))
            assert blocked.started.is_set() and not blocked.finished.is_set(), "the model was not still running"
        finally:
            blocked.release.set()
        assert blocked.finished.wait(timeout=60)  # the abandoned inference ends once released
        assert c.get("/healthz").status_code == 200
    assert_error(r, 503, "0.3 s")


def test_slow_body_is_408(predictor):
    """A client that stops sending half-way gets 408 after read_timeout_s (driven through raw ASGI)."""
    app = create_app(predictor, ServeSettings(limits=Limits(read_timeout_s=0.3)))
    sent: list[dict] = []

    async def receive():
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b'{"pixels": [', "more_body": True}
        await anyio.sleep_forever()  # the rest of the body never comes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PREDICT, "raw_path": PREDICT.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def main():
        with anyio.fail_after(3):
            await app(scope, receive, send)

    anyio.run(main)
    start = next(m for m in sent if m.get("type") == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m.get("type") == "http.response.body")
    assert start["status"] == 408 and "0.3 s" in json.loads(body)["detail"]


class BrokenPredictor(WrappedPredictor):
    def logits(self, images):
        raise RuntimeError("secret internal state /home/x")


def test_unexpected_error_is_500_without_traceback(predictor, mnist_test):
    with TestClient(create_app(BrokenPredictor(predictor)), raise_server_exceptions=False) as c:
        r = c.post(PREDICT, json=pixels_body(mnist_test[0][0].tolist()))
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
        assert "secret" not in r.text and "Traceback" not in r.text
        assert c.get("/healthz").status_code == 200


def test_client_supplied_path_is_never_opened(client, tmp_path):
    secret = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(secret)
    r = upload(client, str(secret).encode(), "digit.png")
    assert_error(r, 415)
    r = client.post(PREDICT, json={"pixels": str(secret)})
    assert_error(r, 422)


@pytest.mark.quick
def test_shipped_model_loads_and_serves(mnist_test):
    """`digitlab serve` with no RUN serves the model shipped in the package."""
    from digitlab.predict import DEFAULT_WEIGHTS, Predictor

    assert DEFAULT_WEIGHTS.is_file(), f"the shipped model {DEFAULT_WEIGHTS} is missing"
    with TestClient(create_app(Predictor.from_run())) as c:
        assert c.get("/api/model").json()["source"] == DEFAULT_WEIGHTS.name
        images, labels = mnist_test
        for index in range(5):
            r = c.post(PREDICT, json=pixels_body(images[index].tolist()))
            assert r.status_code == 200 and r.json()["label"] == int(labels[index]), r.text
