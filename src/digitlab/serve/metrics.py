"""GET /metrics: the server's counters in the Prometheus text format, from prometheus_client.

    metrics = Metrics(app)            # its own registry (several apps in one process do not collide)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    metrics.reject("queue_full")      # a refusal the status alone does not explain (or request.state.reject_reason)

Series (all prefixed digitlab_):
    http_requests_total{route,method,status}    answered requests; route is the route's template, not the raw path
    http_request_duration_seconds{route}        latency histogram, from the request's headers to its last byte
    rejections_total{reason}                    refusals: body_timeout (408), too_large (413), unsupported_type
                                                (415), unavailable (503), bad_host, cross_origin, in_flight_limit,
                                                and connections the server closed: header_timeout, header_too_large,
                                                connection_cap; worker pools add their own (queue_full, deadline)
    http_requests_in_flight                     requests being handled now
    queue_depth, inference_in_flight            read at scrape time from app.state.queue_depth() and
                                                app.state.inference_in_flight(), callables a worker pool replaces
    workers_ready                               workers able to take a job now (0: /healthz answers 503)
    worker_restarts_total, worker_crashes_total workers started to replace another; workers that died on their own
    worker_load_failures_total                  workers that could not load the model (or found another file)
    worker_unresponsive_total                   workers killed for holding jobs a whole deadline without a word
"""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# the default reason of a refusal, from its status, where the code that refused did not name one
REASON_BY_STATUS = {408: "body_timeout", 413: "too_large", 415: "unsupported_type", 503: "unavailable"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The registry and series of one app. The gauges call app.state.<name>() at each scrape, so whatever sets
    them later (a worker pool) is read without re-registering anything."""

    def __init__(self, app: Any):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("digitlab_http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("digitlab_http_request_duration_seconds",
                                 "Time from a request's headers to its last response byte", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rejections = Counter("digitlab_rejections", "Requests refused and connections closed, by reason",
                                  ["reason"], registry=self.registry)
        self.in_flight = Gauge("digitlab_http_requests_in_flight", "HTTP requests being handled now",
                               registry=self.registry)
        for name, doc in (("queue_depth", "Predictions waiting for a worker"),
                          ("inference_in_flight", "Predictions being computed by workers now")):
            if not hasattr(app.state, name):
                setattr(app.state, name, lambda: 0)  # until a worker pool sets its own
            Gauge(f"digitlab_{name}", doc, registry=self.registry).set_function(state_reader(app, name))
        pool = getattr(app.state, "pool", None)
        if pool is not None:
            self.registry.register(PoolCollector(pool))

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class PoolCollector:
    """The worker pool's readiness and its workers' lives, read from the pool at each scrape."""

    COUNTERS = (("restarts", "worker_restarts", "Workers started to replace one that was killed or died"),
                ("crashes", "worker_crashes", "Workers that died on their own"),
                ("load_failures", "worker_load_failures", "Workers that could not load the model, or found another "
                                                          "file than the server started with"),
                ("unresponsive", "worker_unresponsive", "Workers killed for holding jobs a whole deadline without "
                                                        "answering"))

    def __init__(self, pool: Any):
        self.pool = pool

    def describe(self) -> list:
        return []  # described by collect() at each scrape: nothing is read from the pool at registration

    def collect(self):
        yield GaugeMetricFamily("digitlab_workers_ready", "Workers able to take a job now",
                                value=self.pool.ready_workers())
        for field, name, doc in self.COUNTERS:
            yield CounterMetricFamily(f"digitlab_{name}", doc, value=getattr(self.pool.stats, field))


def state_reader(app: Any, name: str) -> Callable[[], float]:
    def read() -> float:
        return float(getattr(app.state, name)())

    return read


def route_label(scope: dict, refused: bool) -> str:
    """The matched route's template (/api/predict), or the mount (/static), so that raw paths cannot grow the
    series; "(refused)" for a request refused before routing, "(unmatched)" for one no route took."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")):]  # Starlette's Mount sets root_path
    return mount or ("(refused)" if refused else "(unmatched)")


class MetricsMiddleware:
    """Counts every HTTP request by route and status, times it, and counts refusals by reason. Outermost among
    the app's middleware, so that the refusals of the others are counted too."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # if the app raises before answering, the server answers 500
        start = time.perf_counter()

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            named = scope.get("state", {}).get("reject_reason")
            route = route_label(scope, refused=bool(named))
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
            reason = named or REASON_BY_STATUS.get(status)
            if reason:
                self.metrics.reject(reason)
