"""Property-based fuzzing of the REST API, in process: schemathesis from the app's own OpenAPI schema, and
hypothesis on JSON pixels. Every request must get a 200 with a valid prediction or a 4xx JSON error
{"detail": "..."}; never a 5xx.

Three passes, seeded and bounded by example counts (not time), so CI sees the same requests every run:
- every operation of /openapi.json, positive and negative data, with schemathesis' own checks (status codes and
  response bodies as documented, negative data refused, unexpected methods answered 405);
- /api/predict with multipart uploads only, many more examples: an upload body costs ~10 ms to generate, a 28x28
  JSON body ~120 ms (784 floats through hypothesis), so the JSON side gets its own cheap fuzzer below;
- JSON pixels built from a few hostile cells in a grid (NaN, infinities, 1e999, huge integers, strings, nested
  lists, wrong shapes, junk keys, broken JSON), checked against what the request *should* get.
Each test counts the requests it sent itself (so any one of them can run alone): the two schemathesis passes
check their share after their last example, MIN_REQUESTS below, together at least 1,000 requests.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from digitlab.serve import create_app

PREDICT = "/api/predict"
SEED = 20240607
# test -> requests it must send: schemathesis generates fewer than max_examples where an operation has little
# to vary (GET /healthz), and a few more where its coverage phase adds cases; seeded, so the counts repeat
MIN_REQUESTS = {"test_every_operation_from_the_schema": 150, "test_uploads_from_the_schema": 850}
SENT: Counter = Counter()  # status -> requests sent by the test running now (reset for each test)
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app(predictor):
    return create_app(predictor)


def seeded() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({"seed": SEED})


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=seeded())


@pytest.fixture(scope="module")
def upload_schema(app):
    """The app's own schema with /api/predict's JSON body left out: uploads only."""
    spec = json.loads(json.dumps(app.openapi()))
    content = spec["paths"][PREDICT]["post"]["requestBody"]["content"]
    del content["application/json"]
    schema = schemathesis.openapi.from_dict(spec, config=seeded()).include(path=PREDICT, method="POST")
    schema.app = app
    return schema


@pytest.fixture(autouse=True)
def counted(request):
    """Count this test's requests from zero; afterwards, check it sent at least its share (MIN_REQUESTS). A
    schemathesis test's body runs once per example, so its total can only be checked here, after the last."""
    SENT.clear()
    yield SENT
    total = sum(SENT.values())
    print(f"\n{request.node.name}: {total} requests, statuses {dict(sorted(SENT.items()))}")
    assert total >= MIN_REQUESTS.get(request.node.name.split("[")[0], 1), dict(SENT)


def check_answer(response, where: str) -> None:
    """Count the answer; a 4xx must be JSON with a string detail, and nothing may be a 5xx."""
    status = response.status_code
    SENT[status] += 1
    assert status < 500, f"{where}: {status} {response.text[:300]}"
    if status >= 400:
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], response.text[:300]
        assert "Traceback" not in response.text


def check_prediction(body: dict, echoed: bool | None = None) -> None:
    """A valid prediction; with `echoed` True (False), with (without) the 28x28 `preprocessed`."""
    probs = np.array(body["probabilities"])
    assert probs.shape == (10,) and np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-4
    assert body["label"] == int(probs.argmax()) and body["probability"] == pytest.approx(probs.max(), abs=1e-6)
    if echoed is not None:
        assert ("preprocessed" in body) == echoed, sorted(body)
    if "preprocessed" in body:
        pre = np.array(body["preprocessed"])
        assert pre.shape == (28, 28) and pre.min() >= 0 and pre.max() <= 255


#### schemathesis, from /openapi.json

every_operation = schemathesis.pytest.from_fixture("api_schema")
uploads = schemathesis.pytest.from_fixture("upload_schema")


def call_and_check(case, where: str) -> None:
    # A schema-valid body can still be refused by design: a blank 28x28 canvas (422 "no digit"), or random
    # bytes in the binary `file` field (415 "not an image"); so "positive data is accepted" is not checked.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    check_answer(response, where)
    if response.status_code == 200 and case.path == PREDICT:
        check_prediction(response.json())


@every_operation.parametrize()
@settings(FUZZ, max_examples=120)
def test_every_operation_from_the_schema(case):
    call_and_check(case, "schema")


@uploads.parametrize()
@settings(FUZZ, max_examples=900)
def test_uploads_from_the_schema(case):
    call_and_check(case, "uploads")


#### hypothesis, JSON pixels

HOSTILE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 255.0000001, -1e-9, 256, -1]),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.booleans(), st.none(),
    st.lists(st.integers(0, 255), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
LITERALS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "0x10", "1_0", "+5", ".5", "07"]


@st.composite
def pixel_grids(draw, digits, hostile: bool) -> list:
    """A grid: a real MNIST digit, noise, blank or full; if `hostile`, of a wrong shape or with a few bad cells."""
    rows, cols = 28, 28
    if hostile:
        rows = draw(st.sampled_from([28] * 3 + [0, 1, 27, 29, 784]))
        cols = draw(st.sampled_from([28] * 3 + [0, 27, 29]))
    base = draw(st.sampled_from(["digit", "digit", "digit", "noise", "blank", "full"]))
    if base == "digit" and rows == 28 and cols == 28:
        grid = digits[draw(st.integers(0, len(digits) - 1))].astype(float).tolist()
    else:
        fill = {"blank": 0, "full": 255}.get(base, None)
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        grid = [[fill if fill is not None else float(rng.integers(0, 256)) for _ in range(cols)] for _ in range(rows)]
    if not hostile:
        for _ in range(draw(st.integers(0, 3))):  # legal values still: exact bounds, ints, tiny and odd floats
            grid[draw(st.integers(0, 27))][draw(st.integers(0, 27))] = draw(st.one_of(
                st.sampled_from([0, 255, 0.0, 255.0, -0.0, 5e-324, 254.99999]), st.floats(0, 255), st.integers(0, 255)))
        return grid
    for _ in range(draw(st.integers(0, 3)) if rows and cols else 0):
        grid[draw(st.integers(0, rows - 1))][draw(st.integers(0, cols - 1))] = draw(HOSTILE)
    if rows and draw(st.integers(0, 4)) == 0:  # a ragged row
        grid[draw(st.integers(0, rows - 1))] = draw(st.lists(st.integers(0, 255), max_size=40))
    return grid


def is_valid_pixels(doc) -> bool:
    """What PixelsRequest accepts: exactly {"pixels": 28 rows of 28 finite real numbers in 0..255}."""
    if not isinstance(doc, dict) or set(doc) != {"pixels"} or not isinstance(doc["pixels"], list):
        return False
    grid = doc["pixels"]
    return len(grid) == 28 and all(isinstance(row, list) and len(row) == 28 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 255
        for v in row) for row in grid)


@st.composite
def json_bodies(draw, digits) -> tuple[bytes, object]:
    """(raw body, parsed document or None if the body is not plain JSON) for a JSON /api/predict request."""
    if draw(st.booleans()):  # half are well-formed requests, which must be read (200) or refused as "no digit"
        doc = {"pixels": draw(pixel_grids(digits, hostile=False))}
        return json.dumps(doc).encode(), doc
    grid = draw(pixel_grids(digits, hostile=True))
    doc = draw(st.sampled_from([
        {"pixels": grid}, {"pixels": grid}, {"pixels": grid}, {"pixels": grid, "extra": 1}, {"image": grid},
        grid, {"pixels": {"0": grid}}, {"pixels": json.dumps(grid)}, {"pixels": [grid]}, None, 7, "pixels"]))
    text = json.dumps(doc, allow_nan=True)  # NaN and Infinity go out as JavaScript literals, as some clients do
    how = draw(st.sampled_from(["plain"] * 4 + ["literal", "truncate", "bytes", "nest"]))
    if how == "literal" and "0" in text:
        text = text.replace("0", draw(st.sampled_from(LITERALS)), 1)
    elif how == "truncate":
        text = text[: draw(st.integers(0, len(text) - 1))] if text else text
    elif how == "bytes":
        return draw(st.binary(max_size=200)), None
    elif how == "nest":
        depth = draw(st.integers(1, 3000))  # deep nesting: parsers that recurse can blow the stack
        text = '{"pixels": ' + "[" * depth + "]" * depth + "}"
    else:
        return text.encode(), (None if any(w in text for w in ("NaN", "Infinity")) else doc)
    return text.encode(), None


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist.test_images[:50].numpy()


def test_json_pixels_fuzz(client, digits):
    oks = Counter()

    @settings(FUZZ, max_examples=400)
    @given(json_bodies(digits))
    def one(body_doc):
        body, doc = body_doc
        r = client.post(PREDICT + "?preprocessed=true", content=body, headers={"content-type": "application/json"})
        check_answer(r, "json")
        if doc is not None and is_valid_pixels(doc):
            assert r.status_code in (200, 422), r.text[:300]  # 422 only for "no digit" on a blank or flat grid
            if r.status_code == 422:
                assert "no digit" in r.json()["detail"], r.text[:300]
        else:
            assert r.status_code == 422, (body[:200], r.text[:300])
        oks[r.status_code] += 1
        if r.status_code == 200:
            check_prediction(r.json(), echoed=True)

    one()
    assert oks[200] >= 20 and oks[422] >= 100, oks  # both sides of the oracle were exercised


def test_real_digits_survive_hostile_neighbours(client, digits):
    """A real digit with one cell set to a legal extreme (0 or 255) still reads as a digit: no crash, 200."""
    for i, value in enumerate([0, 255, 0.0, 255.0, 1e-300]):
        grid = digits[i].astype(float).tolist()
        grid[0][0] = value
        r = client.post(PREDICT, json={"pixels": grid})
        check_answer(r, "json")
        assert r.status_code == 200, r.text[:300]
        check_prediction(r.json(), echoed=False)
