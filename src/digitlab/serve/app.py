"""The REST API and the drawing page: `create_app(predictor)` returns a FastAPI app.

    GET  /             the drawing page (static/index.html, with style.css and app.js under /static)
    POST /api/predict  an image file (multipart field `file`), or JSON {"pixels": 28 rows of 28 numbers 0..255,
                       bright ink on black}; answers label and ten probabilities (query: preprocessed=true adds
                       the 28x28 image the model saw, as the drawing page asks for its preview)
    POST /api/explain  the same inputs; answers the prediction and heat maps of which pixels made it (query:
                       method=ig|saliency|occlusion|gradcam, target=CLASS, layers=true for each layer's output)
    GET  /api/model    what is loaded
    GET  /healthz      {"status": "ok"}, or 503 {"status": "unavailable", "detail": why} while no worker can
                       answer (HEAD / and HEAD /healthz too, for probes)
    GET  /docs         OpenAPI docs: Swagger UI from fastapi-offline's copy, served here (no CDN, works offline)
    GET  /metrics      counters in the Prometheus text format (serve/metrics.py; not in the OpenAPI schema)

The routes hold no ML code and parse nothing but the multipart envelope: a request's raw bytes (the JSON body, or
the uploaded file) go to a pool (serve/pool.py) as a "predict" job (serve/jobs.py), where JSON validation, the
image header and pixel budget, decoding, digitlab.preprocess and the model run, and the finished JSON answer
comes back as bytes. `digitlab serve` uses a ProcessPool (worker processes, a bounded queue, deadlines that kill
the worker); create_app(predictor) alone uses an InlinePool (threads in this process) for tests and embedding.
Every refusal is a 4xx JSON error {"detail": "..."}; a full queue or a passed deadline is a 503.
Host checks, cross-origin refusals, CORS, the in-flight limit and the page headers are middleware
(serve/http_policy.py), registered here with the metrics (serve/metrics.py).
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import fastapi_offline  # the web extra's copy of Swagger UI; imported here so a missing one names the extra
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from digitlab.errors import DigitlabError, ModelError
from digitlab.serve.http_policy import add_http_policy
from digitlab.serve.jobs import JobError
from digitlab.serve.limits import BodySizeLimit, Limits
from digitlab.serve.metrics import Metrics, MetricsMiddleware
from digitlab.serve.inline_pool import InlinePool
from digitlab.serve.pool_api import WorkerPool
from digitlab.serve.pool_settings import PoolBusy, PoolTimeout, PoolUnavailable
from digitlab.serve.settings import ServeSettings
from digitlab.serve.schema import PixelsRequest, describe_errors, error_body, plain_errors

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {  # the page loads nothing from elsewhere, and says so
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")  # what static/docs.html loads


class PredictResponse(BaseModel):
    label: int | None = Field(description="index of the most probable class; null when the drawing is not read as "
                                          "a digit (`reason` says why)")
    class_name: str | None
    reason: str | None = Field(None, description="why `label` is null: \"not a digit\" or \"too small: draw it "
                                                 "larger\"")
    probability: float = Field(description="the top probability (of `label` when there is one)")
    probabilities: list[float] = Field(description="one probability per class, summing to 1")
    preprocessed: list[list[int]] | None = Field(None, description="the 28x28 uint8 image the model saw, with "
                                                                   "preprocessed=true")
    model: dict[str, Any] = Field(description="what is loaded, as GET /api/model")


class ClassMap(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: int = Field(alias="class", description="the class this map explains")
    class_name: str
    probability: float
    attribution: list[list[float]] = Field(description="28x28 attributions over `preprocessed`: positive pixels "
                                                       "speak for the class (saliency and Grad-CAM are >= 0)")


class LayerMaps(BaseModel):
    name: str = Field(description="the module's name in the model")
    kind: str = Field(description="conv, pool, activation, recurrent or linear")
    type: str
    shape: list[int] = Field(description="the layer's output shape for one image")
    channels_shown: int
    low: float = Field(description="the activation that 0 stands for in `maps`")
    high: float = Field(description="the activation that 255 stands for")
    maps: list[list[list[int]]] = Field(description="up to 8 channels, each at most 14x14, as 0..255")


class ExplainResponse(BaseModel):
    label: int = Field(description="index of the most probable class")
    class_name: str
    probability: float
    probabilities: list[float]
    method: str
    method_name: str
    maps: list[ClassMap] = Field(description="the predicted class and the runner-up, or the requested target")
    preprocessed: list[list[int]] = Field(description="the 28x28 uint8 image the model saw")
    layers: list[LayerMaps] | None = Field(None, description="each layer's output, with layers=true")
    model: dict[str, Any]


Method = Annotated[Literal["ig", "saliency", "occlusion", "gradcam"], Query(
    description="Integrated Gradients, saliency, occlusion, or Grad-CAM (models with convolutions)")]
Target = Annotated[int | None, Query(ge=0, description="explain this class, from 0 to the number of classes - 1 "
                                                       "(default: the predicted class and the runner-up)")]
Layers = Annotated[bool, Query(description="add each layer's activations, downsampled and quantised")]
Echo = Annotated[bool, Query(description="add `preprocessed`, the 28x28 image the model saw (784 numbers, "
                                         "most of the answer: off unless asked for)")]

PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "an image of one digit"}}}},
    "application/json": {"schema": PixelsRequest.model_json_schema()},
}}}


def create_app(predictor=None, settings: ServeSettings | None = None, *, pool: WorkerPool | None = None) -> FastAPI:
    """The web app around a pool that runs the jobs (serve/pool.py or inline_pool.py), or around one
    loaded predictor, run in this process's threads (an InlinePool). The app attaches the pool to its event loop
    at startup and closes it at shutdown. It reads settings.limits and settings.http (which Host headers and
    origins it answers; None: any Host)."""
    settings = settings or ServeSettings()
    limits, policy = settings.limits, settings.http
    if pool is None:
        if predictor is None:
            raise TypeError("create_app needs a predictor or a pool")
        pool = InlinePool(predictor, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        pool.attach(asyncio.get_running_loop())
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(title="digitlab", summary="Handwritten-digit classifier: draw a digit or upload an image.",
                  version=_version(), docs_url=None, redoc_url=None,  # FastAPI's /docs loads Swagger UI from a CDN
                  lifespan=lifespan)
    app.state.pool = pool
    app.state.queue_depth, app.state.inference_in_flight = pool.queue_depth, pool.in_flight  # for /metrics
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    add_http_policy(app, policy, PAGE_HEADERS)
    metrics = app.state.metrics = Metrics(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees the refusals of the others
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_docs(app)
    page = (STATIC / "index.html").read_text()

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/healthz", responses={503: {"description": "no worker can answer now; `detail` says why"}})
    async def healthz() -> JSONResponse:  # async: on the event loop, never queued behind a busy thread pool
        """Readiness: 200 {"status": "ok"} while a worker can answer, else 503 with the reason."""
        return health_response(pool)

    @app.head("/healthz", include_in_schema=False)  # for probes: GET's headers; the server drops the body
    async def healthz_head() -> JSONResponse:
        return health_response(pool)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        content, content_type = metrics.exposition()
        return Response(content, headers={"content-type": content_type})

    @app.get("/api/model")
    async def model() -> dict:
        """The loaded model: name, builder options, normalisation, dataset, class names, test accuracy."""
        return pool.model_info

    @app.post("/api/predict", response_model=PredictResponse, response_model_exclude_none=True,
              openapi_extra=PREDICT_BODY, responses={
        400: {"description": "empty or unreadable file"}, 408: {"description": "body sent too slowly"},
        413: {"description": "body or image too large"}, 415: {"description": "not an image, or wrong body type"},
        422: {"description": "pixels of the wrong shape or range, or no digit"},
        503: {"description": "server busy (queue full), or the request passed its deadline"}})
    async def predict(request: Request, preprocessed: Echo = False) -> Response:
        """Predict one digit: an uploaded image (multipart field `file`) or 28x28 canvas pixels as JSON."""
        kind, data = await read_image_payload(request, limits)
        return Response(await pool.submit("predict", (kind, data, preprocessed)), media_type="application/json")

    add_explain_route(app, pool, limits)
    return app


def health_response(pool: WorkerPool) -> JSONResponse:
    health = pool.health()
    if health.ok:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "detail": health.reason}, status_code=503)


def add_explain_route(app: FastAPI, pool: WorkerPool, limits: Limits) -> None:
    """POST /api/explain: /api/predict's inputs and limits, run through the same pool as an "explain" job
    (serve/jobs.py: digitlab.attribution.explain_image in the worker, under the same queue and deadline)."""

    @app.post("/api/explain", response_model=ExplainResponse, response_model_exclude_none=True,
              openapi_extra=PREDICT_BODY, responses={
                  400: {"description": "empty or unreadable file"}, 408: {"description": "body sent too slowly"},
                  413: {"description": "body or image too large"},
                  415: {"description": "not an image, or wrong body type"},
                  422: {"description": "pixels of the wrong shape or range, no digit, a bad method or target, "
                                       "or gradcam on a model whose convolutions it cannot use"},
                  501: {"description": "the explain extra is not installed"},
                  503: {"description": "server busy, or took too long"}})
    async def explain(request: Request, method: Method = "ig", target: Target = None, layers: Layers = False):
        """Why the model says what it says: the prediction and 28x28 attribution maps for one digit, sent as
        for /api/predict (multipart field `file`, or JSON pixels)."""
        image = await read_image_payload(request, limits)
        answer = await pool.submit("explain", (image, method, target, layers))
        return Response(answer, media_type="application/json")


def add_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI, its files served from /docs-assets, under the same CSP as the drawing page."""
    assets = Path(fastapi_offline.__file__).parent / "static"
    missing = [n for n in DOCS_ASSETS if not (assets / n).is_file()]
    if missing:
        raise DigitlabError(f"fastapi-offline at {assets} lacks {', '.join(missing)}; reinstall digitlab[web]")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    page = (STATIC / "docs.html").read_text()

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)


async def read_image_payload(request: Request, limits: Limits) -> tuple[str, bytes]:
    """The image in what /api/predict and /api/explain send the pool: ("pixels", the JSON body) or ("upload", the
    file's bytes). Only the Content-Type and the multipart envelope are looked at here; the worker parses the rest."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json"):
        raise HTTPException(415, "send an image as multipart/form-data (field 'file') or pixels as "
                                 f"application/json, not {kind[:80] or 'a body without Content-Type'}")
    body = await read_body(request, limits.read_timeout_s)
    return ("pixels", body) if kind == "application/json" else ("upload", await read_upload(request))


async def read_body(request: Request, timeout_s: float) -> bytes:
    """The whole body (BodySizeLimit caps its size), within `timeout_s`."""
    try:
        with anyio.fail_after(timeout_s):
            return await request.body()
    except TimeoutError:
        raise HTTPException(408, f"the request body took longer than {timeout_s:g} s to arrive") from None
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None


async def read_upload(request: Request) -> bytes:
    """The bytes of the multipart field `file` (the body is already read and size-checked)."""
    form = await request.form(max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        if upload is None:
            raise HTTPException(400, "the multipart body has no 'file' field; send the image as file=@digit.png")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the 'file' field must be an uploaded file, not a text value")
        return await upload.read()
    finally:
        await form.close()


def add_error_handlers(app: FastAPI) -> None:
    """One JSON shape for every error, {"detail": "..."}, and never a traceback in a response."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors, count = plain_errors(exc.errors()), len(exc.errors())
        return JSONResponse({"detail": describe_errors(errors, count), **error_body(errors, count)}, status_code=422)

    @app.exception_handler(JobError)
    async def refused(request: Request, exc: JobError) -> JSONResponse:  # from the pool: a 4xx, or 503
        reason = {PoolBusy: "queue_full", PoolTimeout: "deadline", PoolUnavailable: "no_worker"}.get(type(exc))
        if reason:
            request.state.reject_reason = reason  # what /metrics counts the refusal as
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(DigitlabError)
    async def user_error(_request: Request, exc: DigitlabError) -> JSONResponse:
        if isinstance(exc, ModelError):  # the model misbehaved (NaN, wrong shape, past its deadline): ours, not theirs
            return JSONResponse({"detail": str(exc)}, status_code=500)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def crash(_request: Request, _exc: Exception) -> JSONResponse:  # the server still logs the traceback
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def _version() -> str:
    from digitlab import __version__

    return __version__
