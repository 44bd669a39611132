"""Prometheus metrics (``pip install 'actionbus[prometheus]'``).

``WorkerMetrics`` reads each registered worker's counters and handler timings when
Prometheus scrapes, so handling an action costs nothing extra; ``QueueMetrics`` reads the
queues from Redis at scrape time::

    from prometheus_client import REGISTRY, start_http_server
    from actionbus.metrics import QueueMetrics, WorkerMetrics

    REGISTRY.register(WorkerMetrics([worker], instance="web-1"))
    REGISTRY.register(QueueMetrics(worker))
    start_http_server(9100)

(``actionbus worker --metrics-port 9100`` does this.) Labels: ``service`` and a stable
``instance`` (default: the worker's ``consumer_name`` setting if set, else the host name),
never the random consumer name, so a restart continues the same series. A service that uses
priority lanes also gets the ``actionbus_lane_*`` families, labelled ``service`` and ``lane``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from actionbus.cli_errors import scrub
from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.clients.layers import PublishNext
from actionbus.clients.redis_manager import RedisManager
from actionbus.models.actions import DomainAction, DomainActionResponse
from actionbus.status import LaneStatus, ServiceStatus, service_status
from actionbus.workers.base_worker import BaseWorker
from actionbus.workers.stats import WorkerStats
from actionbus.workers.timings import Timings, timings_for

__all__ = ["ClientMetrics", "QueueMetrics", "WorkerMetrics"]

_HELP = {
    "handled": "Actions whose handler succeeded.",
    "failed_attempts": "Handler runs that raised (each retry counts).",
    "error_replies": "Pseudo-sync requests answered with an error response.",
    "dead_lettered": "Entries moved to the dead-letter stream.",
    "expired_skipped": "Requests skipped or left unanswered because their caller gave up.",
    "duplicates_skipped": "Redelivered actions an idempotent handler had already done.",
    "reclaimed": "Entries taken over from consumers that stopped.",
    "bad_input": "Entries refused as input (malformed, oversize, unknown type, bad data).",
    "large_entries_seen": "Entries large enough to lower the read count.",
    "dead_letters_trimmed": "Dead letters dropped by retention (length or age).",
}
_LABELS = ["service", "instance"]
logger = logging.getLogger("actionbus.metrics")


class WorkerMetrics(Collector):
    """Exposes the counters and handler timings of the given workers (``add()`` more)."""

    def __init__(self, workers: Iterable[BaseWorker] = (), instance: str | None = None) -> None:
        self._workers: list[BaseWorker] = list(workers)
        self.instance = instance

    def add(self, worker: BaseWorker) -> None:
        """Also expose ``worker``."""
        self._workers.append(worker)

    def _instance(self, worker: BaseWorker) -> str:
        return self.instance or worker.settings.consumer_name or socket.gethostname()

    def collect(self) -> Iterator[Metric]:
        """Counters, the in-flight gauge, outcomes and the duration histogram."""
        for field in fields(WorkerStats):
            name = "actions_handled" if field.name == "handled" else f"actions_{field.name}"
            family = CounterMetricFamily(f"actionbus_{name}", _HELP[field.name], labels=_LABELS)
            for worker in self._workers:
                family.add_metric([worker.service_name, self._instance(worker)],
                                  getattr(worker.stats, field.name))
            yield family
        in_flight = GaugeMetricFamily(
            "actionbus_actions_in_flight", "Actions being handled or waiting for a retry.",
            labels=_LABELS,
        )
        for worker in self._workers:
            in_flight.add_metric([worker.service_name, self._instance(worker)], worker.in_flight)
        yield in_flight
        yield from self._handler_metrics()

    def _handler_metrics(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "actionbus_handler_outcomes", "Handler runs by action type and outcome "
            "(handled, failed, expired, duplicate).",
            labels=["service", "action_type", "outcome"],
        )
        durations = HistogramMetricFamily(
            "actionbus_handler_duration_seconds", "Time in the handler pipeline per action.",
            labels=["service", "action_type"],
        )
        for service in sorted({w.service_name for w in self._workers}):
            timings = timings_for(service)
            for (action_type, outcome), count in sorted(timings.outcomes.items()):
                outcomes.add_metric([service, action_type, outcome], count)
            for action_type in sorted(timings.durations):
                buckets, total = timings.cumulative(action_type)
                durations.add_metric([service, action_type], buckets, total)
        yield outcomes
        yield durations


_GAUGES = {
    "waiting": ("actionbus_queue_waiting", "Entries not yet delivered to the group (lag)."),
    "pending": ("actionbus_queue_pending", "Entries delivered and not yet acknowledged."),
    "oldest_pending_age_ms": ("actionbus_queue_oldest_pending_age_seconds",
                              "Age of the oldest pending entry."),
    "dead_letters": ("actionbus_queue_dead_letters", "Entries in the dead-letter stream."),
    "delayed": ("actionbus_queue_delayed", "Actions waiting in the delayed set."),
}


_LANE_GAUGES = {
    "length": ("actionbus_lane_length", "Entries in the lane's stream."),
    "waiting": ("actionbus_lane_waiting", "Entries of the lane not yet delivered (lag)."),
    "pending": ("actionbus_lane_pending", "Lane entries delivered, not yet acknowledged."),
    "oldest_pending_age_ms": ("actionbus_lane_oldest_pending_age_seconds",
                              "Age of the lane's oldest pending entry."),
    "oldest_waiting_age_ms": ("actionbus_lane_oldest_waiting_age_seconds",
                              "How long the lane's first undelivered entry has waited."),
    "delayed": ("actionbus_lane_delayed", "Actions waiting in the lane's delayed set."),
}
_LANE_READ = ("actionbus_lane_read", "Entries the service's consumer group has read from the "
              "lane (XINFO GROUPS entries-read).")


def _lane_families(rows: list[ServiceStatus]) -> Iterator[Metric]:
    """The per-lane gauges and read counter (samples only for services that use lanes)."""
    lanes: list[tuple[str, LaneStatus]] = [(r.service, lane) for r in rows for lane in r.lanes]
    for key, (name, help_text) in _LANE_GAUGES.items():
        family = GaugeMetricFamily(name, help_text, labels=["service", "lane"])
        for service, lane in lanes:
            value = getattr(lane, key)
            if key.endswith("_age_ms"):
                value = 0 if value is None else value / 1000
            family.add_metric([service, lane.lane], float(value))
        yield family
    read = CounterMetricFamily(*_LANE_READ, labels=["service", "lane"])
    for service, lane in lanes:
        if lane.entries_read is not None:
            read.add_metric([service, lane.lane], lane.entries_read)
    yield read


class QueueMetrics(Collector):
    """Queue gauges of the workers' services (and of each lane of a service that uses
    priority lanes), read from Redis when Prometheus scrapes."""

    def __init__(self, *workers: BaseWorker) -> None:
        self._workers = list(workers)

    async def _read(self) -> list[ServiceStatus]:
        rows = []
        for worker in self._workers:
            async with RedisManager(worker.app_settings) as manager:
                rows.append(await service_status(
                    manager.get_client(), worker.queue_manager, worker.service_name))
        return rows

    def describe(self) -> Iterator[Metric]:
        """The families, without reading Redis (called when registering)."""
        for name, help_text in _GAUGES.values():
            yield GaugeMetricFamily(name, help_text, labels=["service"])
        yield from _lane_families([])

    def collect(self) -> Iterator[Metric]:
        """One gauge family per queue figure, one sample per service (and per lane)."""
        try:  # the scrape runs in the HTTP server's thread, without an event loop
            rows = asyncio.run(self._read())
        except Exception as exc:
            logger.warning("queue metrics not read from Redis: %s", scrub(str(exc)))
            rows = []
        for key, (name, help_text) in _GAUGES.items():
            family = GaugeMetricFamily(name, help_text, labels=["service"])
            for row in rows:
                value = getattr(row, key)
                if key == "oldest_pending_age_ms":
                    value = 0 if value is None else value / 1000
                family.add_metric([row.service], float(value))
            yield family
        yield from _lane_families(rows)


class ClientMetrics(Collector):
    """Client-side metrics: sends, pseudo-sync request latency and timeouts.

    ``metrics.instrument(client)`` adds a publish layer that counts every send (by outcome)
    and times the client's ``send_action_pseudo_sync`` calls::

        metrics = ClientMetrics()
        metrics.instrument(client)
        REGISTRY.register(metrics)
    """

    def __init__(self) -> None:
        self.sends: dict[tuple[str, str, str], int] = {}
        self.timeouts: dict[tuple[str, str], int] = {}
        self.requests: dict[str, Timings] = {}

    def instrument(self, client: BaseRedisClient) -> None:
        """Count ``client``'s sends and time its pseudo-sync requests."""
        service = client.service_name

        async def count(action: DomainAction, call_next: PublishNext) -> str:
            try:
                entry_id = await call_next(action)
            except Exception:
                self._sent(service, action.action_type, "error")
                raise
            self._sent(service, action.action_type, "ok")
            return entry_id

        client.use(count)
        request = client.send_action_pseudo_sync
        timings = self.requests.setdefault(service, Timings())

        async def timed(action: DomainAction, timeout: float = 30,
                        **options: Any) -> DomainActionResponse | None:
            started = time.perf_counter()
            response = await request(action, timeout, **options)  # priority= included
            outcome = "timeout" if response is None else (
                "success" if response.success else "error")
            timings.observe(action.action_type, outcome, time.perf_counter() - started)
            if response is None:
                key = (service, action.action_type)
                self.timeouts[key] = self.timeouts.get(key, 0) + 1
            return response

        setattr(client, "send_action_pseudo_sync", timed)  # noqa: B010 - an instance wrapper

    def _sent(self, service: str, action_type: str, outcome: str) -> None:
        key = (service, action_type, outcome)
        self.sends[key] = self.sends.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """Sends, timeouts and the request latency histogram."""
        sends = CounterMetricFamily("actionbus_client_sends", "Actions sent (ok or error).",
                                    labels=["service", "action_type", "outcome"])
        for (service, action_type, outcome), count in sorted(self.sends.items()):
            sends.add_metric([service, action_type, outcome], count)
        yield sends
        timeouts = CounterMetricFamily(
            "actionbus_client_request_timeouts", "Pseudo-sync requests with no reply in time.",
            labels=["service", "action_type"])
        for (service, action_type), count in sorted(self.timeouts.items()):
            timeouts.add_metric([service, action_type], count)
        yield timeouts
        latency = HistogramMetricFamily(
            "actionbus_client_request_duration_seconds",
            "Pseudo-sync request time, send to reply (or timeout).",
            labels=["service", "action_type"])
        for service, timings in sorted(self.requests.items()):
            for action_type in sorted(timings.durations):
                buckets, total = timings.cumulative(action_type)
                latency.add_metric([service, action_type], buckets, total)
        yield latency
