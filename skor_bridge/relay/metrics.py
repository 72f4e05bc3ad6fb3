"""A relay's figures: the bridge's delivery counters plus consumer lag per partition.

`skor_relay_lag_records` is what to scale on: records of a partition after the first one
this worker has not finished, measured every few seconds against the partition's high
watermark. Each worker reports only its own partitions, so the group's lag is the sum over
workers (`sum(skor_relay_lag_records)`); a partition appears under one worker at a time.
"""

from __future__ import annotations

from prometheus_client import Gauge

from skor_bridge.metrics import Metrics


class RelayMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.partition_lag = Gauge(
            "skor_relay_lag_records",
            "Records of the partition not finished by this worker "
            "(high watermark minus first unfinished offset).",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.assigned = Gauge(
            "skor_relay_partitions", "Partitions this worker owns.", registry=self.registry
        )
        # Every relay worker delivers; there is no standby.
        self.role.set(1)

    def add_output(self, output: str) -> None:
        for metric in (self.delivered_total, self.retried_total, self.dead_total, self.latency):
            metric.labels(output)
