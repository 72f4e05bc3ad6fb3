"""Counters and gauges, fed by delivery and capture, served in Prometheus text format.

One registry per bridge (no process globals), so tests can run several bridges at once.
Sinks never touch metrics; delivery records what they reported.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.event import ChangeEvent

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.captured_total = Counter(
            "skor_events_captured", "Events moved from the outbox into the log.", registry=r
        )
        self.delivered_total = Counter(
            "skor_events_delivered", "Events an output confirmed.", ["output"], registry=r
        )
        self.retried_total = Counter(
            "skor_events_retried", "Failed attempts that will be retried.", ["output"], registry=r
        )
        self.dead_total = Counter(
            "skor_events_dead_lettered", "Events an output gave up on.", ["output"], registry=r
        )
        self.pending = Gauge(
            "skor_events_pending", "Events captured but not yet delivered.", ["output"], registry=r
        )
        self.lag = Gauge(
            "skor_lag_seconds", "Age of the oldest undelivered event.", ["output"], registry=r
        )
        self.latency = Histogram(
            "skor_delivery_latency_seconds",
            "From capture (trigger) to confirmed delivery.",
            ["output"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.slot_retained = Gauge(
            "skor_wal_slot_retained_bytes",
            "WAL mode: WAL the replication slot holds back on "
            "the server (pg_current_wal_lsn() - restart_lsn).",
            registry=r,
        )
        self.slot_status = Gauge(
            "skor_wal_slot_status",
            "WAL mode: 1 for the slot's wal_status (reserved, "
            "extended, unreserved, lost, missing).",
            ["status"],
            registry=r,
        )
        self.log_bytes = Gauge(
            "skor_log_bytes",
            "Size of the event log on disk, as of the last retention pass.",
            registry=r,
        )
        self.oldest_snapshot = Gauge(
            "skor_oldest_snapshot_seconds",
            "Age of the oldest snapshot another session holds "
            "in the database (it keeps VACUUM from cleaning the outbox).",
            registry=r,
        )
        self.outbox_dead_tuples = Gauge(
            "skor_outbox_dead_tuples",
            "Dead rows in skor.outbox, as of the last retention pass.",
            registry=r,
        )
        self.holding_log = Gauge(
            "skor_output_holding_log",
            "1 when the output has not delivered events that "
            "--retention-size would drop, so the log is kept over its size limit.",
            ["output"],
            registry=r,
        )
        self.role = Gauge(
            "skor_active", "1 when this instance is the active one, 0 on standby.", registry=r
        )

    def add_output(self, output: str) -> None:
        """Create the output's series at zero, so dashboards and alerts see them before
        the first event (a labelled series otherwise appears only when first used)."""
        for metric in (
            self.delivered_total,
            self.retried_total,
            self.dead_total,
            self.pending,
            self.lag,
            self.latency,
            self.holding_log,
        ):
            metric.labels(output)

    def clear_backlog(self, outputs: list[str]) -> None:
        """A standby holds no events: its pending and lag read zero, not the last values
        from when it was active (alerts should also filter on skor_active)."""
        for output in outputs:
            self.pending.labels(output).set(0)
            self.lag.labels(output).set(0)

    def wal_slot(self, retained_bytes: int, status: str | None) -> None:
        self.slot_retained.set(retained_bytes)
        for known in ("reserved", "extended", "unreserved", "lost", "missing"):
            self.slot_status.labels(known).set(1 if known == status else 0)

    def delivered(self, output: str, event: ChangeEvent) -> None:
        self.delivered_total.labels(output).inc()
        if event.captured_at:
            self.latency.labels(output).observe(max(0.0, time.time() - event.captured_at))

    def delivered_many(self, output: str, count: int, latencies: Sequence[float]) -> None:
        """`count` deliveries at once, with the capture-to-delivery latencies known.

        A worker adds up what it delivered between two saves of its progress: one counter
        update instead of one per event (each takes a lock)."""
        if count:
            self.delivered_total.labels(output).inc(count)
        if latencies:
            histogram = self.latency.labels(output)
            for latency in latencies:
                histogram.observe(latency)

    def retried(self, output: str, event: ChangeEvent) -> None:
        self.retried_total.labels(output).inc()

    def dead_lettered(self, output: str, event: ChangeEvent) -> None:
        self.dead_total.labels(output).inc()
