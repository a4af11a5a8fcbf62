"""Prometheus metrics of the API process, in a registry per app so that several apps (tests) never collide.

Counts read from PostgreSQL (exchanges, flags, job runs) are taken at each
scrape. When the database cannot be read, those families are left out of that
scrape and `sentinel_metrics_database_up` is 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.engine import SessionFactory
from storage.errors import StorageError
from storage.exchanges import count_exchanges
from storage.history import count_flags_by_status, count_job_runs_by_status
from storage.models import FLAG_STATUSES

logger = logging.getLogger(__name__)

# Seconds; the per-user risk query aims at a p95 of 20 ms.
RISK_QUERY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "unmatched"


class ApiMetrics:
    """The registry of one app, its request counter and its risk-query histogram."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sentinel_api_requests",
            "HTTP API requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.risk_query_seconds = Histogram(
            "sentinel_risk_query_seconds",
            "Time to compute a risk answer, by query (user_risk, top_users).",
            ["query"],
            buckets=RISK_QUERY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(session_factory))

    @contextmanager
    def time_risk_query(self, query: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.risk_query_seconds.labels(query=query).observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class DatabaseCollector(Collector):
    """Gauges read from PostgreSQL at scrape time."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self._session_factory = session_factory

    def describe(self) -> Iterable[Metric]:
        # Describing would query the database when the collector is registered.
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("sentinel_metrics_database_up", "1 when this scrape could read PostgreSQL, else 0.")
        try:
            with self._session_factory() as session:
                exchanges = count_exchanges(session)
                flags = count_flags_by_status(session)
                job_runs = count_job_runs_by_status(session)
        except StorageError as exc:
            logger.warning("metrics scrape could not read PostgreSQL, so the database gauges are left out: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        stored = GaugeMetricFamily("sentinel_exchanges_stored", "Exchanges stored in PostgreSQL.")
        stored.add_metric([], exchanges)
        yield stored

        by_status = GaugeMetricFamily("sentinel_flags", "Flags by review status.", labels=["status"])
        for status in FLAG_STATUSES:
            by_status.add_metric([status], flags.get(status, 0))
        yield by_status

        runs = GaugeMetricFamily(
            "sentinel_job_runs", "Scheduled job runs recorded in job_runs, by job and status.", labels=["job", "status"]
        )
        for (job, status), count in sorted(job_runs.items()):
            runs.add_metric([job, status], count)
        yield runs


class RequestMetricsMiddleware:
    """Count every HTTP request by method, route template (not the raw path) and status code."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            # The router stores the matched route in the scope; the template keeps user ids out of the labels.
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            self.metrics.requests.labels(method=scope["method"], route=route, status=str(status)).inc()
