"""The JSON request body of POST /api/predict and how its validation errors read: pydantic only, no FastAPI, so a
serving worker process parses and checks pixels without the web framework (the event loop never parses them).
"""
from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Pixel = Annotated[float, Field(strict=True, ge=0, le=255, allow_inf_nan=False)]  # strict: "7" and true are refused
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]


class PixelsRequest(BaseModel):
    """A 28x28 grid, bright ink (255) on black (0), e.g. a drawing canvas scaled down to 28x28."""

    model_config = ConfigDict(extra="forbid")
    pixels: Annotated[list[Row], Field(min_length=28, max_length=28, description="28 rows of 28 numbers in 0..255")]


MAX_ERRORS = 10  # validation errors listed in a 422; the rest are counted (a body of 200,000 stray keys made 16 MB)


def plain_errors(errors: list[dict[str, Any]], limit: int = MAX_ERRORS) -> list[dict[str, Any]]:
    """pydantic's first `limit` error dicts reduced to loc (a list), msg and type: plain JSON, picklable across
    processes."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in itertools.islice(errors, limit)]


def error_body(errors: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """What a 422 answers besides its detail: the first errors (plain_errors) and, when there were more, how many
    there were in all."""
    return {"errors": errors, **({"error_count": count} if count > len(errors) else {})}


def describe_errors(errors: list[dict], count: int | None = None) -> str:
    """Pydantic errors as one line: 'pixels[0][3]: Input should be a finite number'; `count`: how many there were
    in all, when `errors` is the first few."""
    def where(loc) -> str:
        parts = [p for p in loc if p != "body"]
        return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))

    errors = sorted(errors, key=lambda e: e.get("type") != "missing")  # "pixels: Field required" says the most
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    total = max(count or 0, len(errors))
    more = f" (and {total - 1:,} more)" if total > 1 else ""
    return f"{where(first.get('loc', ())) or 'body'}: {first.get('msg', 'invalid')}{more}"
