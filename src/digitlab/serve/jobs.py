"""What a serving worker does with a request: a small registry of named job kinds, run inside the worker.

    JOBS["predict"].prepare(ctx, ("upload", png_bytes, False))  # per request: parse, decode, preprocess -> 28x28
    JOBS["predict"].run(ctx, [(image, False), ...])              # per batch: one model call -> one JSON body each

A job kind is two functions. `prepare` takes the request's raw payload (plain bytes, never a pickled object from
a client) and does all the parsing and decoding there is: JSON validation, the image header check, the pixel
budget, decoding at reduced size, digitlab.preprocess. `run` takes the prepared items of several requests and
answers each with its finished JSON body (bytes), so the serving process only copies bytes to the socket.
Adding a kind is one register_job call with its two functions; the pools (serve/pool.py, serve/inline_pool.py) run
every kind under the same deadline and memory limit. A kind registered `expensive` (explain: Integrated Gradients
costs a hundred predictions) runs alone and is admitted through its own small queue and workers (serve/pool.py).

A refusal is a JobError(status, detail): it crosses the process boundary by pickling and becomes the usual
{"detail": ...} JSON answer with that status.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from digitlab.errors import ImageError
from digitlab.preprocess import canvas_to_mnist_measured, to_mnist
from digitlab.serve.decode import PixelBudgetError, decode_upload
from digitlab.serve.limits import Limits
from digitlab.serve.schema import MAX_ERRORS, PixelsRequest, describe_errors, error_body, plain_errors


class JobError(Exception):
    """A request refused with an HTTP status and a one-line detail; `extra` adds fields to the JSON answer."""

    def __init__(self, status: int, detail: str, extra: dict | None = None):
        super().__init__(status, detail, extra)
        self.status, self.detail, self.extra = status, detail, extra or {}

    def body(self) -> dict:
        return {"detail": self.detail, **self.extra}


@dataclass
class WorkerContext:
    """What every job function may use: the loaded predictor, the limits, and what is loaded, as plain data."""

    predictor: Any  # digitlab.predict.Predictor (or a test double with the same methods)
    limits: Limits
    model_info: dict
    made: dict = field(default_factory=dict)  # what a job kind builds once per worker (the explain job's Explainer)


@dataclass(frozen=True)
class JobKind:
    prepare: Callable[[WorkerContext, Any], Any]  # per request, may raise JobError
    run: Callable[[WorkerContext, list[Any]], list[bytes]]  # per batch: one answer per prepared item, in order
    # expensive: tens to hundreds of times a prediction's CPU (explain). Such a job runs alone, never in a batch
    # with others, and the pool admits few of them at once, on few workers, so predictions keep their capacity
    expensive: bool = False


JOBS: dict[str, JobKind] = {}


def register_job(name: str, prepare: Callable[[WorkerContext, Any], Any],
                 run: Callable[[WorkerContext, list[Any]], list[bytes]], expensive: bool = False) -> None:
    JOBS[name] = JobKind(prepare, run, expensive)


def job_kind(name: str) -> JobKind:
    try:
        return JOBS[name]
    except KeyError:
        raise JobError(500, f"no job kind {name!r}") from None


def json_bytes(content: Any) -> bytes:
    """JSON as FastAPI's JSONResponse writes it; NaN or infinity is an error, never invalid JSON."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


#### predict: ("pixels", JSON body, echo) or ("upload", image bytes, echo) -> label, probabilities, and with echo
#### (?preprocessed=true) the 28x28 the model saw: 784 numbers that were most of the answer's bytes and JSON time


def prepare_image(ctx: WorkerContext, payload: tuple[str, bytes]) -> tuple[np.ndarray, float | None]:
    """A request's payload -> the (28, 28) uint8 image the model will see, and the ink's extent on the canvas (None
    for an uploaded file: its scale is unknown, a small digit on a large page is still a digit)."""
    kind, data = payload
    if kind == "pixels":
        return prepare_pixels(data)
    if kind == "upload":
        return prepare_upload(data, ctx.limits)
    raise JobError(500, f"unknown payload {kind!r}")


def prepare_pixels(body: bytes) -> tuple[np.ndarray, float]:
    """JSON {"pixels": 28x28} -> MNIST pixels, or a 422 naming the first problem (as FastAPI's validation would)
    and listing at most MAX_ERRORS of them. A body of another shape is refused by check_shape before pydantic sees
    it: pydantic reports every stray key and every bad row (a 1.9 MB body of 200,000 keys cost 2 s of CPU and a
    16 MB answer), json.loads reads it in milliseconds."""
    check_shape(body)
    try:
        pixels = np.asarray(PixelsRequest.model_validate_json(body).pixels, dtype=np.float32)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False, include_context=False, include_input=False),
                               e.error_count()) from None
    try:
        return canvas_to_mnist_measured(pixels)
    except ImageError as e:
        raise JobError(422, str(e)) from None


def check_shape(body: bytes) -> None:
    """A 422 for JSON that is not one object of one key, "pixels", holding a list of at most 28 lists of at most
    28 items: the shapes that make pydantic's errors many. Anything it cannot parse (or that nests too deep for
    json.loads) is left to pydantic, which stops at the first syntax error."""
    try:
        content = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(content, dict):
        return  # one error: "Input should be an object"
    errors = [{"loc": [key], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
              for key in itertools.islice((k for k in content if k != "pixels"), MAX_ERRORS)]
    count = len(content) - ("pixels" in content)
    if errors and "pixels" not in content:  # named first, as pydantic's would be (describe_errors)
        errors, count = [{"loc": ["pixels"], "msg": "Field required", "type": "missing"}, *errors], count + 1
    pixels = content.get("pixels")
    if not errors and isinstance(pixels, list):
        rows = [(i, len(row)) for i, row in enumerate(pixels) if isinstance(row, list) and len(row) > 28]
        if len(pixels) > 28 or rows:
            errors = [{"loc": ["pixels", *([i] if rows else [])], "msg": "List should have at most 28 items",
                       "type": "too_long"} for i, _ in (rows or [(None, 0)])[:MAX_ERRORS]]
            count = max(len(rows), 1)
    if errors:
        raise validation_error(errors, count)


def validation_error(errors: list[dict], count: int) -> JobError:
    """The 422 of a body that failed validation: one line naming the first error, the first few, their count."""
    errors = plain_errors(errors)
    return JobError(422, describe_errors(errors, count), error_body(errors, count))


def prepare_upload(data: bytes, limits: Limits) -> tuple[np.ndarray, None]:
    """Image bytes -> MNIST pixels: the format allowlist and size from the header (415, 413), the pixel budget
    (413), a reduced-size decode (400 if unreadable), then preprocessing (422: no digit)."""
    from fastapi import HTTPException  # the header check answers as the app would

    from digitlab.serve.limits import check_image_header

    try:
        check_image_header(data, limits.max_image_side)
    except HTTPException as e:
        raise JobError(e.status_code, str(e.detail)) from None
    try:
        image = decode_upload(data, limits.max_image_side, limits.max_image_pixels)
    except PixelBudgetError as e:
        raise JobError(413, str(e)) from None
    except ImageError as e:
        raise JobError(400, f"the uploaded image is unreadable: {e}") from None
    try:
        return to_mnist(image, max_side=limits.max_image_side), None
    except ImageError as e:
        raise JobError(422, str(e)) from None
    except MemoryError:
        raise JobError(413, "the uploaded image needs more memory than a worker may use") from None


def prepare_predict(ctx: WorkerContext, payload: tuple[str, bytes, bool]) -> tuple[np.ndarray, float | None, bool]:
    """The 28x28 image, its ink's extent, and whether its answer echoes it."""
    kind, data, echo = payload
    return *prepare_image(ctx, (kind, data)), echo


def run_predict(ctx: WorkerContext, items: list[tuple[np.ndarray, float | None, bool]]) -> list[bytes]:
    """One model call for the batch; each image's answer as the JSON body of POST /api/predict: label null and a
    reason where the model's abstention refuses it (the probabilities stay)."""
    images = np.stack([image for image, _, _ in items])
    judged = ctx.predictor.judged(images, ctx.predictor.logits(images), [extent for _, extent, _ in items])
    out = []
    for (image, _, echo), pred in zip(items, judged):
        answer = {"label": pred.label, "class_name": pred.class_name, "probability": pred.probability,
                  "probabilities": pred.probabilities, "reason": pred.reason}
        if echo:
            answer["preprocessed"] = image.tolist()
        out.append(json_bytes({**answer, "model": ctx.model_info}))
    return out


register_job("predict", prepare_predict, run_predict)


#### explain: ((predict's payload), method, target, layers) -> the prediction and heat maps (digitlab.attribution)


def prepare_explain(ctx: WorkerContext, payload: tuple) -> tuple:
    image, method, target, layers = payload
    return prepare_image(ctx, image)[0], method, target, layers


def run_explain(ctx: WorkerContext, items: list[tuple]) -> list[bytes]:
    """Each item's explanation as the JSON body of POST /api/explain. The PyTorch model it needs is made on the
    worker's first explain job (the explain extra stays optional for serving); a refusal answers that item only."""
    return [_explain_one(ctx, *item) for item in items]


def _explain_one(ctx: WorkerContext, image: np.ndarray, method: str, target: int | None, layers: bool) -> bytes:
    from digitlab.extras import MissingExtraError

    try:
        from digitlab.attribution import ExplainError, Explainer, explain_image
    except MissingExtraError as e:
        return _refusal(501, str(e))
    try:
        if "explainer" not in ctx.made:
            ctx.made["explainer"] = Explainer.for_predictor(ctx.predictor)
        result = explain_image(ctx.made["explainer"], image, method, target, layers)
    except MissingExtraError as e:
        return _refusal(501, str(e))
    except ExplainError as e:
        return _refusal(422, str(e))
    return json_bytes({**calibrated(ctx, image, result), "preprocessed": image.tolist(), "model": ctx.model_info})


def calibrated(ctx: WorkerContext, image: np.ndarray, result: dict) -> dict:
    """An explanation's probabilities replaced by the predictor's, which apply the model's temperature: the same
    numbers /api/predict answers for the same image (temperature scaling never changes which class is first)."""
    probs = ctx.predictor.probabilities(image[None])[0]
    maps = [{**m, "probability": round(float(probs[m["class"]]), 6)} for m in result["maps"]]
    return {**result, "probability": round(float(probs[result["label"]]), 6),
            "probabilities": [round(float(p), 6) for p in probs], "maps": maps}


def _refusal(status: int, detail: str) -> JobError:
    """A per-item refusal, returned in place of an answer: run functions answer each item of a batch."""
    return JobError(status, detail)


register_job("explain", prepare_explain, run_explain, expensive=True)
