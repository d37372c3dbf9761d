"""The Temporal SDK's metrics, bridged to ``prometheus_client`` for the worker's ``/metrics``.

The SDK records into a ``MetricBuffer`` (``Runtime(telemetry=TelemetryConfig(metrics=buffer))``);
``TemporalMetricsBridge`` drains it every second (and at each scrape) into cumulative counters,
gauges and histograms, and is a ``prometheus_client`` collector of them, exactly as the SDK's own
Prometheus exporter (``PrometheusConfig``) exports them: same names (``temporal_`` prefix,
counters without ``_total``), milliseconds, the SDK's default buckets per metric
(``services/metrics.py``), the ``service_name`` label. Temporal's SDK dashboards therefore work
unchanged; a test compares both side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    MetricBuffer,
    Runtime,
    TelemetryConfig,
)

from services import metrics as m

log = logging.getLogger(__name__)

TEMPORAL_PREFIX = "temporal_"
_OPENMETRICS_EOF = b"# EOF\n"

Labels = tuple[tuple[str, str], ...]


def temporal_buckets(name: str) -> tuple[float, ...]:
    """The SDK's bucket bounds (ms) for the histogram ``name``."""
    return m.TEMPORAL_BUCKETS_MS.get(name.removeprefix(TEMPORAL_PREFIX), m.TEMPORAL_DEFAULT_BUCKETS_MS)


def _le(bound: float) -> str:
    # As the SDK writes bounds ("50", not prometheus_client's "50.0"): le values must match.
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class _Histogram:
    counts: list[int]  # per bound, cumulative
    total: float = 0.0
    n: int = 0


@dataclass
class _Family:
    """One SDK metric's cumulative state, series by label set."""

    name: str
    kind: int
    help: str
    series: dict[Labels, Any] = field(default_factory=dict)

    @property
    def buckets(self) -> tuple[float, ...]:
        return temporal_buckets(self.name)

    def update(self, labels: Labels, value: float) -> None:
        if self.kind == BUFFERED_METRIC_KIND_COUNTER:
            self.series[labels] = self.series.get(labels, 0) + value
        elif self.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
            state = self.series.get(labels)
            if state is None:
                state = self.series[labels] = _Histogram([0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    state.counts[i] += 1
            state.total += value
            state.n += 1
        else:
            self.series[labels] = value

    def metric(self) -> Metric:
        """The family as ``prometheus_client`` models it. Its samples carry their full names,
        since the SDK's label sets vary within a family (the ``*MetricFamily`` helpers need one
        fixed set) and its counters have no ``_total``."""
        if self.kind == BUFFERED_METRIC_KIND_COUNTER:
            family = Metric(self.name, self.help, "counter")
            for labels, value in sorted(self.series.items()):
                family.add_sample(self.name, dict(labels), value)
        elif self.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
            family = Metric(self.name, self.help, "histogram")
            for labels, state in sorted(self.series.items(), key=lambda item: item[0]):
                for bound, count in zip(self.buckets, state.counts, strict=True):
                    family.add_sample(f"{self.name}_bucket", {**dict(labels), "le": _le(bound)}, count)
                family.add_sample(f"{self.name}_bucket", {**dict(labels), "le": "+Inf"}, state.n)
                family.add_sample(f"{self.name}_sum", dict(labels), state.total)
                family.add_sample(f"{self.name}_count", dict(labels), state.n)
        else:
            family = Metric(self.name, self.help, "gauge")
            for labels, value in sorted(self.series.items()):
                family.add_sample(self.name, dict(labels), value)
        return family


class TemporalMetricsBridge:
    """Receives the SDK's metric updates from a ``MetricBuffer``; a ``prometheus_client``
    collector of them (registered in ``registry``)."""

    def __init__(self, buffer_size: int = 200_000, drain_interval_s: float = 1.0):
        self.buffer = MetricBuffer(buffer_size)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()
        self._interval = drain_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runtime: Runtime | None = None

    def create_runtime(self) -> Runtime:
        """A Temporal runtime whose metrics go to this bridge; connect clients with it."""
        if self.runtime is None:
            self.runtime = Runtime(telemetry=TelemetryConfig(metrics=self.buffer))
            self._thread = threading.Thread(target=self._drain_loop, name="temporal-metrics", daemon=True)
            self._thread.start()
        return self.runtime

    def _drain_loop(self) -> None:
        # Drained often so the buffer never fills between scrapes (the SDK drops what overflows).
        while not self._stop.wait(self._interval):
            try:
                self.drain()
            except Exception:  # never let metrics kill the worker
                log.exception("draining Temporal SDK metrics failed")

    def drain(self) -> None:
        if self.runtime is None:
            return
        with self._lock:
            for update in self.buffer.retrieve_updates():
                metric = update.metric
                family = self._families.get(metric.name)
                if family is None:
                    family = self._families[metric.name] = _Family(
                        metric.name, metric.kind, metric.description or metric.name
                    )
                labels = tuple(sorted((k, _label_value(v)) for k, v in update.attributes.items()))
                family.update(labels, update.value)

    def collect(self) -> Iterator[Metric]:
        self.drain()
        with self._lock:
            families = [self._families[name].metric() for name in sorted(self._families)]
        yield from families

    def render(self) -> str:
        """The SDK's families in the Prometheus text format, as its exporter writes them.

        ``prometheus_client``'s text encoder declares every counter family as ``<name>_total``
        (the OpenMetrics convention) while the SDK's exporter, and Temporal's dashboards, use
        ``<name>``. Its OpenMetrics encoder keeps the family's own name, and for these families
        writes the same HELP, TYPE and sample lines as the text format; only its end-of-exposition
        marker is not part of the text format."""
        return openmetrics_latest(self.registry).removesuffix(_OPENMETRICS_EOF).decode()

    def close(self) -> None:
        self._stop.set()
