"""Prometheus metrics for workers (``pip install 'actionbus[prometheus]'``).

``WorkerMetrics`` is a collector: it reads each registered worker's counters when
Prometheus scrapes, so handling an action costs nothing extra::

    from prometheus_client import REGISTRY, start_http_server
    from actionbus.metrics import WorkerMetrics

    metrics = WorkerMetrics([worker])
    REGISTRY.register(metrics)
    start_http_server(9100)

Exposed, labelled by ``service`` and ``consumer``: ``actionbus_actions_handled_total``,
``…_failed_attempts_total``, ``…_error_replies_total``, ``…_dead_lettered_total``,
``…_expired_skipped_total``, ``…_duplicates_skipped_total``, ``…_reclaimed_total``
(counters) and ``actionbus_actions_in_flight`` (gauge).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actionbus.workers.base_worker import BaseWorker
from actionbus.workers.stats import WorkerStats

__all__ = ["WorkerMetrics"]

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
_LABELS = ["service", "consumer"]


class WorkerMetrics(Collector):
    """Exposes the counters of the given workers (add more with ``add()``)."""

    def __init__(self, workers: Iterable[BaseWorker] = ()) -> None:
        self._workers: list[BaseWorker] = list(workers)

    def add(self, worker: BaseWorker) -> None:
        """Also expose ``worker``."""
        self._workers.append(worker)

    def collect(self) -> Iterator[Metric]:
        """One family per counter, one sample per worker."""
        for field in fields(WorkerStats):
            name = "actions_handled" if field.name == "handled" else f"actions_{field.name}"
            family = CounterMetricFamily(f"actionbus_{name}", _HELP[field.name], labels=_LABELS)
            for worker in self._workers:
                family.add_metric([worker.service_name, worker.consumer],
                                  getattr(worker.stats, field.name))
            yield family
        in_flight = GaugeMetricFamily(
            "actionbus_actions_in_flight", "Actions being handled or waiting for a retry.",
            labels=_LABELS,
        )
        for worker in self._workers:
            in_flight.add_metric([worker.service_name, worker.consumer], worker.in_flight)
        yield in_flight
