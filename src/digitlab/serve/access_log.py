"""What the access log shows of a request's URL: uvicorn writes it whole, so a 63 KB URL made a 63 KB log line,
and whatever characters the URL carried went to the operator's terminal and log files as they were.

    install_url_filter()   # once uvicorn has configured its loggers (make_server does it)

The filter rewrites the URL argument of each uvicorn.access record: control characters (C0, DEL, C1) become
\\xNN escapes, and a URL longer than MAX_URL_CHARS is cut there and ends in "...". httptools refuses raw control
characters in a URL today; the escape keeps the log one line per request whatever parser or leniency comes.
"""
from __future__ import annotations

import logging
import re

MAX_URL_CHARS = 200
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ACCESS_LOGGER = "uvicorn.access"
URL_ARG = 2  # uvicorn's access record: (client address, method, path and query, HTTP version, status)


def loggable_url(url: str) -> str:
    """`url` cut to MAX_URL_CHARS (then "..."), control characters escaped (after the cut, so an escape is never
    split)."""
    shown = url[:MAX_URL_CHARS] + "..." if len(url) > MAX_URL_CHARS else url
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", shown)


class UrlFilter(logging.Filter):
    """Shortens and escapes the URL of uvicorn's access records; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > URL_ARG and isinstance(args[URL_ARG], str):
            record.args = (*args[:URL_ARG], loggable_url(args[URL_ARG]), *args[URL_ARG + 1:])
        return True


def install_url_filter() -> None:
    """Add UrlFilter to uvicorn's access logger, once however many servers this process makes."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, UrlFilter) for f in logger.filters):
        logger.addFilter(UrlFilter())
