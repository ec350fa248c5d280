"""Who may talk to the server, and the headers every page carries: ASGI middleware, added by add_http_policy().

    policy = HttpPolicy(allowed_hosts=default_allowed_hosts("127.0.0.1"), cors_origins=("https://x.org",))
    add_http_policy(app, policy, metrics, page_headers=PAGE_HEADERS)

From the outside in, each refusing before the body is read, as JSON {"detail": ...} with `connection: close`:
- TrustedHosts: a Host header not in `allowed_hosts` is 400. A page on evil.example whose name is re-pointed at
  127.0.0.1 (DNS rebinding) reaches the server as a same-origin request, but with Host: evil.example.
- CrossOriginGuard: a POST, PUT, PATCH or DELETE whose Origin is neither this server's own nor a configured CORS
  origin, or that the browser marks Sec-Fetch-Site: cross-site, is 403. Browsers send multipart and text/plain
  POSTs to any origin without a preflight; CORS only hides the answer, the server would still do the work.
- CORSMiddleware (Starlette's), only when `cors_origins` are given: those origins may call the API from a page.
- InFlightLimit: past `max_in_flight` requests being handled at once, 503. It counts requests, not connections
  (idle sockets are the connection layer's business, serve/http_connection.py); GET/HEAD of /healthz and
  /metrics are never refused, so probes see a busy server as alive.
- CloseAfterRefusal: a 408 or 413 answer closes the connection (`connection: close`): the rest of its body
  may never come, or may be large, and reading it only to reuse the connection serves the sender alone.
- PageHeaders: the page headers (CSP, nosniff, no referrer) on every text/html response, static files and
  /docs included, so no HTML route can be added without them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.middleware.cors import CORSMiddleware

from digitlab.errors import ConfigError
from digitlab.serve.limits import send_error

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PROBES = frozenset({"/healthz", "/metrics"})
ORIGIN_RE = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


@dataclass(frozen=True)
class HttpPolicy:
    allowed_hosts: tuple[str, ...] | None = None  # None: any Host (the server embedding the app decides); "*" too
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API; none: no CORS headers at all
    max_in_flight: int = 128  # requests handled at once (bodies in memory: at most this many x the body limit)


def default_allowed_hosts(bound_host: str) -> tuple[str, ...]:
    """The bound address and this machine's loopback names; a wildcard bind adds the machine's own name (other
    names clients use must be given with --allowed-host)."""
    hosts = list(LOCAL_HOSTS)
    if bound_host in ("0.0.0.0", "::", ""):
        import socket

        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(f"[{bound_host}]" if ":" in bound_host else bound_host)
    return tuple(dict.fromkeys(h.lower() for h in hosts if h))


def check_origin(origin: str) -> str:
    """A --cors-origin value: scheme://host[:port], nothing after it (as browsers send Origin), or '*'."""
    origin = origin.strip().rstrip("/")
    if origin != "*" and not ORIGIN_RE.fullmatch(origin):
        raise ConfigError(f"--cors-origin must look like https://example.org or http://localhost:3000, got {origin!r}")
    return origin.lower()


def check_host(host: str) -> str:
    """An --allowed-host value: a name or address without scheme, port or path ('*': any)."""
    host = host.strip().lower()
    if host != "*" and (not host or "/" in host or re.search(r"[^a-z0-9.\-\[\]:*]", host)
                        or (":" in host and not host.startswith("["))):
        raise ConfigError(f"--allowed-host takes a host name or address (IPv6 in brackets, no port), got {host!r}")
    return host


def host_of(value: str) -> str:
    """A Host header's name without its port: 'a.org:80' -> 'a.org', '[::1]:8000' -> '[::1]'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if ":" in value else value


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def refuse(scope: dict, send, status: int, reason: str, detail: str) -> None:
    scope.setdefault("state", {})["reject_reason"] = reason  # for the metrics
    await send_error(send, status, detail)


class TrustedHosts:
    """400 for a Host header not in `hosts` (a name matches itself and, given as '*.a.org', its subdomains).
    Starlette's TrustedHostMiddleware answers plain text and cuts an IPv6 Host at its first colon."""

    def __init__(self, app, hosts: tuple[str, ...]):
        self.app = app
        self.exact = {h for h in hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))
        self.any = "*" in hosts

    def allowed(self, host: str) -> bool:
        return self.any or host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            return await self.app(scope, receive, send)
        host = host_of(header(scope, b"host") or "")
        if not self.allowed(host):
            shown = host[:80] or "none"
            return await refuse(scope, send, 400, "bad_host",
                                f"this server does not answer for Host {shown!r}; start it with --allowed-host "
                                f"{shown if host else 'NAME'} to allow it")
        await self.app(scope, receive, send)


class CrossOriginGuard:
    """403 for a state-changing request sent by a page of another origin, before its body is read."""

    def __init__(self, app, cors_origins: tuple[str, ...]):
        self.app = app
        self.cors_origins = frozenset(cors_origins)

    def foreign(self, scope: dict) -> bool:
        origin = header(scope, b"origin")
        if origin is not None:
            origin = origin.strip().lower()
            if "*" in self.cors_origins or origin in self.cors_origins:
                return False
            own = f"{scope.get('scheme', 'http')}://{(header(scope, b'host') or '').strip().lower()}"
            return origin != own  # "null" (sandboxed frames, file: pages) included
        return (header(scope, b"sec-fetch-site") or "").strip().lower() == "cross-site" and "*" not in self.cors_origins

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS and self.foreign(scope):
            return await refuse(scope, send, 403, "cross_origin",
                                "cross-origin requests are refused; start the server with --cors-origin ORIGIN "
                                "to let that site's pages call the API")
        await self.app(scope, receive, send)


class InFlightLimit:
    """503 beyond `limit` requests being handled at once; probes of /healthz and /metrics always pass."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["path"] in PROBES and scope["method"] in ("GET", "HEAD")):
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await refuse(scope, send, 503, "in_flight_limit",
                                f"the server is handling {self.limit} requests already; try again shortly")
        self.active += 1  # one event loop: no await between the check and the count
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class PageHeaders:
    """Adds `headers` to every text/html response that does not set them itself."""

    def __init__(self, app, headers: dict[str, str]):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                if any(k == b"content-type" and v.lower().startswith(b"text/html")
                       for k, v in message.get("headers", [])):
                    extra = [(k, v) for k, v in self.headers if k not in present]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class CloseAfterRefusal:
    """Adds `connection: close` to 408 and 413 answers, so the server hangs up instead of reading on."""

    STATUSES = frozenset({408, 413})

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing(message):
            if message["type"] == "http.response.start" and message["status"] in self.STATUSES:
                headers = message.get("headers", [])
                if not any(k.lower() == b"connection" for k, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


def add_http_policy(app: Any, policy: HttpPolicy, page_headers: dict[str, str]) -> None:
    """Register the middleware above; Starlette runs the last added outermost, so they are added inside out."""
    app.add_middleware(CloseAfterRefusal)
    app.add_middleware(PageHeaders, headers=page_headers)
    app.add_middleware(InFlightLimit, limit=policy.max_in_flight)
    if policy.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(policy.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"], max_age=600)
    app.add_middleware(CrossOriginGuard, cors_origins=policy.cors_origins)
    if policy.allowed_hosts is not None:
        app.add_middleware(TrustedHosts, hosts=policy.allowed_hosts)
