"""What the server accepts: size and time limits, and the checks that enforce them before any work is done.

    Limits()                       # 2 MB bodies, 4096x4096 images, 10 s to send a body, 10 s to answer
    BodySizeLimit(app, 2_000_000)  # ASGI middleware: 413 on a large Content-Length, or while counting bytes
    check_image_header(data, 4096) # 415 if not an image, 413 if too large, from the header alone

Every refusal is an HTTPException whose detail says what was wrong, so the client gets a 4xx JSON error.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from digitlab.formats import FORMATS_TEXT, IMAGE_FORMATS

UPLOAD_FORMATS = IMAGE_FORMATS  # the CLI's and the Python API's list too (digitlab.formats): one list, one decoder set


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 2 * 1024 * 1024  # whole request body; larger is refused with 413 before it is read
    max_image_side: int = 4096  # width or height of an uploaded image; larger is 413 (before decoding)
    max_image_pixels: int = 4096 * 4096  # width x height of an uploaded image; more is 413 (before decoding)
    read_timeout_s: float = 10.0  # time a client has to send its request body; slower is 408
    inference_timeout_s: float = 10.0  # queueing + decoding + preprocessing + model per request; slower is 503
    threads: int = 2  # in-process serving (create_app(predictor)): requests run at once in threads


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so that FastAPI's handlers pass it through as 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit:,}-byte limit")


class BodySizeLimit:
    """ASGI middleware capping request bodies: it checks Content-Length up front and counts the bytes as they
    arrive, which also covers chunked bodies that send no Content-Length."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_error(send, 400, "Content-Length must be a whole number of bytes")
            if int(length) > self.max_bytes:
                return await send_error(send, 413, BodyTooLarge(self.max_bytes).detail)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as e:  # only reached when no handler inside turned it into a response
            if started:
                raise
            await send_error(send, e.status_code, e.detail)


async def send_error(send, status: int, detail: str) -> None:
    """A JSON error response sent straight through ASGI (for middleware, which runs outside FastAPI's handlers)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def check_image_header(data: bytes, max_side: int) -> None:
    """Refuse an upload from its header alone: empty (400), not one of UPLOAD_FORMATS (415), too large (413)."""
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as im:  # the header only; pixels come later
                width, height = im.size
    except UnidentifiedImageError:
        detail = f"the uploaded file is not an image in a format digitlab reads ({FORMATS_TEXT})"
        raise HTTPException(415, detail) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, "the uploaded image has too many pixels to decode safely") from None
    except Exception as e:  # a header Pillow recognises but cannot parse
        raise HTTPException(400, f"the uploaded image is unreadable ({type(e).__name__})") from None
    if width > max_side or height > max_side:
        raise HTTPException(413, f"the uploaded image is {width}x{height} pixels; the limit is {max_side}x{max_side}")
